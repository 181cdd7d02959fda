"""IDX files (MNIST, Fashion-MNIST) and the embedded Fashion-MNIST sample.

Debian's ``dataset-fashion-mnist`` installs the original gzipped IDX files in
``/usr/share/datasets/fashion-mnist``; `make_sample` draws the embedded
``fashion_mnist_sample`` from them.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import zlib

import numpy as np

#: Name of the embedded Fashion-MNIST subset.
SAMPLE_NAME = "fashion_mnist_sample"
#: Where the embedded subset lives (package data).
SAMPLE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{SAMPLE_NAME}.npz")
SAMPLE_KEYS = ("x_train", "y_train", "x_test", "y_test", "class_names")

#: Datasets readable from IDX files -> directories searched after ``data_dir``.
#: ``/usr/share/datasets/fashion-mnist`` is where Debian's
#: ``dataset-fashion-mnist`` package installs the original files.
IDX_DIRS: dict[str, tuple[str, ...]] = {
    "fashion_mnist": ("/usr/share/datasets/fashion-mnist",),
    "mnist": ("/usr/share/datasets/mnist",),
}
#: File names (without ``.gz``) of the IDX images and labels of each split.
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
IDX_CLASS_NAMES = {
    "fashion_mnist": FASHION_MNIST_CLASSES,
    "mnist": tuple(str(d) for d in range(10)),
}

_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads one IDX file (the MNIST / Fashion-MNIST format), gzipped or not.

    Args:
        path: The file; gzip compression is detected from its content.

    Returns:
        The array, in native byte order, with the shape the header gives.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: Naming the file, if it is not valid gzip, has a bad magic
            number, or holds more or less data than its header promises
            (truncated or corrupted).

    Example:
        >>> labels = read_idx("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz")
        >>> labels.shape
        (10000,)
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(
                f"IDX file {path!r} is truncated or corrupted (bad gzip data: {err})."
            ) from err
    if len(raw) < 4 or raw[0] or raw[1] or raw[2] not in _IDX_DTYPES or not raw[3]:
        raise ValueError(
            f"{path!r} is not an IDX file: magic number 0x{raw[:4].hex()} is not "
            "0x0000TTNN (TT a known type code, NN >= 1 dimensions)."
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"IDX file {path!r} is truncated: its header is incomplete.")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"IDX file {path!r} is truncated or corrupted: its header promises shape {shape} "
            f"({expected} bytes of data) but it holds {len(raw) - header} bytes."
        )
    array = np.frombuffer(raw, dtype=dtype, count=math.prod(shape), offset=header)
    return array.reshape(shape).astype(dtype.newbyteorder("="))


def idx_path(directory: str, stem: str) -> str | None:
    for candidate in (stem + ".gz", stem):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    return None


def read_idx_split(directory: str, split: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Reads one split's image and label files and checks they belong together."""
    image_path, label_path = (idx_path(directory, stem) for stem in IDX_FILES[split])
    if image_path is None or label_path is None:
        raise FileNotFoundError(f"No {split} IDX files in {directory!r}.")
    images = read_idx(image_path)
    labels = read_idx(label_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"IDX file {image_path!r} must hold uint8 images (N, height, width), got "
            f"{images.dtype} {images.shape}."
        )
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(
            f"IDX file {label_path!r} must hold {len(images)} labels (one per image in "
            f"{image_path!r}), got shape {labels.shape}."
        )
    if labels.size and int(labels.max()) >= num_classes:
        raise ValueError(
            f"IDX file {label_path!r} has label {int(labels.max())}, outside 0..{num_classes - 1}."
        )
    return images[..., np.newaxis], labels.astype(np.int32)


def idx_dirs(name: str, data_dir: str | None) -> list[str]:
    dirs = []
    if data_dir is not None:
        dirs += [
            data_dir,
            os.path.join(data_dir, name),
            os.path.join(data_dir, name.replace("_", "-")),
        ]
    return dirs + list(IDX_DIRS.get(name, ()))


def has_idx(directory: str) -> bool:
    return all(
        idx_path(directory, stem) is not None for stems in IDX_FILES.values() for stem in stems
    )


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def make_sample(
    idx_dir: str | os.PathLike = IDX_DIRS["fashion_mnist"][0],
    out_path: str | os.PathLike = SAMPLE_PATH,
    *,
    train_per_class: int = 300,
    test_per_class: int = 100,
    seed: int = 0,
) -> str:
    """Builds the embedded ``fashion_mnist_sample`` from the real IDX files.

    Draws ``train_per_class`` training and ``test_per_class`` test images of
    every class without replacement, keeps them in their original file order,
    and writes a compressed ``.npz`` atomically (a temporary file, then
    ``os.replace``), so a reader never sees a half-written file. Besides the
    uint8 images (NHWC) and int32 labels it stores the indices of the chosen
    images in the original files, the class names and a provenance note with
    the SHA-256 of each source file.

    Args:
        idx_dir: Directory with the four Fashion-MNIST IDX files (default:
            where Debian's ``dataset-fashion-mnist`` installs them).
        out_path: Where to write the ``.npz`` (default: the package's copy).
        train_per_class: Training images per class.
        test_per_class: Test images per class.
        seed: Seed of the draw; the same seed gives the same file.

    Returns:
        ``out_path`` as a string.

    Raises:
        FileNotFoundError: If an IDX file is missing.
        ValueError: If a count is not a positive int or exceeds what a class
            has, or if an IDX file is corrupted.

    Example:
        >>> make_sample("/usr/share/datasets/fashion-mnist", "/tmp/sample.npz")
        '/tmp/sample.npz'
    """
    from keras_densenet._validation import check_positive_int

    check_positive_int("train_per_class", train_per_class)
    check_positive_int("test_per_class", test_per_class)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative int, got {seed!r}.")
    idx_dir, out_path = os.fspath(idx_dir), os.fspath(out_path)
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    provenance = [
        "Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017; MIT License), a class-balanced "
        f"subset drawn by keras_densenet.data.make_sample(seed={seed}) from:"
    ]
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        images, labels = read_idx_split(idx_dir, split, len(FASHION_MNIST_CLASSES))
        chosen = []
        for c in range(len(FASHION_MNIST_CLASSES)):
            members = np.flatnonzero(labels == c)
            if per_class > len(members):
                raise ValueError(
                    f"`{split}_per_class`={per_class} exceeds the {len(members)} {split} images "
                    f"of class {c} in {idx_dir!r}."
                )
            chosen.append(rng.choice(members, per_class, replace=False))
        index = np.sort(np.concatenate(chosen))
        arrays[f"x_{split}"] = images[index]
        arrays[f"y_{split}"] = labels[index]
        arrays[f"{split}_indices"] = index.astype(np.int32)
        for stem in IDX_FILES[split]:
            path = idx_path(idx_dir, stem)
            provenance.append(f"{os.path.basename(path)} sha256={_file_sha256(path)}")
    arrays["class_names"] = np.array(FASHION_MNIST_CLASSES)
    arrays["provenance"] = np.array("\n".join(provenance))
    from keras_densenet import _io

    with _io.atomic_path(out_path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    return out_path


__all__ = [
    "FASHION_MNIST_CLASSES",
    "IDX_CLASS_NAMES",
    "IDX_DIRS",
    "IDX_FILES",
    "SAMPLE_NAME",
    "SAMPLE_PATH",
    "has_idx",
    "idx_dirs",
    "idx_path",
    "make_sample",
    "read_idx",
    "read_idx_split",
]
