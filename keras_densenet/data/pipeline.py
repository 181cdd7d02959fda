"""The input pipeline: `load_dataset` returns batched ``tf.data`` and a `DatasetInfo`.

The pipeline follows the paper's CIFAR/SVHN recipe: per-channel mean/std
normalisation with statistics of the training split and, for training, a
random crop after 4-pixel zero padding plus a horizontal flip (not for digits).
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any

from keras_densenet._validation import (
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_positive_int,
)
from keras_densenet.data.idx import SAMPLE_NAME
from keras_densenet.data.sources import SOURCES, Source, find_source

if TYPE_CHECKING:
    import tensorflow as tf

SPLITS = ("train", "test", "validation")
#: What to do with a bad file in an image folder.
BAD_IMAGES = ("error", "skip")
#: Zero padding (pixels per side) before the random crop, as in the paper.
PAD = 4
#: Datasets whose mirror images are not images of the same class (digits,
#: characters); every other dataset is flipped horizontally when augmented.
NO_FLIP = frozenset({"mnist", "emnist", "kmnist", "svhn_cropped", "binary_alpha_digits"})
# Shuffle buffer for sources streamed from disk; in-memory ones shuffle fully.
_SHUFFLE_BUFFER = 10_000


def _tf() -> Any:
    import tensorflow as tf

    return tf


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
        multi_label: Whether an example has several labels: its label is then
            a float32 multi-hot vector (a label file), else an int32 class.
        label_counts: Examples per class in this split (multi-label:
            positive examples per label), where known without a pass over
            the data (arrays, label files), else None.

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
    multi_label: bool = False
    label_counts: tuple[int, ...] | None = None

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
    flags: dict[str, Any],
    optional_flags: dict[str, Any],
    bad_images: Any,
) -> tuple[str, str | None, tuple[int, int] | None]:
    for arg, value in flags.items():
        check_bool(arg, value)
    for arg, value in optional_flags.items():
        check_bool(arg, value, allow_none=True)
    check_choice("bad_images", bad_images, BAD_IMAGES)
    if not isinstance(name, (str, os.PathLike)) or not os.fspath(name):
        raise ValueError(
            f"`name` must be a dataset name (e.g. 'cifar10', 'fashion_mnist', "
            f"{SAMPLE_NAME!r}) or an image folder path, got {name!r}."
        )
    check_choice("split", split, SPLITS)
    check_positive_int("batch_size", batch_size)
    if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
        raise ValueError(f"`data_dir` must be None or a directory path, got {data_dir!r}.")
    check_float("download_timeout", download_timeout, 0.0, low_open=True)
    if seed is not None:
        check_int("seed", seed, 0)
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
    check_choice("channels", channels, (None, 1, 3))
    if validation_fraction is not None:
        check_float(
            "validation_fraction", validation_fraction, 0.0, 1.0, low_open=True, high_open=True
        )
    return os.fspath(name), None if data_dir is None else os.fspath(data_dir), image_size


def _pipeline(
    source: Source,
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
    bad_images: str = "error",
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
            an image folder path, or a label file (``.csv``, several labels
            per image: see `keras_densenet.data.labels`). An image folder has one sub-folder per
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
        bad_images: Image folders: ``"error"`` stops at an empty, truncated or
            non-image file, naming it; ``"skip"`` leaves such files out with a
            warning that counts them.

    Returns:
        ``(dataset, info)``: a ``tf.data.Dataset`` of ``(images, labels)``
        batches, images float32 NHWC and labels int32 (float32 multi-hot
        vectors for a label file), and a `DatasetInfo`
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
        {"download": download, "normalize": normalize, "drop_remainder": drop_remainder},
        {"augment": augment, "flip": flip, "shuffle": shuffle},
        bad_images,
    )

    is_train = split == "train"
    shuffle = is_train if shuffle is None else shuffle
    source = find_source(
        name,
        split,
        data_dir=data_dir,
        download=download,
        download_timeout=download_timeout,
        validation_fraction=validation_fraction,
        channels=channels,
        image_size=image_size,
        shuffle=shuffle,
        seed=seed,
        bad_images=bad_images,
    )

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
        multi_label=source.multi_label,
        label_counts=source.label_counts,
    )
    return dataset, info


__all__ = ["BAD_IMAGES", "NO_FLIP", "PAD", "SPLITS", "DatasetInfo", "load_dataset"]
