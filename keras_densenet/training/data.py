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
    """

    train: Any
    validation: Any
    info: Any
    steps_per_epoch: int
    global_batch: int
    recalibration: Any = None
    validation_info: Any = None
    test_info: Any = None


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
    steps = config.steps_per_epoch or max(1, math.ceil(info.num_examples / global_batch))
    if config.steps_per_epoch:
        train_ds = train_ds.repeat()
    return TrainingData(
        train_ds, val_ds, info, steps, global_batch, recalibration, val_info, test_info
    )


__all__ = ["TrainingData", "load_training_data"]
