"""TensorFlow Datasets as a source: prepared data only, downloads when asked.

A TFDS download has no overall timeout of its own and a stalled connection
can block forever, so it runs in a child process killed after
``download_timeout`` seconds.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from keras_densenet.data.base import STATS_CACHE, Source, carve, dataset_stats, tf_module

# Names of TFDS's own catalogue ("name", "name/config", "name:1.2.3"); community
# names ("namespace:name") are left out since resolving them needs the network.
TFDS_NAME = re.compile(r"^[a-z][a-z0-9_]*(/[a-z0-9_.]+)?(:\d+\.\d+\.\d+)?$")


def _tfds_split_names(builder: Any) -> list[str]:
    return list(builder.info.splits.keys())


def _tfds_specs(
    builder: Any, split: str, validation_fraction: float | None, name: str
) -> tuple[str, str]:
    """TFDS split specs of the requested split and of the training examples."""
    available = _tfds_split_names(builder)  # empty until the data is prepared
    if validation_fraction is not None:
        n_train = builder.info.splits["train"].num_examples if available else None
        if n_train is None:
            n_train = _count(builder.as_dataset(split="train"))
        keep = carve(n_train, validation_fraction, f"TFDS dataset {name!r}")
        train_spec = f"train[:{keep}]"
        return (f"train[{keep}:]" if split == "validation" else train_spec), train_spec
    if available and split not in available:
        hint = " Pass `validation_fraction` to carve one off the training split." * (
            split == "validation"
        )
        raise ValueError(
            f"`split`={split!r} is not in TFDS dataset {name!r}, which has {available}.{hint}"
        )
    return split, "train"


def _count(dataset: Any) -> int:
    tf = tf_module()
    n = int(dataset.cardinality())
    if n >= 0:
        return n
    return int(dataset.reduce(tf.constant(0, tf.int64), lambda c, _: c + 1))


def _tfds_download(name: str, data_dir: str | None, timeout: float) -> str | None:
    """Downloads and prepares a TFDS dataset; returns why it failed, or None.

    TFDS has no overall timeout and a stalled connection can block forever,
    so the download runs in a child process that is killed after ``timeout``.
    """
    code = (
        "import sys, tensorflow_datasets as tfds; "
        "tfds.builder(sys.argv[1], data_dir=sys.argv[2] or None).download_and_prepare()"
    )
    try:
        result = subprocess.run(
            [sys.executable, "-c", code, name, data_dir or ""],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return f"the download did not finish within `download_timeout`={timeout} s and was stopped"
    if result.returncode:
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        return f"the download failed: {lines[-1] if lines else f'exit code {result.returncode}'}"
    return None


def _image_and_label(tfds: Any, builder: Any, name: str) -> tuple[Any, Any]:
    """The dataset's (Image, ClassLabel) features; refuses any other kind of dataset."""
    features = builder.info.features
    supervised = builder.info.supervised_keys
    kinds = (tfds.features.Image, tfds.features.ClassLabel)
    if (
        not isinstance(supervised, tuple)
        or len(supervised) != 2
        or not all(isinstance(key, str) and key in features for key in supervised)
        or not all(isinstance(features[k], kind) for k, kind in zip(supervised, kinds, strict=True))
    ):
        raise ValueError(
            f"`name`={name!r} is a TFDS dataset but not an image-classification one: its "
            f"supervised keys {supervised} are not an (Image, ClassLabel) pair."
        )
    return features[supervised[0]], features[supervised[1]]


def load_tfds(
    name: str,
    split: str,
    data_dir: str | None,
    validation_fraction: float | None,
    channels: int | None,
    shuffle: bool,
    seed: int | None,
    tried: list[str],
    download_timeout: float | None = None,
) -> Source | None:
    """The TFDS source; with ``download_timeout`` it downloads first."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        tried.append(
            "tfds: tensorflow-datasets is not installed (pip install keras-densenet[datasets])"
        )
        return None
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        tried.append(f"tfds: TFDS has no dataset named {name!r}")
        return None
    image_feature, label_feature = _image_and_label(tfds, builder, name)
    if download_timeout is not None:
        failure = _tfds_download(name, data_dir, download_timeout)
        if failure:
            tried.append(f"tfds download: {failure}")
            return None
        builder = tfds.builder(name, data_dir=data_dir)
    read_config = tfds.ReadConfig(shuffle_seed=seed)
    try:
        split_spec, train_spec = _tfds_specs(builder, split, validation_fraction, name)
        dataset = builder.as_dataset(
            split=split_spec, as_supervised=True, shuffle_files=shuffle, read_config=read_config
        )
    except AssertionError:  # how TFDS says "not prepared in this data_dir"
        tried.append(f"tfds: {name!r} is not prepared in {builder.data_dir_root}")
        return None
    # Split metadata can be missing (e.g. under tfds.testing.mock_data): count.
    if _tfds_split_names(builder):
        num_examples = builder.info.splits[split_spec].num_examples
    else:
        num_examples = _count(dataset)
    dataset = dataset.map(lambda x, y: (x, tf_module().cast(y, "int32")))
    convert = _channel_converter(channels)

    def stats() -> tuple[tuple[float, ...], tuple[float, ...]]:
        key = ("tfds", name, builder.data_dir, train_spec, channels)
        if key not in STATS_CACHE:
            train = builder.as_dataset(split=train_spec, as_supervised=True)
            STATS_CACHE[key] = dataset_stats(train.map(convert) if convert else train)
        return STATS_CACHE[key]

    return Source(
        kind="tfds",
        dataset=dataset.map(convert) if convert else dataset,
        num_examples=int(num_examples),
        class_names=tuple(label_feature.names),
        image_shape=(*image_feature.shape[:2], channels or image_feature.shape[2]),
        stats=stats,
        in_memory=False,
    )


def _channel_converter(channels: int | None) -> Callable[[Any, Any], tuple[Any, Any]] | None:
    if channels is None:
        return None
    tf = tf_module()

    def convert(image: Any, label: Any) -> tuple[Any, Any]:
        have = image.shape[-1]
        if have == channels:
            return image, label
        if channels == 3:  # from grayscale, or RGBA without its alpha
            return (tf.image.grayscale_to_rgb(image) if have == 1 else image[..., :3]), label
        return tf.image.rgb_to_grayscale(image[..., :3]), label

    return convert


__all__ = ["TFDS_NAME", "load_tfds"]
