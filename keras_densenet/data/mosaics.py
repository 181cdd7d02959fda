"""A multi-label dataset made of real Fashion-MNIST images, offline: 2x2 mosaics.

`make_mosaics` writes 56x56 PNG mosaics of 1 to 4 Fashion-MNIST items (one
per quadrant, the other quadrants black) and a label file whose labels are the
set of classes present: training mosaics from training images, test mosaics
from test images. ``quadrants.json`` says which class is in which quadrant,
for checking where a heatmap points (`pointing_game`). One class can be made
rare (present in a given fraction of the training mosaics) to study class
imbalance.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from keras_densenet import _io

#: The label file `make_mosaics` writes.
LABELS_FILE = "labels.csv"
#: Which class is in which quadrant (row-major: top-left, top-right, bottom-left, bottom-right).
QUADRANTS_FILE = "quadrants.json"
#: Side of one item; a mosaic is twice that.
ITEM = 28


def _source_arrays(data_dir: str | None) -> dict[str, Any]:
    """Training and test images and labels: IDX files where found, else the sample."""
    from keras_densenet.data.idx import (
        FASHION_MNIST_CLASSES,
        SAMPLE_PATH,
        has_idx,
        idx_dirs,
        read_idx_split,
    )

    directory = next((d for d in idx_dirs("fashion_mnist", data_dir) if has_idx(d)), None)
    if directory is not None:
        x_train, y_train = read_idx_split(directory, "train", 10)
        x_test, y_test = read_idx_split(directory, "test", 10)
        source = f"IDX files in {directory}"
    else:
        with np.load(SAMPLE_PATH, allow_pickle=False) as data:
            x_train, y_train, x_test, y_test = (
                data[k] for k in ("x_train", "y_train", "x_test", "y_test")
            )
        source = "the embedded sample"
    names = [n.replace("/", "-") for n in FASHION_MNIST_CLASSES]
    return {
        "train": (x_train[..., 0], y_train),
        "test": (x_test[..., 0], y_test),
        "names": names,
        "source": source,
    }


def _mosaics(
    images: np.ndarray,
    labels: np.ndarray,
    count: int,
    rng: np.random.Generator,
    rare: int | None,
    rare_fraction: float,
) -> tuple[np.ndarray, list[list[int]]]:
    """``count`` mosaics and, for each, the class in each quadrant (-1: empty)."""
    others = np.flatnonzero(labels != rare) if rare is not None else np.arange(len(labels))
    of_rare = np.flatnonzero(labels == rare) if rare is not None else None
    out = np.zeros((count, 2 * ITEM, 2 * ITEM), np.uint8)
    quadrants = []
    for i in range(count):
        cells = [-1] * 4
        filled = rng.choice(4, size=rng.integers(1, 5), replace=False)
        picks = rng.choice(others, size=len(filled))
        if of_rare is not None and rng.random() < rare_fraction:
            picks[0] = rng.choice(of_rare)
        for cell, pick in zip(filled, picks, strict=True):
            row, col = divmod(int(cell), 2)
            out[i, row * ITEM : (row + 1) * ITEM, col * ITEM : (col + 1) * ITEM] = images[pick]
            cells[int(cell)] = int(labels[pick])
        quadrants.append(cells)
    return out, quadrants


def make_mosaics(
    out_dir: str | os.PathLike,
    train: int = 6000,
    test: int = 1000,
    *,
    seed: int = 0,
    rare_class: int | None = None,
    rare_fraction: float = 0.05,
    rare_in_test: bool = True,
    data_dir: str | None = None,
) -> str:
    """Writes a mosaics dataset and returns its label file.

    Args:
        out_dir: A new or empty directory.
        train: Training mosaics (labelled ``train``; validation is carved off
            them by the training run).
        test: Test mosaics, from the test images.
        seed: Seed of the mosaics.
        rare_class: A class index present in only ``rare_fraction`` of the
            mosaics (it is never drawn otherwise); None draws every class alike.
        rare_fraction: See ``rare_class``.
        rare_in_test: Make the class rare in the test mosaics too; False
            draws the test mosaics from every class alike (imbalanced
            training, a balanced test).
        data_dir: Where the Fashion-MNIST IDX files are (default: where
            Debian's ``dataset-fashion-mnist`` puts them); without them the
            embedded sample's 3,000 + 1,000 images are used.

    Returns:
        The path of ``labels.csv``.

    Raises:
        ValueError: If ``out_dir`` holds files, or an argument is out of range.
    """
    from PIL import Image

    out_dir = os.fspath(out_dir)
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise ValueError(f"`out_dir` {out_dir!r} is not empty: give a new directory.")
    if train < 2 or test < 1:
        raise ValueError(f"`train` must be >= 2 and `test` >= 1, got {train} and {test}.")
    if rare_class is not None and not (0 <= rare_class < 10 and 0 < rare_fraction < 1):
        raise ValueError("`rare_class` must be in 0..9 and `rare_fraction` in (0, 1).")
    arrays = _source_arrays(data_dir)
    rng = np.random.default_rng(seed)
    rows, layout = ["image,labels,split"], {}
    for split, count in (("train", train), ("test", test)):
        os.makedirs(os.path.join(out_dir, split), exist_ok=True)
        rare = rare_class if split == "train" or rare_in_test else None
        images, quadrants = _mosaics(*arrays[split], count, rng, rare, rare_fraction)
        for i, (image, cells) in enumerate(zip(images, quadrants, strict=True)):
            name = f"{split}/{i:05d}.png"
            Image.fromarray(image).save(os.path.join(out_dir, name))
            present = sorted({arrays["names"][c] for c in cells if c >= 0})
            rows.append(f"{name},{'|'.join(present)},{split}")
            layout[name] = [arrays["names"][c] if c >= 0 else None for c in cells]
    _io.write_text(os.path.join(out_dir, LABELS_FILE), "\n".join(rows) + "\n")
    _io.write_json(os.path.join(out_dir, QUADRANTS_FILE), layout)
    return os.path.join(out_dir, LABELS_FILE)


def pointing_game(heatmaps: np.ndarray, cells: list[list[str | None]], targets: list[str]) -> float:
    """The share of heatmaps whose maximum falls in a quadrant holding the target class.

    Args:
        heatmaps: ``(N, H, W)`` heatmaps of 2x2 mosaics.
        cells: Per mosaic, the class in each quadrant (row-major), None if empty.
        targets: Per mosaic, the class the heatmap explains.

    Returns:
        The hit rate in [0, 1].
    """
    hits = 0
    for heatmap, quadrant_classes, target in zip(heatmaps, cells, targets, strict=True):
        row, col = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
        quadrant = 2 * int(row >= heatmap.shape[0] / 2) + int(col >= heatmap.shape[1] / 2)
        hits += quadrant_classes[quadrant] == target
    return hits / max(1, len(targets))


def read_quadrants(out_dir: str | os.PathLike) -> dict[str, list[str | None]]:
    """The ``quadrants.json`` of a mosaics directory."""
    with open(os.path.join(os.fspath(out_dir), QUADRANTS_FILE)) as f:
        return json.load(f)


__all__ = ["LABELS_FILE", "QUADRANTS_FILE", "make_mosaics", "pointing_game", "read_quadrants"]
