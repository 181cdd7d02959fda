"""An image folder (one sub-folder per class) as a source, checked file by file.

Every file is checked from its header and end before anything is decoded
(see `keras_densenet.images`): an empty, truncated or non-image file stops the
run naming it, or is skipped with a warning. A folder with fewer than two
classes, or test/validation classes that differ from train's, is refused.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from typing import Any

from keras_densenet.data.base import STATS_CACHE, Source, dataset_stats, tf_module
from keras_densenet.images import EXTENSIONS, check_image_files, inspect_file

# The fixed seed that carves a validation part off an image folder, so the
# training and validation subsets never overlap whatever `seed` the user passes.
_SPLIT_SEED = 1337


def folder_root(name: str, data_dir: str | None) -> str | None:
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


def _split_directory(
    root: str, split: str, validation_fraction: float | None
) -> tuple[str, str, str | None]:
    """``(train_dir, directory, subset)``: where a split's images are.

    ``subset`` is Keras' ``"training"``/``"validation"`` when the split is
    carved off the training images, else None.
    """
    has_split_dirs = os.path.isdir(os.path.join(root, "train"))
    # Without a train/ sub-folder the folder itself is the training split.
    train_dir = os.path.join(root, "train") if has_split_dirs else root
    if split == "train":
        return train_dir, train_dir, None if validation_fraction is None else "training"
    if split == "validation" and validation_fraction is not None:
        return train_dir, train_dir, "validation"
    candidates = ("test",) if split == "test" else ("validation", "val")
    for candidate in candidates:
        directory = os.path.join(root, candidate)
        if has_split_dirs and os.path.isdir(directory):
            return train_dir, directory, None
    hint = (
        " or pass `validation_fraction` to carve one off the training images"
        if split == "validation"
        else ""
    )
    raise ValueError(
        f"`split`={split!r} is not in image folder {root!r}: give it train/ and "
        f"{'/ or '.join(candidates)}/ sub-folders of class folders{hint}."
    )


def _checked_classes(train_dir: str, directory: str) -> list[str]:
    """The class folders, refused below two or when a split's differ from train's."""
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
    return classes


def _no_images(name: str, directory: str) -> ValueError:
    return ValueError(
        f"`name`={name!r}: image folder {directory!r} holds no readable "
        f"{'/'.join(EXTENSIONS)} images in its class sub-folders."
    )


def _checked_files(
    name: str,
    directory: str,
    classes: list[str],
    carved: bool,
    validation_fraction: float | None,
    bad_images: str,
) -> tuple[list[str], list[tuple[str, str]]]:
    """The split's good image files and the bad ones (path, reason), checked."""
    files = _listed_files(name, directory, classes, carved, validation_fraction)
    good, bad = check_image_files(files, bad_images)
    if not good:
        raise _no_images(name, directory)
    if bad:
        warnings.warn(
            f"Skipped {len(bad)} of {len(files)} files in image folder {directory!r} that are "
            f"empty, truncated or not images (first: {bad[0][1]})",
            stacklevel=4,
        )
    return good, bad


def check_folder(
    root: str,
    name: str,
    splits: tuple[str, ...],
    validation_fraction: float | None,
) -> None:
    """`load_folder`'s checks of a folder's layout, without TensorFlow or any image read.

    Split and class sub-folders, an empty split and a validation fraction
    that leaves no image are refused as `load_folder` would; the files
    themselves are checked when they are loaded. The command line calls it
    before its seconds of start-up, so a folder that cannot train is refused
    at once.

    Args:
        root: The image folder.
        name: The dataset name it was given as, for messages.
        splits: The splits to check (``"train"``, ``"validation"``, ``"test"``).
        validation_fraction: Part of train carved off as validation, or None.

    Raises:
        ValueError: As `load_folder` would.
    """
    for split in splits:
        train_dir, directory, subset = _split_directory(root, split, validation_fraction)
        classes = _checked_classes(train_dir, directory)
        _listed_files(name, directory, classes, subset is not None, validation_fraction)


def _listed_files(
    name: str,
    directory: str,
    classes: list[str],
    carved: bool,
    validation_fraction: float | None,
) -> list[str]:
    """The split's image files, refused when there are none or none to validate on."""
    files = _image_files(directory, classes)
    if not files:
        raise _no_images(name, directory)
    if carved and int(validation_fraction * len(files)) < 1:
        raise ValueError(
            f"`validation_fraction`={validation_fraction} of the {len(files)} images in "
            f"{directory!r} leaves no validation images: use a larger fraction, or 0 to "
            "validate on the test split."
        )
    return files


def load_folder(
    root: str,
    name: str,
    split: str,
    image_size: tuple[int, int] | None,
    validation_fraction: float | None,
    channels: int | None,
    bad_images: str = "error",
) -> Source:
    import keras

    tf = tf_module()
    train_dir, directory, subset = _split_directory(root, split, validation_fraction)
    classes = _checked_classes(train_dir, directory)
    good, bad = _checked_files(
        name, directory, classes, subset is not None, validation_fraction, bad_images
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
        if key not in STATS_CACHE:
            train, _ = read(train_dir, "training" if validation_fraction is not None else None)
            STATS_CACHE[key] = dataset_stats(train.map(to_uint8))
        return STATS_CACHE[key]

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


__all__ = ["check_folder", "folder_root", "load_folder"]
