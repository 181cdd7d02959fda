"""A label file (CSV) as a source: several labels per image.

The file has a header ``image,labels`` or ``image,labels,split``. ``image`` is
a path relative to the CSV's folder, ``labels`` the image's labels separated
by ``|`` (empty for none), ``split`` one of ``train``, ``validation`` and
``test``. Without a ``split`` column a fixed-seed `TEST_FRACTION` of the rows
is the test split; without validation rows the validation split is carved off
the training rows (``validation_fraction``). The label names, sorted, are the
classes; an example's label is a float32 multi-hot vector.

`read_label_csv` checks the whole file before TensorFlow or any image is read:
its columns, every row, the paths (inside the CSV's folder, existing,
listed once) and every label (seen in training, with a positive example
there), each error naming the file, the row and what is allowed.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import os
import warnings
from typing import Any

import numpy as np

from keras_densenet.data.base import STATS_CACHE, Source, array_stats, dataset_stats, tf_module
from keras_densenet.images import inspect_file

#: The columns a label file has; ``split`` may be left out.
COLUMNS = ("image", "labels", "split")
#: What separates an image's labels.
SEPARATOR = "|"
#: The splits a ``split`` column may name.
LABEL_SPLITS = ("train", "validation", "test")
#: The part of the rows that is the test split when the file has no ``split`` column.
TEST_FRACTION = 0.1
# Fixed seed of the test and validation parts carved off the rows, so that
# they never overlap the training rows whatever `seed` the run has.
_SPLIT_SEED = 1337


@dataclasses.dataclass(frozen=True)
class LabelRow:
    """One row of a label file: the image, its labels and where it is in the file."""

    image: str
    labels: tuple[str, ...]
    split: str | None
    line: int


@dataclasses.dataclass(frozen=True)
class LabelTable:
    """A checked label file.

    Attributes:
        path: The CSV file.
        rows: Its rows, image paths absolute.
        label_names: Every label, sorted: the classes, in output order.
        has_split: Whether the file has a ``split`` column.
    """

    path: str
    rows: tuple[LabelRow, ...]
    label_names: tuple[str, ...]
    has_split: bool

    def split_rows(self, split: str, validation_fraction: float | None) -> list[LabelRow]:
        """The rows of one split.

        Args:
            split: ``"train"``, ``"validation"`` or ``"test"``.
            validation_fraction: Part of the training rows carved off as
                validation when the file has no validation rows; None for none.

        Returns:
            The rows, in file order.

        Raises:
            ValueError: If the split has no rows.
        """
        if self.has_split:
            named = {s: [r for r in self.rows if r.split == s] for s in LABEL_SPLITS}
        else:
            test, rest = _carve(list(self.rows), TEST_FRACTION)
            named = {"train": rest, "validation": [], "test": test}
        train = named["train"]
        if not named["validation"] and validation_fraction:
            named["validation"], train = _carve(train, validation_fraction)
        named["train"] = train
        rows = named[split]
        if not rows:
            how = (
                "give it rows with split 'validation', or a validation fraction"
                if split == "validation" and not validation_fraction
                else f"give it rows with split {split!r}"
            )
            if len(self.rows) < 3 and split != "train":
                how = f"its {len(self.rows)} row(s) are too few to hold one out; {how}"
            raise ValueError(f"`labels` file {self.path!r} has no {split} images: {how}.")
        return rows

    def check_training(self, validation_fraction: float | None) -> None:
        """Refuses a label without a positive example among the training rows.

        Raises:
            ValueError: Naming the label and the first row that has it.
        """
        trained = {
            label for r in self.split_rows("train", validation_fraction) for label in r.labels
        }
        validation: set[LabelRow] = set()
        if validation_fraction and self.has_split:
            with contextlib.suppress(ValueError):  # no rows to carve: split_rows says so
                validation = set(self.split_rows("validation", validation_fraction))
        for name in self.label_names:
            if name not in trained:
                first = next(r for r in self.rows if name in r.labels)
                split = first.split or "held out"
                if split == "train" and first in validation:
                    split = "a train row held out for validation (--validation-fraction)"
                raise ValueError(
                    f"`labels` file {self.path!r}: label {name!r} (first in row {first.line}, "
                    f"{split}) has no positive example among the training rows: the model "
                    "cannot learn it."
                )


def _carve(rows: list[LabelRow], fraction: float) -> tuple[list[LabelRow], list[LabelRow]]:
    """``(carved, rest)``: a fixed-seed part of the rows, at least one, and the rest."""
    if len(rows) < 2:
        return [], rows
    count = min(len(rows) - 1, max(1, round(len(rows) * fraction)))
    order = np.random.default_rng(_SPLIT_SEED).permutation(len(rows))
    chosen = set(order[:count].tolist())
    return (
        [r for i, r in enumerate(rows) if i in chosen],
        [r for i, r in enumerate(rows) if i not in chosen],
    )


def is_label_file(name: str | os.PathLike) -> bool:
    """Whether a dataset name is a label file (it ends with ``.csv``)."""
    return os.fspath(name).lower().endswith(".csv")


def _read_lines(path: str) -> list[list[str]]:
    if os.path.isdir(path):
        raise ValueError(f"`labels` file {path!r} is a directory: give the CSV file.")
    if not os.path.isfile(path):
        raise ValueError(
            f"`labels` file not found: {path!r} (a CSV with columns image,labels[,split])."
        )
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise ValueError(f"Cannot read label file {path!r}: {err.strerror or err}.") from err
    if raw.startswith(b"\xef\xbb\xbf"):
        warnings.warn(
            f"`labels` file {path!r} starts with a UTF-8 byte-order mark: ignored.", stacklevel=4
        )
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"`labels` file {path!r} is not UTF-8 text (byte {err.start}).") from None
    try:
        return list(csv.reader(text.splitlines(), strict=True))
    except csv.Error as err:
        raise ValueError(f"`labels` file {path!r} is not valid CSV: {err}.") from None


def _header(path: str, lines: list[list[str]]) -> list[str]:
    if not lines:
        raise ValueError(
            f"`labels` file {path!r} is empty: it needs the header image,labels[,split]."
        )
    header = [c.strip() for c in lines[0]]
    unknown = [c for c in header if c not in COLUMNS]
    missing = [c for c in COLUMNS[:2] if c not in header]
    if unknown or missing or len(set(header)) != len(header):
        raise ValueError(
            f"`labels` file {path!r} has the header {','.join(header)!r}; it must be "
            f"image,labels or image,labels,split"
            + (f" (unknown: {unknown})" if unknown else "")
            + (f" (missing: {missing})" if missing else "")
            + "."
        )
    return header


def _row(path: str, folder: str, header: list[str], fields: list[str], line: int) -> LabelRow:
    where = f"`labels` file {path!r}, row {line}"
    if len(fields) != len(header):
        raise ValueError(
            f"{where}: {len(fields)} fields where the header has {len(header)} "
            "(quote a field that holds a comma)."
        )
    values = dict(zip(header, fields, strict=True))
    image = values["image"].strip()
    if not image:
        raise ValueError(f"{where}: the image path is empty.")
    if os.path.isabs(image):
        raise ValueError(f"{where}: image {image!r} must be a path relative to the CSV's folder.")
    if "\0" in image:
        raise ValueError(f"{where}: the image path holds a NUL character.")
    full = os.path.realpath(os.path.join(folder, image))
    if os.path.commonpath([full, folder]) != folder:
        raise ValueError(f"{where}: image {image!r} is outside the CSV's folder {folder!r}.")
    if not os.path.isfile(full):
        raise ValueError(f"{where}: image file {image!r} not found in {folder!r}.")
    text = values["labels"].strip()
    labels = tuple(part.strip() for part in text.split(SEPARATOR)) if text else ()
    if any(not label for label in labels):
        raise ValueError(f"{where}: empty label in {text!r} (labels are separated by '|').")
    split = values.get("split")
    if split is not None:
        split = split.strip()
        if split not in LABEL_SPLITS:
            raise ValueError(f"{where}: split {split!r} must be one of {LABEL_SPLITS}.")
    return LabelRow(full, tuple(sorted(set(labels))), split, line)


def read_label_csv(path: str | os.PathLike) -> LabelTable:
    """Reads and checks a label file, without TensorFlow or decoding any image.

    Args:
        path: The CSV file.

    Returns:
        The `LabelTable`.

    Raises:
        ValueError: Naming the file and the row, for a missing or unreadable
            file, a header other than ``image,labels[,split]``, a row with the
            wrong number of fields, an empty, absolute or outside path, a
            missing image, an image listed twice, an unknown split, an empty
            label.
    """
    path = os.fspath(path)
    folder = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    lines = _read_lines(path)
    header = _header(path, lines)
    rows: list[LabelRow] = []
    seen: dict[str, int] = {}
    for number, fields in enumerate(lines[1:], start=2):
        if not any(f.strip() for f in fields):
            continue  # a blank line
        row = _row(path, folder, header, fields, number)
        if row.image in seen:
            raise ValueError(
                f"`labels` file {path!r}, row {number}: image "
                f"{os.path.relpath(row.image, folder)!r} is listed again (first in row "
                f"{seen[row.image]}); list each image once."
            )
        seen[row.image] = number
        rows.append(row)
    if not rows:
        raise ValueError(f"`labels` file {path!r} lists no image.")
    names = sorted({label for row in rows for label in row.labels})
    if not names:
        raise ValueError(f"`labels` file {path!r} names no label in any row.")
    return LabelTable(path, tuple(rows), tuple(names), "split" in header)


def multi_hot(rows: list[LabelRow], names: tuple[str, ...]) -> np.ndarray:
    """``[len(rows), len(names)]`` float32: 1 where a row has a label."""
    index = {name: i for i, name in enumerate(names)}
    targets = np.zeros((len(rows), len(names)), np.float32)
    for i, row in enumerate(rows):
        targets[i, [index[label] for label in row.labels]] = 1.0
    return targets


def _checked_rows(table: LabelTable, rows: list[LabelRow], bad_images: str) -> list[LabelRow]:
    """The rows whose image passes the header check; the others raise or are skipped."""
    good, bad = [], []
    for row in rows:
        try:
            inspect_file(row.image)
        except ValueError as err:
            if bad_images == "error":
                raise ValueError(
                    f"`labels` file {table.path!r}, row {row.line}: {err} Remove or replace it, or "
                    "skip such files with `bad_images='skip'`."
                ) from None
            bad.append((row, str(err)))
        else:
            good.append(row)
    if bad:
        warnings.warn(
            f"Skipped {len(bad)} of {len(rows)} images of label file {table.path!r} that are "
            f"empty, truncated or not images (first: row {bad[0][0].line})",
            stacklevel=5,
        )
    if not good:
        raise ValueError(f"`labels` file {table.path!r} has no readable image in this split.")
    return good


def load_labels(
    path: str,
    split: str,
    image_size: tuple[int, int] | None,
    validation_fraction: float | None,
    channels: int | None,
    bad_images: str = "error",
) -> Source:
    """The `Source` of one split of a label file.

    Args:
        path: The CSV file.
        split: ``"train"``, ``"validation"`` or ``"test"``.
        image_size: Resize to ``(height, width)``; required when sizes vary.
        validation_fraction: See `LabelTable.split_rows`.
        channels: 1 or 3, or None for the first training image's.
        bad_images: ``"error"`` or ``"skip"`` for files that are not readable images.

    Returns:
        Unbatched ``(uint8 image, float32 multi-hot labels)`` examples.

    Raises:
        ValueError: As `read_label_csv`, and for a split without rows, a label
            without a positive training example, or a bad image file (naming its row).
    """
    tf = tf_module()
    table = read_label_csv(path)
    table.check_training(validation_fraction)
    rows = _checked_rows(table, table.split_rows(split, validation_fraction), bad_images)
    train_rows = (
        rows
        if split == "train"
        else _checked_rows(table, table.split_rows("train", validation_fraction), bad_images)
    )
    first = inspect_file(train_rows[0].image)
    depth = channels or (1 if first.channels in (1, 2) else 3)
    sizes = {(info.height, info.width) for info in map(inspect_file, (r.image for r in rows))}
    shape = (*(sizes.pop() if len(sizes) == 1 else (None, None)), depth)

    def decoded(rows: list[LabelRow]) -> Any:
        targets = multi_hot(rows, table.label_names)
        files = tf.data.Dataset.from_tensor_slices(([r.image for r in rows], targets))

        def decode(file: Any, target: Any) -> tuple[Any, Any]:
            image = tf.io.decode_image(
                tf.io.read_file(file), channels=depth, expand_animations=False
            )
            image.set_shape((None, None, depth))
            if image_size is not None:
                image = tf.image.resize(image, image_size)
                image = tf.cast(tf.round(tf.clip_by_value(image, 0, 255)), tf.uint8)
            return image, target

        return files.map(decode, num_parallel_calls=tf.data.AUTOTUNE), targets

    size = tuple(image_size) if image_size else (shape[:2] if None not in shape else None)
    arrays = _in_memory(table, rows, decoded, depth, size) if size else None
    if arrays is not None:  # small enough: decoded once, shuffled and recalibrated from memory
        train_images = (
            arrays if split == "train" else _in_memory(table, train_rows, decoded, depth, size)
        )
        targets = multi_hot(rows, table.label_names)
        dataset = tf.data.Dataset.from_tensor_slices((arrays, targets))
        stats = (lambda: array_stats(train_images)) if train_images is not None else None
    else:
        dataset, targets = decoded(rows)
        stats = None

    def streamed_stats() -> tuple[tuple[float, ...], tuple[float, ...]]:
        key = (
            "labels",
            table.path,
            os.path.getmtime(table.path),
            validation_fraction,
            depth,
            image_size,
        )
        if key not in STATS_CACHE:
            STATS_CACHE[key] = dataset_stats(decoded(train_rows)[0])
        return STATS_CACHE[key]

    return Source(
        kind="labels",
        dataset=dataset,
        num_examples=len(rows),
        class_names=table.label_names,
        image_shape=(*(image_size or shape[:2]), depth),
        stats=stats or streamed_stats,
        in_memory=arrays is not None,
        multi_label=True,
        label_counts=tuple(int(c) for c in targets.sum(axis=0)),
    )


#: Label files whose images take at most this many bytes decoded are held in memory
#: (decoded once per process); larger ones are decoded from disk as they stream.
IN_MEMORY_BYTES = 1 << 30
# Decoded splits, per process: (file, its mtime, images, channels, size) -> uint8 array.
_DECODED: dict[tuple[Any, ...], np.ndarray] = {}


def _in_memory(
    table: LabelTable, rows: list[LabelRow], decoded: Any, depth: int, size: tuple[int, int]
) -> np.ndarray | None:
    """The rows' images decoded (by ``decoded``, resized to ``size``) to one uint8 array,
    or None when over `IN_MEMORY_BYTES`."""
    if len(rows) * size[0] * size[1] * depth > IN_MEMORY_BYTES:
        return None
    key = (table.path, os.path.getmtime(table.path), tuple(r.image for r in rows), depth, size)
    if key not in _DECODED:
        tf = tf_module()
        images = np.empty((len(rows), *size, depth), np.uint8)
        examples = decoded(rows)[0].as_numpy_iterator()  # in row order
        for i, row in enumerate(rows):
            try:
                image, _ = next(examples)
            except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as err:
                raise ValueError(
                    f"`labels` file {table.path!r}, row {row.line}: image {row.image!r} does not "
                    f"decode ({err.message.splitlines()[0]}); remove or replace it."
                ) from None
            if image.shape[:2] != size:  # another split's size: as the model will see it
                image = tf.cast(
                    tf.round(tf.clip_by_value(tf.image.resize(image, size), 0, 255)), tf.uint8
                ).numpy()
            images[i] = image
        for other in [k for k in _DECODED if k[:2] != key[:2]]:  # one label file at a time
            del _DECODED[other]
        _DECODED[key] = images
    return _DECODED[key]


def check_labels_early(
    path: str,
    splits: tuple[str, ...],
    validation_fraction: float | None,
    bad_images: str = "error",
) -> None:
    """`load_labels`' checks of the file and its splits, without TensorFlow.

    Args:
        path: The CSV file.
        splits: The splits that will be loaded.
        validation_fraction: See `LabelTable.split_rows`.
        bad_images: ``"error"`` refuses a file that is not a readable image
            (checked from its header and end, naming its row).

    Raises:
        ValueError: As `load_labels` would, before any image is decoded.
    """
    table = read_label_csv(path)
    table.check_training(validation_fraction)
    for split in splits:
        rows = table.split_rows(split, validation_fraction)
        if bad_images == "error":  # skipped files are counted, with a warning, when loaded
            _checked_rows(table, rows, bad_images)


__all__ = [
    "COLUMNS",
    "LABEL_SPLITS",
    "SEPARATOR",
    "TEST_FRACTION",
    "LabelRow",
    "LabelTable",
    "check_labels_early",
    "is_label_file",
    "load_labels",
    "multi_hot",
    "read_label_csv",
]
