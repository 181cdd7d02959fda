"""A training run's datasets: training, validation, test and recalibration splits.

`load_training_data` loads every split a `TrainConfig` asks for, in the 0..255
scale (the model normalizes itself). A missing test split, or splits whose
classes differ (the image-folder source compares them; TFDS and IDX splits share
their class names), is refused here, before anything is trained.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from keras_densenet.training.config import TrainConfig


@dataclasses.dataclass
class TrainingData:
    """The datasets of a run and what the model needs to know about them.

    Attributes:
        train: Training batches (repeated when ``steps_per_epoch`` is capped).
        validation: Validation batches.
        info: The training split's `keras_densenet.data.DatasetInfo`.
        steps_per_epoch: Optimizer steps per epoch.
        global_batch: Global batch size (per-replica batch x replicas).
        recalibration: Shuffled training batches without augmentation, for
            recomputing BN statistics (None when recalibration is off).
        validation_info: The validation split's `DatasetInfo`.
        test_info: The test split's `DatasetInfo`.
        class_weights: ``config.class_weight="balanced"``'s weights: one per
            class (single-label, for ``model.fit(class_weight=...)``) or one
            per label's positives (multi-label, for the loss); None otherwise.
    """

    train: Any
    validation: Any
    info: Any
    steps_per_epoch: int
    global_batch: int
    recalibration: Any = None
    validation_info: Any = None
    test_info: Any = None
    class_weights: Any = None

    @property
    def multi_label(self) -> bool:
        """Whether an example has several labels (a label file)."""
        return bool(self.info.multi_label)


def class_weight_map(data: TrainingData) -> dict[int, float] | None:
    """``model.fit``'s ``class_weight`` (single-label; multi-label weighs in its loss)."""
    if data.class_weights is None or data.multi_label:
        return None
    return {i: float(w) for i, w in enumerate(data.class_weights)}


def count_labels(dataset: Any, info: Any) -> np.ndarray:
    """Examples per class (multi-label: positives per label) of a split.

    ``info.label_counts`` where the source knows them, else one pass over
    the labels of ``dataset`` (unbatched or batched).
    """
    if info.label_counts is not None:
        return np.asarray(info.label_counts, np.int64)
    counts = np.zeros(info.num_classes, np.int64)
    for _, labels in dataset.as_numpy_iterator():
        labels = np.asarray(labels)
        if info.multi_label:
            counts += labels.reshape(-1, info.num_classes).sum(axis=0).astype(np.int64)
        else:
            counts += np.bincount(labels.reshape(-1), minlength=info.num_classes)
    return counts


def balanced_weights(counts: np.ndarray, info: Any) -> np.ndarray:
    """``"balanced"`` class weights from the training split's counts.

    Single-label: ``examples / (classes x examples of the class)``, as
    scikit-learn's ``compute_class_weight("balanced")``; multi-label: each
    label's negatives over its positives.

    Raises:
        ValueError: Naming the class, if one has no training example (or,
            multi-label, no positive or no negative one).
    """
    counts = np.asarray(counts, np.float64)
    total = float(info.num_examples)
    for name, count in zip(info.class_names, counts, strict=True):
        if count <= 0 or (info.multi_label and count >= total):
            what = "positive" if count <= 0 else "negative"
            raise ValueError(
                f"`class_weight`='balanced': class {name!r} has no {what} training example in "
                f"{info.name!r}, so it has no weight; drop the class or leave out `class_weight`."
            )
    if info.multi_label:
        return (total - counts) / counts
    return total / (len(counts) * counts)


def load_training_data(config: TrainConfig, replicas: int = 1) -> TrainingData:
    """Loads the training and validation pipelines a config asks for.

    Images stay in the 0..255 scale: the model normalizes them itself with the
    training split's statistics, so saved and exported models are portable.

    Args:
        config: The training options.
        replicas: Number of replicas the global batch is split over.

    Returns:
        The `TrainingData`.

    Raises:
        ValueError: If the data cannot be found or an option does not fit it.
    """
    from keras_densenet.data import load_dataset

    global_batch = config.batch_size * replicas
    data_args = {
        "batch_size": global_batch,
        "data_dir": config.data_dir,
        "download": config.download,
        "normalize": False,
        "seed": config.seed,
        "image_size": tuple(config.image_size) if config.image_size else None,
        "channels": config.channels,
        "bad_images": config.bad_images,
    }
    fraction = config.validation_fraction or None
    train_ds, info = load_dataset(
        config.dataset, "train", validation_fraction=fraction, **data_args
    )
    # The run ends with a test evaluation: a dataset without a test split (a
    # flat image folder) is refused now, not after the last epoch.
    test_ds, test_info = load_dataset(
        config.dataset, "test", validation_fraction=fraction, **data_args
    )
    val_ds, val_info = (
        load_dataset(config.dataset, "validation", validation_fraction=fraction, **data_args)
        if fraction
        else (test_ds, test_info)
    )
    recalibration = None
    if config.bn_recalibrate_steps:
        # The images the model is evaluated on are not augmented: neither are
        # the ones its BN statistics are computed from.
        recalibration, _ = load_dataset(
            config.dataset,
            "train",
            validation_fraction=fraction,
            augment=False,
            shuffle=True,
            **data_args,
        )
    class_weights = None
    if config.class_weight == "balanced":
        counting, _ = load_dataset(
            config.dataset,
            "train",
            validation_fraction=fraction,
            augment=False,
            **{**data_args, "batch_size": 1024},
        )
        class_weights = balanced_weights(count_labels(counting, info), info)
    steps = config.steps_per_epoch or max(1, math.ceil(info.num_examples / global_batch))
    if config.steps_per_epoch:
        train_ds = train_ds.repeat()
    return TrainingData(
        train_ds,
        val_ds,
        info,
        steps,
        global_batch,
        recalibration,
        val_info,
        test_info,
        class_weights,
    )


__all__ = [
    "TrainingData",
    "balanced_weights",
    "class_weight_map",
    "count_labels",
    "load_training_data",
]
