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

import os

import numpy as np

from keras_densenet.data.base import (
    SOURCES,
    DatasetNotFoundError,
    Source,
    array_stats,
    carve,
    tf_module,
)
from keras_densenet.data.folder import check_folder, folder_root, load_folder
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
from keras_densenet.data.labels import check_labels_early, is_label_file, load_labels
from keras_densenet.data.tfds import TFDS_NAME, load_tfds


def _convert_array_channels(images: np.ndarray, channels: int | None) -> np.ndarray:
    if channels is None or channels == images.shape[-1]:
        return images
    if channels == 3 and images.shape[-1] == 1:
        return np.repeat(images, 3, axis=-1)
    return tf_module().image.rgb_to_grayscale(images).numpy()


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
        keep = carve(len(x_train), validation_fraction, what)
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
        dataset=tf_module().data.Dataset.from_tensor_slices((x, y.astype(np.int32))),
        num_examples=len(x),
        class_names=class_names,
        image_shape=tuple(int(d) for d in x.shape[1:]),
        stats=lambda: array_stats(train_images),
        in_memory=True,
        label_counts=tuple(int(c) for c in np.bincount(y, minlength=len(class_names))),
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


def check_folder_early(
    name: str,
    data_dir: str | None,
    splits: tuple[str, ...],
    validation_fraction: float | None,
    bad_images: str = "error",
) -> None:
    """Checks an image folder's layout before TensorFlow is imported, where it can.

    Only a name that no earlier source in `find_source`'s order could claim
    (a path that is not a TFDS name) is checked here; anything else is left
    to the loader. A label file (``.csv``) is checked whole (see
    `keras_densenet.data.labels.read_label_csv`).

    Args:
        name: Dataset name or image folder.
        data_dir: Where to look (see `keras_densenet.data.load_dataset`).
        splits: The splits that will be loaded.
        validation_fraction: Part of train carved off as validation, or None.
        bad_images: A label file's images are checked from their headers
            with ``"error"``; with ``"skip"`` they are left to the loader.

    Raises:
        ValueError: If the folder cannot give those splits (see `check_folder`).
    """
    if is_label_file(name):
        check_labels_early(name, splits, validation_fraction, bad_images)
        return
    root = folder_root(name, data_dir)
    if name == SAMPLE_NAME or TFDS_NAME.match(name) or root is None:
        return
    check_folder(root, name, splits, validation_fraction)


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

    A name ending in ``.csv`` is a label file (several labels per image, see
    `keras_densenet.data.labels`) and no other source is tried.

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
    if is_label_file(name):
        source = load_labels(name, split, image_size, validation_fraction, channels, bad_images)
    elif name == SAMPLE_NAME:
        source = _load_sample(split, validation_fraction, channels, tried)
    else:
        tfds_args = (name, split, data_dir, validation_fraction, channels, shuffle, seed)
        if TFDS_NAME.match(name):
            source = load_tfds(*tfds_args, tried)
        else:
            tried.append(f"tfds: {name!r} is not a TFDS dataset name")
        if source is None:
            source = _load_idx(name, split, data_dir, validation_fraction, channels, tried)
        if source is None:
            root = folder_root(name, data_dir)
            if root is not None:
                source = load_folder(
                    root, name, split, image_size, validation_fraction, channels, bad_images
                )
            else:
                where = f" and `data_dir` {data_dir!r} has no sub-folder {name!r}" * bool(data_dir)
                tried.append(f"folder: {name!r} is not a directory{where}")
        if source is None:
            tried.append(f"sample: only {SAMPLE_NAME!r} is embedded")
        if source is None and download and TFDS_NAME.match(name):
            source = load_tfds(*tfds_args, tried, download_timeout=download_timeout)
    if source is None:
        raise _not_found(name, split, tried, download)
    return source


__all__ = ["SOURCES", "DatasetNotFoundError", "Source", "check_folder_early", "find_source"]
