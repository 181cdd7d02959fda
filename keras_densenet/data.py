"""Image-classification datasets as batched ``tf.data`` pipelines.

`load_dataset` returns ``(dataset, info)`` for a name, looking for data that is
already on disk first, in this order:

1. ``"tfds"``: a prepared TensorFlow Datasets directory (``data_dir``, else
   TFDS's default), for ``cifar10``, ``cifar100``, ``fashion_mnist``,
   ``mnist`` or any other TFDS image-classification name.
2. ``"idx"``: gzipped (or plain) IDX files for ``fashion_mnist`` and ``mnist``
   in ``data_dir`` or where Debian's ``dataset-fashion-mnist`` package puts
   them (``/usr/share/datasets/fashion-mnist``).
3. ``"folder"``: an image folder with one sub-folder per class, when ``name``
   is a directory (or ``data_dir/name`` is one).
4. ``"sample"``: the name ``fashion_mnist_sample``: 3,000 training and 1,000
   test images of the real Fashion-MNIST (class-balanced, built by
   `make_sample`) shipped inside the package, so examples and tests run offline.

Only when none of them has the data and ``download=True`` does TFDS download
it, in a child process that is killed after ``download_timeout`` seconds.

The pipeline follows the paper's CIFAR/SVHN recipe: per-channel mean/std
normalisation with statistics of the training split and, for training, a
random crop after 4-pixel zero padding plus a horizontal flip (not for digits).

Example:
    >>> dataset, info = load_dataset("fashion_mnist_sample", "train", batch_size=64)
    >>> info.image_shape, info.num_classes
    ((28, 28, 1), 10)
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import io
import math
import os
import re
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import tensorflow as tf

SPLITS = ("train", "test", "validation")
SOURCES = ("tfds", "idx", "folder", "sample")

#: Name of the embedded Fashion-MNIST subset.
SAMPLE_NAME = "fashion_mnist_sample"
#: Where the embedded subset lives (package data).
SAMPLE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", f"{SAMPLE_NAME}.npz")

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
_IDX_CLASS_NAMES = {
    "fashion_mnist": FASHION_MNIST_CLASSES,
    "mnist": tuple(str(d) for d in range(10)),
}

#: Zero padding (pixels per side) before the random crop, as in the paper.
PAD = 4
#: Datasets whose mirror images are not images of the same class (digits,
#: characters); every other dataset is flipped horizontally when augmented.
NO_FLIP = frozenset({"mnist", "emnist", "kmnist", "svhn_cropped", "binary_alpha_digits"})

# Shuffle buffer for sources streamed from disk; in-memory ones shuffle fully.
_SHUFFLE_BUFFER = 10_000
# The fixed seed that carves a validation part off an image folder, so the
# training and validation subsets never overlap whatever `seed` the user passes.
_SPLIT_SEED = 1337
_IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
# Names of TFDS's own catalogue ("name", "name/config", "name:1.2.3"); community
# names ("namespace:name") are left out since resolving them needs the network.
_TFDS_NAME = re.compile(r"^[a-z][a-z0-9_]*(/[a-z0-9_.]+)?(:\d+\.\d+\.\d+)?$")
_SAMPLE_KEYS = ("x_train", "y_train", "x_test", "y_test", "class_names")

# Per-process memo of training-split statistics of streamed sources, which
# take a full pass over the training data to compute.
_STATS_CACHE: dict[tuple[Any, ...], tuple[tuple[float, ...], tuple[float, ...]]] = {}


class DatasetNotFoundError(ValueError):
    """No source could provide the requested dataset.

    The message lists every source that was tried, why it did not provide the
    data, and how to get it.
    """


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What `load_dataset` returns next to the dataset.

    Attributes:
        name: The dataset name (or image folder path) as given.
        split: ``"train"``, ``"test"`` or ``"validation"``.
        num_classes: Number of classes.
        image_shape: ``(height, width, channels)`` of the images the dataset
            yields, after any ``image_size``/``channels`` conversion.
        class_names: One name per class, in label order.
        num_examples: Number of examples in this split.
        mean: Per-channel mean of the training split's pixels, 0..255 scale.
        std: Per-channel standard deviation of the same pixels.
        source: Which source provided the data: one of `SOURCES`.

    Example:
        >>> _, info = load_dataset("fashion_mnist_sample", "test")
        >>> model = build_densenet(
        ...     "densenet_bc_100_12", input_shape=info.image_shape,
        ...     num_classes=info.num_classes, normalization=info.normalization)
    """

    name: str
    split: str
    num_classes: int
    image_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    num_examples: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"`split` must be one of {SPLITS}, got {self.split!r}.")
        if self.source not in SOURCES:
            raise ValueError(f"`source` must be one of {SOURCES}, got {self.source!r}.")
        if len(self.image_shape) != 3 or min(self.image_shape) < 1:
            raise ValueError(
                f"`image_shape` must be (height, width, channels), got {self.image_shape!r}."
            )
        if self.num_classes < 1 or len(self.class_names) != self.num_classes:
            raise ValueError(
                f"`class_names` must have `num_classes`={self.num_classes} entries, got "
                f"{len(self.class_names)}."
            )
        channels = self.image_shape[-1]
        if len(self.mean) != channels or len(self.std) != channels or min(self.std) <= 0:
            raise ValueError(
                f"`mean` and `std` need {channels} values (one per channel, std > 0), got "
                f"mean={self.mean}, std={self.std}."
            )
        if self.num_examples < 0:
            raise ValueError(f"`num_examples` must be >= 0, got {self.num_examples}.")

    @property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """``(mean, std)``, ready for ``build_densenet(normalization=...)``."""
        return self.mean, self.std


# ---------------------------------------------------------------------------
# IDX files


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


def _idx_path(directory: str, stem: str) -> str | None:
    for candidate in (stem + ".gz", stem):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    return None


def _read_idx_split(directory: str, split: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Reads one split's image and label files and checks they belong together."""
    image_path, label_path = (_idx_path(directory, stem) for stem in IDX_FILES[split])
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


def _idx_dirs(name: str, data_dir: str | None) -> list[str]:
    dirs = []
    if data_dir is not None:
        dirs += [
            data_dir,
            os.path.join(data_dir, name),
            os.path.join(data_dir, name.replace("_", "-")),
        ]
    return dirs + list(IDX_DIRS.get(name, ()))


def _has_idx(directory: str) -> bool:
    return all(
        _idx_path(directory, stem) is not None for stems in IDX_FILES.values() for stem in stems
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
        images, labels = _read_idx_split(idx_dir, split, len(FASHION_MNIST_CLASSES))
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
            path = _idx_path(idx_dir, stem)
            provenance.append(f"{os.path.basename(path)} sha256={_file_sha256(path)}")
    arrays["class_names"] = np.array(FASHION_MNIST_CLASSES)
    arrays["provenance"] = np.array("\n".join(provenance))
    from keras_densenet import _io

    with _io.atomic_path(out_path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    return out_path


# ---------------------------------------------------------------------------
# Argument checks


def _check_bool(name: str, value: Any, allow_none: bool = False) -> None:
    if not (isinstance(value, bool) or (allow_none and value is None)):
        allowed = "True, False or None" if allow_none else "True or False"
        raise ValueError(f"`{name}` must be {allowed}, got {value!r}.")


def _check_args(
    name: Any,
    split: Any,
    batch_size: Any,
    data_dir: Any,
    download_timeout: Any,
    seed: Any,
    cache: Any,
    image_size: Any,
    channels: Any,
    validation_fraction: Any,
) -> tuple[str, str | None, tuple[int, int] | None]:
    from keras_densenet._validation import check_positive_int

    if not isinstance(name, (str, os.PathLike)) or not os.fspath(name):
        raise ValueError(
            f"`name` must be a dataset name (e.g. 'cifar10', 'fashion_mnist', "
            f"{SAMPLE_NAME!r}) or an image folder path, got {name!r}."
        )
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}, got {split!r}.")
    check_positive_int("batch_size", batch_size)
    if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
        raise ValueError(f"`data_dir` must be None or a directory path, got {data_dir!r}.")
    if (
        isinstance(download_timeout, bool)
        or not isinstance(download_timeout, (int, float))
        or not download_timeout > 0
        or math.isinf(download_timeout)
    ):
        raise ValueError(
            f"`download_timeout` must be a positive, finite number of seconds, got "
            f"{download_timeout!r}."
        )
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"`seed` must be None or a non-negative int, got {seed!r}.")
    if not isinstance(cache, (bool, str, os.PathLike)) or (
        not isinstance(cache, bool) and not os.fspath(cache)
    ):
        raise ValueError(
            f"`cache` must be True (in memory), False, or a file path prefix, got {cache!r}."
        )
    if image_size is not None:
        if (
            not isinstance(image_size, (tuple, list))
            or len(image_size) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in image_size)
        ):
            raise ValueError(
                f"`image_size` must be None or (height, width) positive ints, got {image_size!r}."
            )
        image_size = (int(image_size[0]), int(image_size[1]))
    if channels not in (None, 1, 3) or isinstance(channels, bool):
        raise ValueError(f"`channels` must be None (keep), 1 or 3, got {channels!r}.")
    if validation_fraction is not None and (
        isinstance(validation_fraction, bool)
        or not isinstance(validation_fraction, (int, float))
        or not 0.0 < validation_fraction < 1.0
    ):
        raise ValueError(
            f"`validation_fraction` must be None or a float in (0, 1), got {validation_fraction!r}."
        )
    return os.fspath(name), None if data_dir is None else os.fspath(data_dir), image_size


# ---------------------------------------------------------------------------
# Sources. Each returns a `_Source` for the requested split, or None after
# noting in `tried` why it cannot provide the data.


@dataclasses.dataclass
class _Source:
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
) -> _Source:
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
    return _Source(
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
) -> _Source | None:
    if not os.path.isfile(SAMPLE_PATH):
        tried.append(
            f"sample: {SAMPLE_PATH} is missing (reinstall keras-densenet, or rebuild it with "
            "keras_densenet.data.make_sample())"
        )
        return None
    with np.load(SAMPLE_PATH, allow_pickle=False) as data:
        missing = [k for k in _SAMPLE_KEYS if k not in data.files]
        if missing:
            raise ValueError(f"Sample file {SAMPLE_PATH!r} is corrupted: it lacks {missing}.")
        arrays = {k: data[k] for k in _SAMPLE_KEYS}
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
) -> _Source | None:
    if name not in IDX_DIRS:
        tried.append(f"idx: only {sorted(IDX_DIRS)} come as IDX files")
        return None
    dirs = _idx_dirs(name, data_dir)
    directory = next((d for d in dirs if _has_idx(d)), None)
    if directory is None:
        tried.append(
            f"idx: no complete set of {{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte[.gz] "
            f"files in {dirs}"
        )
        return None
    num_classes = len(_IDX_CLASS_NAMES[name])
    test = _read_idx_split(directory, "test", num_classes) if split == "test" else None
    return _from_arrays(
        "idx",
        _read_idx_split(directory, "train", num_classes),
        test,
        split,
        validation_fraction,
        _IDX_CLASS_NAMES[name],
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
) -> _Source | None:
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

    return _Source(
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


def _first_image(directory: str) -> str | None:
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for file in sorted(files):
            if file.lower().endswith(_IMAGE_EXTENSIONS):
                return os.path.join(root, file)
    return None


def _load_folder(
    root: str,
    name: str,
    split: str,
    image_size: tuple[int, int] | None,
    validation_fraction: float | None,
    channels: int | None,
) -> _Source:
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
    first = _first_image(train_dir)
    if first is None:
        raise ValueError(
            f"`name`={name!r}: image folder {train_dir!r} holds no "
            f"{'/'.join(_IMAGE_EXTENSIONS)} images in class sub-folders."
        )
    native = tf.io.decode_image(tf.io.read_file(first), expand_animations=False).shape
    color_mode = "grayscale" if (channels or native[-1]) == 1 else "rgb"
    size = tuple(image_size or native[:2])

    def read(directory: str, subset: str | None) -> Any:
        # Carving needs the file list shuffled before it is split; a fixed
        # seed keeps the training and validation parts disjoint. Keras prints
        # "Using N files for ..." even with verbose=False: keep that quiet.
        with contextlib.redirect_stdout(io.StringIO()):
            return keras.utils.image_dataset_from_directory(
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

    dataset = read(directory, subset)
    class_names = tuple(dataset.class_names)

    def to_uint8(image: Any, label: Any) -> tuple[Any, Any]:
        image = tf.cast(tf.round(tf.clip_by_value(image, 0, 255)), tf.uint8)
        return image, tf.cast(label, tf.int32)

    def stats() -> tuple[tuple[float, ...], tuple[float, ...]]:
        key = ("folder", os.path.abspath(root), validation_fraction, color_mode, size)
        if key not in _STATS_CACHE:
            train = read(train_dir, "training" if validation_fraction is not None else None)
            _STATS_CACHE[key] = _dataset_stats(train.map(to_uint8))
        return _STATS_CACHE[key]

    return _Source(
        kind="folder",
        dataset=dataset.map(to_uint8),
        num_examples=int(dataset.cardinality()),
        class_names=class_names,
        image_shape=(*size, 1 if color_mode == "grayscale" else 3),
        stats=stats,
        in_memory=False,
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


# ---------------------------------------------------------------------------
# The pipeline


def _pipeline(
    source: _Source,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    image_shape: tuple[int, int, int],
    resize: bool,
    normalize: bool,
    augment: bool,
    flip: bool,
    shuffle: bool,
    seed: int | None,
    cache: bool | str,  # True: in memory; a str: the cache file prefix
    batch_size: int,
    drop_remainder: bool,
) -> Any:
    tf = _tf()
    autotune = tf.data.AUTOTUNE
    height, width = image_shape[:2]
    dataset = source.dataset
    if resize:
        # Resized once, before the cache, and kept as uint8 like the source.
        def resize_image(image: Any, label: Any) -> tuple[Any, Any]:
            image = tf.image.resize(image, (height, width))
            return tf.cast(tf.round(tf.clip_by_value(image, 0, 255)), tf.uint8), label

        dataset = dataset.map(resize_image, num_parallel_calls=autotune)
    # Arrays are in memory already; a cache would only copy them.
    if cache is not False and not source.in_memory:
        dataset = dataset.cache("" if cache is True else cache)
    if shuffle:
        buffer = source.num_examples if source.in_memory else _SHUFFLE_BUFFER
        dataset = dataset.shuffle(max(1, min(buffer, source.num_examples)), seed=seed)

    mean_t = tf.constant(mean, tf.float32)
    std_t = tf.constant(std, tf.float32)

    def to_float(image: Any, label: Any) -> tuple[Any, Any]:
        image = tf.ensure_shape(tf.cast(image, tf.float32), image_shape)
        if normalize:
            image = (image - mean_t) / std_t
        return image, label

    dataset = dataset.map(to_float, num_parallel_calls=autotune)
    if augment:
        # Zero padding of normalized images is padding with the mean; without
        # normalization pad with the mean too, so that a model normalizing
        # its inputs itself sees exactly the same zeros.
        pad_value = tf.zeros_like(mean_t) if normalize else mean_t
        paddings = [[PAD, PAD], [PAD, PAD], [0, 0]]
        border = tf.pad(tf.zeros((height, width, 1)), paddings, constant_values=1.0)

        def augment_image(example: Any, rng: Any) -> tuple[Any, Any]:
            image, label = example
            seeds = tf.random.experimental.stateless_split(rng, 2)
            image = tf.pad(image, paddings) + border * pad_value
            image = tf.image.stateless_random_crop(image, image_shape, seed=seeds[0])
            if flip:
                image = tf.image.stateless_random_flip_left_right(image, seed=seeds[1])
            return image, label

        # Stateless ops with per-example seeds from a seeded random stream:
        # the same `seed` gives the same augmentations, different ones each
        # epoch, whatever the parallelism.
        rngs = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip((dataset, rngs)).map(
            augment_image, num_parallel_calls=autotune
        )
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    return dataset.prefetch(autotune)


def load_dataset(
    name: str | os.PathLike,
    split: str,
    *,
    batch_size: int = 128,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    download_timeout: float = 600.0,
    augment: bool | None = None,
    flip: bool | None = None,
    normalize: bool = True,
    shuffle: bool | None = None,
    seed: int | None = None,
    cache: bool | str | os.PathLike = True,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
    validation_fraction: float | None = None,
    drop_remainder: bool = False,
) -> tuple[tf.data.Dataset, DatasetInfo]:
    """Loads an image-classification dataset as a batched ``tf.data`` pipeline.

    Sources are tried in the order of `SOURCES`, data already on disk first
    (see the module docstring); TFDS downloads only with ``download=True`` and
    only when nothing on disk has the data. The pipeline converts channels and
    resizes (when asked), caches, shuffles, normalizes, augments, batches and
    prefetches, with ``tf.data.AUTOTUNE`` parallelism.

    Augmentation is the paper's: a random ``H x W`` crop of the image after
    4-pixel zero padding (of the normalized image, i.e. padding with the
    mean) and, unless the dataset is in `NO_FLIP` (digits, characters), a
    random horizontal flip.

    Args:
        name: A TFDS name (``"cifar10"``, ``"cifar100"``, ``"fashion_mnist"``,
            ``"mnist"``, ...), ``"fashion_mnist_sample"`` (embedded, offline),
            or an image folder path. An image folder has one sub-folder per
            class, either directly (then it is the training split) or under
            ``train/``, ``test/`` and ``validation/`` (or ``val/``).
        split: ``"train"``, ``"test"`` or ``"validation"``.
        batch_size: Examples per batch.
        data_dir: A prepared TFDS data directory, a directory with IDX files
            (also searched as ``data_dir/name``), or a directory holding the
            image folder ``name``. TFDS's default directory when None.
        download: Let TFDS download and prepare the data into ``data_dir``
            when no source has it on disk.
        download_timeout: Seconds the whole TFDS download and preparation may
            take before it is stopped.
        augment: Random crop and flip; None means True for ``"train"`` only.
        flip: Whether augmentation flips horizontally; None means yes unless
            the dataset is in `NO_FLIP`.
        normalize: Subtract the training split's per-channel mean and divide
            by its std. With False images stay float32 in 0..255, for a model
            that normalizes itself (``build_densenet(...,
            normalization=info.normalization)``).
        shuffle: Shuffle (every epoch); None means True for ``"train"`` only.
        seed: Seed of shuffling and augmentation; the same seed gives the same
            batches. None for non-deterministic runs.
        cache: Cache decoded (uint8) examples before the random steps: True
            in memory, a path prefix for a file cache (``<prefix>.<split>``
            files, which TF reuses as they are: delete them when the data or
            options change), False for none. In-memory sources (IDX files,
            the sample) are never cached again.
        image_size: Optional ``(height, width)`` to resize to; required for
            datasets whose images vary in size.
        channels: Optional 3 (grayscale to RGB) or 1 (RGB to grayscale);
            None keeps the dataset's channels.
        validation_fraction: None uses the dataset's own validation split (an
            error where it has none). A fraction in (0, 1) instead carves a
            deterministic validation part off the end of the training split
            (TFDS, IDX, sample; a fixed-seed random part for image folders);
            ``"train"`` then yields only the rest, so load both splits with
            the same fraction.
        drop_remainder: Drop the last, smaller batch.

    Returns:
        ``(dataset, info)``: a ``tf.data.Dataset`` of ``(images, labels)``
        batches, images float32 NHWC and labels int32, and a `DatasetInfo`
        whose ``mean``/``std`` are the statistics of the training split (the
        part left after carving) in the 0..255 scale, computed after channel
        conversion and before resizing (image folders: after resizing).

    Raises:
        ValueError: Naming the argument, for a bad argument (checked before
            any data is read), a split the dataset does not have, a TFDS
            dataset that is not image classification, images of varying size
            without ``image_size``, or a corrupted IDX or sample file.
        DatasetNotFoundError: If no source provides the data; the message
            lists the sources tried and how to get the data.

    Example:
        >>> train, info = load_dataset("fashion_mnist_sample", "train", batch_size=64, seed=0)
        >>> images, labels = next(iter(train))
        >>> images.shape, info.source
        (TensorShape([64, 28, 28, 1]), 'sample')
    """
    name, data_dir, image_size = _check_args(
        name,
        split,
        batch_size,
        data_dir,
        download_timeout,
        seed,
        cache,
        image_size,
        channels,
        validation_fraction,
    )
    for arg, value in (
        ("download", download),
        ("normalize", normalize),
        ("drop_remainder", drop_remainder),
    ):
        _check_bool(arg, value)
    for arg, value in (("augment", augment), ("flip", flip), ("shuffle", shuffle)):
        _check_bool(arg, value, allow_none=True)

    is_train = split == "train"
    shuffle = is_train if shuffle is None else shuffle
    tried: list[str] = []
    source: _Source | None = None
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
                source = _load_folder(root, name, split, image_size, validation_fraction, channels)
            else:
                where = f" and `data_dir` {data_dir!r} has no sub-folder {name!r}" * bool(data_dir)
                tried.append(f"folder: {name!r} is not a directory{where}")
        if source is None:
            tried.append(f"sample: only {SAMPLE_NAME!r} is embedded")
        if source is None and download and _TFDS_NAME.match(name):
            source = _load_tfds(*tfds_args, tried, download_timeout=download_timeout)
    if source is None:
        raise _not_found(name, split, tried, download)

    height, width, native_channels = source.image_shape
    if image_size is None and (height is None or width is None):
        raise ValueError(f"`image_size` is required for dataset {name!r}: its images vary in size.")
    out_shape = (*(image_size or (height, width)), native_channels)
    mean, std = source.stats()
    if not isinstance(cache, bool):
        # One file per split: TF reuses a cache file as is, so train and
        # validation must never share one.
        cache = f"{os.fspath(cache)}.{split}"
    dataset = _pipeline(
        source,
        mean=mean,
        std=std,
        image_shape=out_shape,
        resize=out_shape[:2] != (height, width),
        normalize=normalize,
        augment=is_train if augment is None else augment,
        flip=(name not in NO_FLIP) if flip is None else flip,
        shuffle=shuffle,
        seed=seed,
        cache=cache,
        batch_size=batch_size,
        drop_remainder=drop_remainder,
    )
    info = DatasetInfo(
        name=name,
        split=split,
        num_classes=len(source.class_names),
        image_shape=out_shape,
        class_names=source.class_names,
        num_examples=source.num_examples,
        mean=mean,
        std=std,
        source=source.kind,
    )
    return dataset, info


__all__ = [
    "FASHION_MNIST_CLASSES",
    "IDX_DIRS",
    "IDX_FILES",
    "NO_FLIP",
    "PAD",
    "SAMPLE_NAME",
    "SAMPLE_PATH",
    "SOURCES",
    "SPLITS",
    "DatasetInfo",
    "DatasetNotFoundError",
    "load_dataset",
    "make_sample",
    "read_idx",
]
