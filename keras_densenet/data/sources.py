"""Where a dataset's images come from: TFDS, IDX files, an image folder, the sample.

`find_source` tries the sources in the order of `SOURCES`, data already on
disk first, and returns the first that has the requested split as unbatched
``(uint8 image, int32 label)`` examples with their class names, shape and a
function computing the training split's per-channel statistics. Image
folders are checked file by file before anything is decoded (see
`keras_densenet.images`): an empty, truncated or non-image file stops the run
naming it, or is skipped with a warning, and a folder with fewer than two
classes, or test/validation classes that differ from train's, is refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import subprocess
import sys
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from keras_densenet.data.idx import (
    IDX_CLASS_NAMES,
    IDX_DIRS,
    SAMPLE_KEYS,
    SAMPLE_NAME,
    SAMPLE_PATH,
    has_idx,
    idx_dirs,
    read_idx_split,
)
from keras_densenet.images import EXTENSIONS, check_image_files, inspect_file

SOURCES = ("tfds", "idx", "folder", "sample")
# The fixed seed that carves a validation part off an image folder, so the
# training and validation subsets never overlap whatever `seed` the user passes.
_SPLIT_SEED = 1337
# Names of TFDS's own catalogue ("name", "name/config", "name:1.2.3"); community
# names ("namespace:name") are left out since resolving them needs the network.
_TFDS_NAME = re.compile(r"^[a-z][a-z0-9_]*(/[a-z0-9_.]+)?(:\d+\.\d+\.\d+)?$")
# Per-process memo of training-split statistics of streamed sources, which
# take a full pass over the training data to compute.
_STATS_CACHE: dict[tuple[Any, ...], tuple[tuple[float, ...], tuple[float, ...]]] = {}


class DatasetNotFoundError(ValueError):
    """No source could provide the requested dataset.

    The message lists every source that was tried, why it did not provide the
    data, and how to get it.
    """


@dataclasses.dataclass
class Source:
    """Unbatched ``(uint8 image, int32 label)`` data of one split, and what it is."""

    kind: str
    dataset: Any  # unbatched tf.data.Dataset of (uint8 image, int label)
    num_examples: int
    class_names: tuple[str, ...]
    image_shape: tuple[int | None, int | None, int]
    stats: Callable[[], tuple[tuple[float, ...], tuple[float, ...]]]
    in_memory: bool


def _tf() -> Any:
    import tensorflow as tf

    return tf


def _carve(n: int, fraction: float, what: str) -> int:
    """Number of training examples kept when a validation part is carved off."""
    n_val = max(1, round(n * fraction))
    if n_val >= n:
        raise ValueError(
            f"`validation_fraction`={fraction} leaves no training examples of the {n} in {what}."
        )
    return n - n_val


def _array_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    channels = images.shape[-1]
    total = np.zeros(channels)
    total_sq = np.zeros(channels)
    count = 0
    for start in range(0, len(images), 4096):  # float64 in chunks: bounded memory
        chunk = images[start : start + 4096].reshape(-1, channels).astype(np.float64)
        total += chunk.sum(axis=0)
        total_sq += np.square(chunk).sum(axis=0)
        count += len(chunk)
    return _finish_stats(total, total_sq, count)


def _finish_stats(
    total: np.ndarray, total_sq: np.ndarray, count: float
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if not count:
        raise ValueError("The training split is empty: cannot compute normalisation statistics.")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
    # A constant channel has std 0; 1 keeps normalisation finite.
    std = np.where(std > 1e-6, std, 1.0)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _dataset_stats(dataset: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel moments of an unbatched dataset of (image, label), any image size."""
    tf = _tf()

    def moments(image: Any, label: Any) -> tuple[Any, Any, Any]:
        x = tf.cast(image, tf.float64)
        pixels = tf.cast(tf.shape(x)[0] * tf.shape(x)[1], tf.float64)
        return tf.reduce_sum(x, [0, 1]), tf.reduce_sum(tf.square(x), [0, 1]), pixels

    total = total_sq = 0.0
    count = 0.0
    batches = dataset.map(moments, num_parallel_calls=tf.data.AUTOTUNE).batch(1024)
    for s, sq, n in batches.as_numpy_iterator():
        total = total + s.sum(axis=0)
        total_sq = total_sq + sq.sum(axis=0)
        count += float(n.sum())
    return _finish_stats(np.asarray(total), np.asarray(total_sq), count)


def _convert_array_channels(images: np.ndarray, channels: int | None) -> np.ndarray:
    if channels is None or channels == images.shape[-1]:
        return images
    if channels == 3 and images.shape[-1] == 1:
        return np.repeat(images, 3, axis=-1)
    return _tf().image.rgb_to_grayscale(images).numpy()


def _from_arrays(
    kind: str,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray] | None,
    split: str,
    validation_fraction: float | None,
    class_names: tuple[str, ...],
    channels: int | None,
    what: str,
) -> Source:
    x_train, y_train = train
    if validation_fraction is not None:
        keep = _carve(len(x_train), validation_fraction, what)
        x_val, y_val = x_train[keep:], y_train[keep:]
        x_train, y_train = x_train[:keep], y_train[:keep]
    if split == "train":
        x, y = x_train, y_train
    elif split == "validation":
        if validation_fraction is None:
            raise ValueError(
                f"{what} has no validation split: pass `validation_fraction` (e.g. 0.1) to carve "
                "one off the end of the training split, or use `split='test'`."
            )
        x, y = x_val, y_val
    else:
        x, y = test
    x = _convert_array_channels(x, channels)
    train_images = _convert_array_channels(x_train, channels)
    return Source(
        kind=kind,
        dataset=_tf().data.Dataset.from_tensor_slices((x, y.astype(np.int32))),
        num_examples=len(x),
        class_names=class_names,
        image_shape=tuple(int(d) for d in x.shape[1:]),
        stats=lambda: _array_stats(train_images),
        in_memory=True,
    )


def _load_sample(
    split: str, validation_fraction: float | None, channels: int | None, tried: list[str]
) -> Source | None:
    if not os.path.isfile(SAMPLE_PATH):
        tried.append(
            f"sample: {SAMPLE_PATH} is missing (reinstall keras-densenet, or rebuild it with "
            "keras_densenet.data.make_sample())"
        )
        return None
    with np.load(SAMPLE_PATH, allow_pickle=False) as data:
        missing = [k for k in SAMPLE_KEYS if k not in data.files]
        if missing:
            raise ValueError(f"Sample file {SAMPLE_PATH!r} is corrupted: it lacks {missing}.")
        arrays = {k: data[k] for k in SAMPLE_KEYS}
    return _from_arrays(
        "sample",
        (arrays["x_train"], arrays["y_train"]),
        (arrays["x_test"], arrays["y_test"]),
        split,
        validation_fraction,
        tuple(str(c) for c in arrays["class_names"]),
        channels,
        f"dataset {SAMPLE_NAME!r}",
    )


def _load_idx(
    name: str,
    split: str,
    data_dir: str | None,
    validation_fraction: float | None,
    channels: int | None,
    tried: list[str],
) -> Source | None:
    if name not in IDX_DIRS:
        tried.append(f"idx: only {sorted(IDX_DIRS)} come as IDX files")
        return None
    dirs = idx_dirs(name, data_dir)
    directory = next((d for d in dirs if has_idx(d)), None)
    if directory is None:
        tried.append(
            f"idx: no complete set of {{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte[.gz] "
            f"files in {dirs}"
        )
        return None
    num_classes = len(IDX_CLASS_NAMES[name])
    test = read_idx_split(directory, "test", num_classes) if split == "test" else None
    return _from_arrays(
        "idx",
        read_idx_split(directory, "train", num_classes),
        test,
        split,
        validation_fraction,
        IDX_CLASS_NAMES[name],
        channels,
        f"{name!r} (IDX files in {directory!r})",
    )


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
        keep = _carve(n_train, validation_fraction, f"TFDS dataset {name!r}")
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
    tf = _tf()
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


def _load_tfds(
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
    image_feature, label_feature = features[supervised[0]], features[supervised[1]]
    # Split metadata can be missing (e.g. under tfds.testing.mock_data): count.
    if _tfds_split_names(builder):
        num_examples = builder.info.splits[split_spec].num_examples
    else:
        num_examples = _count(dataset)
    dataset = dataset.map(lambda x, y: (x, _tf().cast(y, "int32")))
    convert = _channel_converter(channels)

    def stats() -> tuple[tuple[float, ...], tuple[float, ...]]:
        key = ("tfds", name, builder.data_dir, train_spec, channels)
        if key not in _STATS_CACHE:
            train = builder.as_dataset(split=train_spec, as_supervised=True)
            _STATS_CACHE[key] = _dataset_stats(train.map(convert) if convert else train)
        return _STATS_CACHE[key]

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
    tf = _tf()

    def convert(image: Any, label: Any) -> tuple[Any, Any]:
        have = image.shape[-1]
        if have == channels:
            return image, label
        if channels == 3:  # from grayscale, or RGBA without its alpha
            return (tf.image.grayscale_to_rgb(image) if have == 1 else image[..., :3]), label
        return tf.image.rgb_to_grayscale(image[..., :3]), label

    return convert


def _folder_root(name: str, data_dir: str | None) -> str | None:
    if os.path.isdir(name):
        return name
    if data_dir is not None and os.path.isdir(os.path.join(data_dir, name)):
        return os.path.join(data_dir, name)
    return None


def _class_folders(directory: str) -> list[str]:
    """Class sub-folders, sorted as Keras labels them."""
    try:
        entries = sorted(os.listdir(directory))
    except OSError as err:
        raise ValueError(f"Cannot read image folder {directory!r}: {err.strerror or err}.") from err
    return [e for e in entries if os.path.isdir(os.path.join(directory, e))]


def _image_files(directory: str, classes: list[str]) -> list[str]:
    """The image files Keras would read, class by class, in its order."""
    files = []
    for name in classes:
        for root, dirs, names in os.walk(os.path.join(directory, name)):
            dirs.sort()
            files += [
                os.path.join(root, n) for n in sorted(names) if n.lower().endswith(EXTENSIONS)
            ]
    return files


def _load_folder(
    root: str,
    name: str,
    split: str,
    image_size: tuple[int, int] | None,
    validation_fraction: float | None,
    channels: int | None,
    bad_images: str = "error",
) -> Source:
    import keras

    tf = _tf()
    has_split_dirs = os.path.isdir(os.path.join(root, "train"))
    # Without a train/ sub-folder the folder itself is the training split.
    train_dir = os.path.join(root, "train") if has_split_dirs else root
    subset = None
    if split == "train":
        directory = train_dir
        if validation_fraction is not None:
            subset = "training"
    elif split == "validation" and validation_fraction is not None:
        directory, subset = train_dir, "validation"
    else:
        candidates = ("test",) if split == "test" else ("validation", "val")
        directory = next(
            (
                os.path.join(root, c)
                for c in candidates
                if has_split_dirs and os.path.isdir(os.path.join(root, c))
            ),
            None,
        )
        if directory is None:
            hint = (
                " or pass `validation_fraction` to carve one off the training images"
                if split == "validation"
                else ""
            )
            raise ValueError(
                f"`split`={split!r} is not in image folder {root!r}: give it train/ and "
                f"{'/ or '.join(candidates)}/ sub-folders of class folders{hint}."
            )
    classes = _class_folders(train_dir)
    if len(classes) < 2:
        raise ValueError(
            f"Image folder {train_dir!r} has {len(classes)} class folder(s) {classes}: a "
            "classifier needs at least 2 (one sub-folder of images per class)."
        )
    if directory != train_dir and _class_folders(directory) != classes:
        raise ValueError(
            f"The class folders of {directory!r} {_class_folders(directory)} differ from those "
            f"of {train_dir!r} {classes}: labels would not mean the same class in both."
        )
    files = _image_files(directory, classes)
    good, bad = check_image_files(files, bad_images)
    if not good:
        raise ValueError(
            f"`name`={name!r}: image folder {directory!r} holds no readable "
            f"{'/'.join(EXTENSIONS)} images in its class sub-folders."
        )
    if subset is not None and int(validation_fraction * len(files)) < 1:
        raise ValueError(
            f"`validation_fraction`={validation_fraction} of the {len(files)} images in "
            f"{directory!r} leaves no validation images: use a larger fraction, or 0 to "
            "validate on the test split."
        )
    if bad:
        warnings.warn(
            f"Skipped {len(bad)} of {len(files)} files in image folder {directory!r} that are "
            f"empty, truncated or not images (first: {bad[0][1]})",
            stacklevel=3,
        )
    first = good[0] if directory == train_dir else _first_good(train_dir, classes)
    native = inspect_file(first).channels
    color_mode = "grayscale" if (channels or native) in (1, 2) else "rgb"
    size = tuple(image_size or _native_size(first))
    skipped = {os.path.abspath(path) for path, _ in bad}

    def read(directory: str, subset: str | None) -> Any:
        # Carving needs the file list shuffled before it is split; a fixed
        # seed keeps the training and validation parts disjoint. Keras prints
        # "Using N files for ..." even with verbose=False: keep that quiet.
        with contextlib.redirect_stdout(io.StringIO()):
            dataset = keras.utils.image_dataset_from_directory(
                directory,
                label_mode="int",
                color_mode=color_mode,
                batch_size=None,
                image_size=size,
                shuffle=subset is not None,
                seed=_SPLIT_SEED if subset else None,
                validation_split=validation_fraction if subset else None,
                subset=subset,
                verbose=False,
            )
        paths = [os.path.abspath(p) for p in dataset.file_paths]
        removed = sum(p in skipped for p in paths)
        if removed:  # the files the check refused fail to decode: drop them
            dataset = dataset.ignore_errors()
        return dataset, len(paths) - removed

    dataset, num_examples = read(directory, subset)

    def to_uint8(image: Any, label: Any) -> tuple[Any, Any]:
        image = tf.cast(tf.round(tf.clip_by_value(image, 0, 255)), tf.uint8)
        return image, tf.cast(label, tf.int32)

    def stats() -> tuple[tuple[float, ...], tuple[float, ...]]:
        key = ("folder", os.path.abspath(root), validation_fraction, color_mode, size)
        if key not in _STATS_CACHE:
            train, _ = read(train_dir, "training" if validation_fraction is not None else None)
            _STATS_CACHE[key] = _dataset_stats(train.map(to_uint8))
        return _STATS_CACHE[key]

    return Source(
        kind="folder",
        dataset=dataset.map(to_uint8),
        num_examples=num_examples,
        class_names=tuple(classes),
        image_shape=(*size, 1 if color_mode == "grayscale" else 3),
        stats=stats,
        in_memory=False,
    )


def _first_good(directory: str, classes: list[str]) -> str:
    for path in _image_files(directory, classes):
        try:
            inspect_file(path)
        except ValueError:
            continue
        return path
    raise ValueError(f"Image folder {directory!r} holds no readable images.")


def _native_size(path: str) -> tuple[int, int]:
    info = inspect_file(path)
    return info.height, info.width


def _not_found(name: str, split: str, tried: list[str], download: bool) -> DatasetNotFoundError:
    how = [
        "prepare it with TensorFlow Datasets and pass its `data_dir`, or pass `download=True` "
        "(needs `pip install keras-densenet[datasets]` and network access)",
        "for Fashion-MNIST: `apt-get install dataset-fashion-mnist` (IDX files in "
        "/usr/share/datasets/fashion-mnist), or pass `data_dir` with the IDX files",
        "pass an image folder path (one sub-folder per class) as `name`",
        f"or use the embedded {SAMPLE_NAME!r} to work offline",
    ]
    if download:
        how[0] = "check the network and `download_timeout`, or prepare it with TensorFlow Datasets"
    return DatasetNotFoundError(
        f"No source could provide dataset {name!r} (split {split!r}). Tried, in order:\n  - "
        + "\n  - ".join(tried)
        + "\nTo get the data:\n  - "
        + "\n  - ".join(how)
    )


def find_source(
    name: str,
    split: str,
    *,
    data_dir: str | None,
    download: bool,
    download_timeout: float,
    validation_fraction: float | None,
    channels: int | None,
    image_size: tuple[int, int] | None,
    shuffle: bool,
    seed: int | None,
    bad_images: str = "error",
) -> Source:
    """The first source that has the data, trying `SOURCES` in order.

    Args:
        name: Dataset name or image folder.
        split: ``"train"``, ``"test"`` or ``"validation"``.
        data_dir: Where to look (see `keras_densenet.data.load_dataset`).
        download: Let TFDS download when nothing on disk has the data.
        download_timeout: Seconds the download may take.
        validation_fraction: Part of train carved off as validation, or None.
        channels: Channel conversion, or None.
        image_size: Resize for image folders, or None.
        shuffle: Shuffle TFDS files.
        seed: Seed of TFDS file shuffling.
        bad_images: Image folders: ``"error"`` or ``"skip"`` for bad files.

    Returns:
        The `Source`.

    Raises:
        DatasetNotFoundError: If no source has the data.
        ValueError: If a source has it but it is unusable as asked.
    """
    tried: list[str] = []
    source: Source | None = None
    if name == SAMPLE_NAME:
        source = _load_sample(split, validation_fraction, channels, tried)
    else:
        tfds_args = (name, split, data_dir, validation_fraction, channels, shuffle, seed)
        if _TFDS_NAME.match(name):
            source = _load_tfds(*tfds_args, tried)
        else:
            tried.append(f"tfds: {name!r} is not a TFDS dataset name")
        if source is None:
            source = _load_idx(name, split, data_dir, validation_fraction, channels, tried)
        if source is None:
            root = _folder_root(name, data_dir)
            if root is not None:
                source = _load_folder(
                    root, name, split, image_size, validation_fraction, channels, bad_images
                )
            else:
                where = f" and `data_dir` {data_dir!r} has no sub-folder {name!r}" * bool(data_dir)
                tried.append(f"folder: {name!r} is not a directory{where}")
        if source is None:
            tried.append(f"sample: only {SAMPLE_NAME!r} is embedded")
        if source is None and download and _TFDS_NAME.match(name):
            source = _load_tfds(*tfds_args, tried, download_timeout=download_timeout)
    if source is None:
        raise _not_found(name, split, tried, download)
    return source


__all__ = ["SOURCES", "DatasetNotFoundError", "Source", "find_source"]
