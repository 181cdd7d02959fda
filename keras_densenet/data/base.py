"""What every data source returns, and the statistics they share."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

#: The sources `keras_densenet.data.load_dataset` tries, in order.
SOURCES = ("tfds", "idx", "folder", "sample", "labels")
#: Per-process memo of training-split statistics of streamed sources, which
#: take a full pass over the training data to compute.
STATS_CACHE: dict[tuple[Any, ...], tuple[tuple[float, ...], tuple[float, ...]]] = {}


class DatasetNotFoundError(ValueError):
    """No source could provide the requested dataset.

    The message lists every source that was tried, why it did not provide the
    data, and how to get it.
    """


@dataclasses.dataclass
class Source:
    """Unbatched ``(uint8 image, label)`` data of one split, and what it is.

    The label is an int32 class index, or a float32 multi-hot vector where
    ``multi_label``; ``label_counts`` (examples per class, positives per
    label) is filled where it is known without a pass over the data.
    """

    kind: str
    dataset: Any  # unbatched tf.data.Dataset of (uint8 image, int label)
    num_examples: int
    class_names: tuple[str, ...]
    image_shape: tuple[int | None, int | None, int]
    stats: Callable[[], tuple[tuple[float, ...], tuple[float, ...]]]
    in_memory: bool
    multi_label: bool = False
    label_counts: tuple[int, ...] | None = None


def tf_module() -> Any:
    import tensorflow as tf

    return tf


def carve(n: int, fraction: float, what: str) -> int:
    """Number of training examples kept when a validation part is carved off."""
    n_val = max(1, round(n * fraction))
    if n_val >= n:
        raise ValueError(
            f"`validation_fraction`={fraction} leaves no training examples of the {n} in {what}."
        )
    return n - n_val


def array_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    channels = images.shape[-1]
    total = np.zeros(channels)
    total_sq = np.zeros(channels)
    count = 0
    for start in range(0, len(images), 4096):  # float64 in chunks: bounded memory
        chunk = images[start : start + 4096].reshape(-1, channels).astype(np.float64)
        total += chunk.sum(axis=0)
        total_sq += np.square(chunk).sum(axis=0)
        count += len(chunk)
    return finish_stats(total, total_sq, count)


def finish_stats(
    total: np.ndarray, total_sq: np.ndarray, count: float
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if not count:
        raise ValueError("The training split is empty: cannot compute normalisation statistics.")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
    # A constant channel has std 0; 1 keeps normalisation finite.
    std = np.where(std > 1e-6, std, 1.0)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def dataset_stats(dataset: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel moments of an unbatched dataset of (image, label), any image size."""
    tf = tf_module()

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
    return finish_stats(np.asarray(total), np.asarray(total_sq), count)


__all__ = [
    "SOURCES",
    "STATS_CACHE",
    "DatasetNotFoundError",
    "Source",
    "array_stats",
    "carve",
    "dataset_stats",
    "finish_stats",
    "tf_module",
]
