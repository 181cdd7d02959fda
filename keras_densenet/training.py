"""Training and evaluation: ``model.fit`` with the paper's recipe and a run directory.

`train` builds a DenseNet from a preset (its input shape and number of classes
from the dataset unless given), compiles it with SGD + Nesterov momentum, the
paper's step schedule and decoupled weight decay on kernels, and runs
``model.fit`` with Keras callbacks. Everything lands in one run directory::

    runs/x/
      best.keras  last.keras      # best (validation accuracy) and last model
      backup/                     # BackupAndRestore state for --resume
      logs/                       # TensorBoard
      history.csv  curves.png     # one continuous history, also across resumes
      config.json  summary.json   # what was asked, and what came out

Example:
    >>> summary = train({"dataset": "fashion_mnist_sample", "epochs": 2, "out": "runs/x"})
    >>> summary["test_accuracy"]
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import keras
import numpy as np

from keras_densenet import _io, rundir
from keras_densenet._validation import check_float, check_int
from keras_densenet.batchnorm import (
    DEFAULT_STEPS as DEFAULT_RECALIBRATION_STEPS,
)
from keras_densenet.batchnorm import (
    BatchNormRecalibration,
    recalibrate_batchnorm,
)
from keras_densenet.layers import BN_MOMENTUM, check_bn_momentum
from keras_densenet.models import PRESETS, build_densenet, resolve_config

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
JIT_MODES = ("off", "on", "auto")
SCHEDULES = ("step", "cosine")
DISTRIBUTE = (None, "mirrored", "data_parallel")
#: The models a run directory holds, in the order a loader prefers them.
RUN_MODELS = rundir.MODELS
#: The paper's batch size: the learning rate scales linearly from it.
REFERENCE_BATCH = 64


class TrainingError(RuntimeError):
    """Training stopped for a reason the user can act on (NaN loss, out of memory)."""


@dataclasses.dataclass
class TrainConfig:
    """Options of a training run; `train` accepts this or a plain dict of it.

    Attributes:
        preset: Architecture preset (see `PRESETS`); None with ``blocks`` or
            ``depth`` for a custom one.
        depth, blocks, growth_rate, compression, bottleneck, dropout_rate:
            Architecture overrides of the preset (None keeps the preset's).
        memory_efficient: Recompute BN-ReLU-Conv1x1 in the backward pass.
        bn_momentum: Momentum of the BatchNormalization moving statistics
            (Keras convention, default 0.9; keras.applications uses 0.99).
        bn_recalibrate_steps: Training batches (without augmentation) from
            which every BN layer's statistics are recomputed before each
            validation pass and for the final model (PreciseBN, see
            `keras_densenet.batchnorm`); 0 turns recalibration off.
        dataset: A `keras_densenet.data.load_dataset` name or image folder.
        data_dir: Where the data lives (TFDS dir, IDX dir or folder parent).
        download: Allow TFDS to download missing data.
        image_size: Optional ``(height, width)`` resize; the model input
            otherwise follows the dataset.
        channels: Optional channel conversion (3 feeds grayscale to RGB stems).
        validation_fraction: Part of the training split held out for
            validation (best model choice); 0 validates on the test split.
        epochs: Number of epochs.
        batch_size: Per-replica batch size (global = this x replicas).
        learning_rate: Base learning rate; None means ``0.1 x global batch / 64``.
        momentum: SGD momentum (Nesterov).
        weight_decay: Decoupled weight decay applied to kernels only.
        schedule: ``"step"`` (lr / 10 at 50% and 75% of training) or ``"cosine"``.
        warmup_epochs: Epochs of linear learning-rate warm-up from 0 (may be
            fractional); 0 for none.
        label_smoothing: Label smoothing in [0, 1).
        precision: ``"float32"``, ``"mixed_float16"`` or ``"mixed_bfloat16"``.
        jit_compile: ``"off"``, ``"on"`` or ``"auto"`` (on where a GPU is
            present and no distribution strategy is active).
        distribute: None, ``"mirrored"`` (``tf.distribute.MirroredStrategy``
            over all local GPUs; TensorFlow backend) or ``"data_parallel"``
            (``keras.distribution.DataParallel`` over all devices; JAX
            backend, and across hosts when ``KERAS_DISTRIBUTION_*`` is set).
        sync_batchnorm: Synchronize BN statistics across replicas.
        steps_per_epoch: Optional cap on training steps per epoch.
        seed: Seed of weights, shuffling and augmentation.
        deterministic: Also ask TensorFlow for deterministic ops.
        out: The run directory.
        resume: Continue a killed run in ``out`` from its last finished epoch.
        verbose: ``model.fit`` verbosity (1: progress bar).
    """

    preset: str | None = "densenet_bc_100_12"
    depth: int | None = None
    blocks: Sequence[int] | None = None
    growth_rate: int | None = None
    compression: float | None = None
    bottleneck: bool | None = None
    dropout_rate: float | None = None
    memory_efficient: bool = False
    bn_momentum: float = BN_MOMENTUM
    bn_recalibrate_steps: int = DEFAULT_RECALIBRATION_STEPS
    dataset: str = "fashion_mnist_sample"
    data_dir: str | None = None
    download: bool = False
    image_size: Sequence[int] | None = None
    channels: int | None = None
    validation_fraction: float = 0.1
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float | None = None
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "step"
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    precision: str = "float32"
    jit_compile: str = "auto"
    distribute: str | None = None
    sync_batchnorm: bool = False
    steps_per_epoch: int | None = None
    seed: int | None = None
    deterministic: bool = False
    out: str = "runs/default"
    resume: bool = False
    verbose: int = 1

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Checks every option; no TensorFlow op runs.

        Raises:
            ValueError: Naming the option and what is allowed.
            TypeError: For an option of the wrong type.
        """
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        if self.steps_per_epoch is not None and (
            isinstance(self.steps_per_epoch, bool)
            or not isinstance(self.steps_per_epoch, int)
            or self.steps_per_epoch < 1
        ):
            raise ValueError(
                f"`steps_per_epoch` must be a positive integer or None, got "
                f"{self.steps_per_epoch!r}."
            )
        if self.learning_rate is not None and not (
            isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0
        ):
            raise ValueError(f"`learning_rate` must be > 0, got {self.learning_rate!r}.")
        _check_range("momentum", self.momentum, 0.0, 1.0, high_open=True)
        check_bn_momentum(self.bn_momentum)
        check_int("bn_recalibrate_steps", self.bn_recalibrate_steps, 0, 1_000_000)
        check_float("warmup_epochs", self.warmup_epochs, 0.0, float(self.epochs))
        _check_range("weight_decay", self.weight_decay, 0.0, 1.0, high_open=True)
        _check_range("label_smoothing", self.label_smoothing, 0.0, 1.0, high_open=True)
        _check_range("validation_fraction", self.validation_fraction, 0.0, 1.0, high_open=True)
        for name, value, allowed in (
            ("precision", self.precision, PRECISIONS),
            ("jit_compile", self.jit_compile, JIT_MODES),
            ("schedule", self.schedule, SCHEDULES),
            ("distribute", self.distribute, DISTRIBUTE),
        ):
            if value not in allowed:
                raise ValueError(f"`{name}` must be one of {allowed}, got {value!r}.")
        if self.channels is not None and self.channels not in (1, 3):
            raise ValueError(f"`channels` must be 1, 3 or None, got {self.channels!r}.")
        if self.image_size is not None and (len(self.image_size) != 2 or min(self.image_size) < 1):
            raise ValueError(
                f"`image_size` must be (height, width) of positive ints, got {self.image_size!r}."
            )
        if self.seed is not None and (not isinstance(self.seed, int) or self.seed < 0):
            raise ValueError(f"`seed` must be a non-negative integer, got {self.seed!r}.")
        if not self.out:
            raise ValueError("`out` must name a run directory.")
        if (
            self.precision == "mixed_float16"
            and self.distribute == "mirrored"
            and self.jit_compile == "on"
        ):
            raise ValueError(
                "`jit_compile='on'` with `precision='mixed_float16'` and "
                "`distribute='mirrored'` crashes in Keras 3 (keras-team/keras#18666, #20763): "
                "use jit_compile 'off'/'auto', mixed_bfloat16, or no strategy."
            )
        # Architecture arguments are checked by the model builder, without building.
        resolve_config(self.preset, **self.architecture(), input_shape=self._probe_shape())

    def architecture(self) -> dict[str, Any]:
        """The architecture overrides, as ``build_densenet`` keyword arguments."""
        return {
            "depth": self.depth,
            "blocks": tuple(self.blocks) if self.blocks is not None else None,
            "growth_rate": self.growth_rate,
            "compression": self.compression,
            "bottleneck": self.bottleneck,
            "dropout_rate": self.dropout_rate,
        }

    def _probe_shape(self) -> tuple[int, int, int] | None:
        if self.image_size is None:
            return None
        return (*(int(s) for s in self.image_size), self.channels or 3)

    @classmethod
    def from_dict(cls, options: Mapping[str, Any]) -> TrainConfig:
        """Builds a config from a dict (e.g. a JSON file), refusing unknown keys.

        Args:
            options: Option name -> value.

        Returns:
            The validated config.

        Raises:
            ValueError: For unknown keys or bad values.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"Unknown training options {unknown}; known: {sorted(known)}.")
        return cls(**dict(options))

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-ready dict."""
        out = dataclasses.asdict(self)
        for key in ("blocks", "image_size"):
            if out[key] is not None:
                out[key] = list(out[key])
        return out


def _check_range(name: str, value: Any, low: float, high: float, high_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and low <= value and (value < high if high_open else value <= high)
    if not ok:
        bracket = ")" if high_open else "]"
        raise ValueError(f"`{name}` must be in [{low}, {high}{bracket}, got {value!r}.")


# ---------------------------------------------------------------------------
# Callbacks that never leave a half-written or poisoned checkpoint behind.


def _finite(logs: Mapping[str, Any] | None) -> bool:
    return all(math.isfinite(float(v)) for k, v in (logs or {}).items() if "loss" in k)


class AtomicModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """``ModelCheckpoint`` that writes to a temporary name, then renames.

    A crash while saving leaves the previous file intact, and an epoch whose
    loss is NaN or infinite is never saved.

    Args:
        filepath: The ``.keras`` file to maintain.
        **kwargs: ``keras.callbacks.ModelCheckpoint`` arguments
            (``initial_value_threshold`` carries the best value of a resumed
            run's earlier epochs).
    """

    def __init__(self, filepath: str | os.PathLike, **kwargs: Any) -> None:
        self.final_path = os.fspath(filepath)
        super().__init__(self.final_path, **kwargs)

    def _save_model(self, epoch: int, batch: int | None, logs: Mapping[str, Any]) -> None:
        # Keras decides (best-only, monitor); the write itself is atomic.
        if _finite(logs) and self._should_save_model(epoch, batch, logs, self.final_path):
            _io.save_model(self.model, self.final_path)


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` whose files are replaced by rename, never rewritten.

    The weights and the epoch counter are each written to a temporary name and
    renamed into place (weights first), and a non-finite epoch is not backed
    up, so a resumed run starts from the last good epoch.

    Args:
        backup_dir: Directory of the backup.
    """

    def __init__(self, backup_dir: str | os.PathLike) -> None:
        super().__init__(os.fspath(backup_dir), save_freq="epoch", delete_checkpoint=False)

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        if _finite(logs):
            super().on_epoch_end(epoch, logs)

    def _save_model(self) -> None:
        _io.save_model(self.model, self._weights_path)
        metadata = {"epoch": self._current_epoch, "batch": self._last_batch_seen}
        _io.write_json(self._training_metadata_path, metadata)


class ThroughputMeter(keras.callbacks.Callback):
    """Measures training images per second over each epoch.

    Args:
        batch_size: Global batch size.
    """

    def __init__(self, batch_size: int) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.epoch_rates: list[float] = []
        self._start = 0.0
        self._steps = 0

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self._start, self._steps = time.perf_counter(), 0

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self._steps += 1

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        elapsed = time.perf_counter() - self._start
        if self._steps and elapsed > 0:
            self.epoch_rates.append(self._steps * self.batch_size / elapsed)

    def images_per_second(self) -> float | None:
        """Throughput of the epochs after the first (which includes tracing)."""
        rates = self.epoch_rates[1:] or self.epoch_rates
        return float(np.median(rates)) if rates else None


# ---------------------------------------------------------------------------


@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Sets the global Keras dtype policy for a block, then restores it.

    Args:
        name: A policy name, e.g. ``"mixed_bfloat16"``.

    Yields:
        Nothing.
    """
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_dtype_policy(previous)


def _strategy(config: TrainConfig) -> Any:
    if config.distribute != "mirrored":
        return None
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            f"`distribute='mirrored'` needs the TensorFlow backend (KERAS_BACKEND is "
            f"{keras.backend.backend()!r}); use distribute='data_parallel' on JAX."
        )
    import tensorflow as tf

    return tf.distribute.MirroredStrategy()


_MULTI_HOST_JOINED = False


def _data_parallel(config: TrainConfig) -> int:
    """Sets a ``keras.distribution.DataParallel`` distribution; returns its device count.

    With ``KERAS_DISTRIBUTION_JOB_ADDRESSES``, ``KERAS_DISTRIBUTION_NUM_PROCESSES``
    and ``KERAS_DISTRIBUTION_PROCESS_ID`` set, the processes first join one
    multi-host JAX runtime (``keras.distribution.initialize``).
    """
    if keras.backend.backend() != "jax":
        raise ValueError(
            "`distribute='data_parallel'` needs the JAX backend (KERAS_BACKEND=jax); "
            f"the backend is {keras.backend.backend()!r}. On TensorFlow use 'mirrored'."
        )
    global _MULTI_HOST_JOINED
    if os.environ.get("KERAS_DISTRIBUTION_JOB_ADDRESSES") and not _MULTI_HOST_JOINED:
        # Must come before anything touches a JAX device, and only once per process.
        keras.distribution.initialize()
        _MULTI_HOST_JOINED = True
    devices = keras.distribution.list_devices()
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    return len(devices)


def resolve_jit_compile(mode: str, strategy: Any = None, precision: str = "float32") -> bool:
    """Turns ``"off"|"on"|"auto"`` into a bool for ``model.compile``.

    ``"auto"`` is on where a GPU is present and no strategy is active, and off
    for the known crash of XLA with mixed_float16 under MirroredStrategy.

    Args:
        mode: ``"off"``, ``"on"`` or ``"auto"``.
        strategy: The active ``tf.distribute`` strategy, if any.
        precision: The dtype policy name.

    Returns:
        Whether to compile with XLA.

    Raises:
        ValueError: For an unknown mode, or ``"on"`` in the known-crash setting.
    """
    if mode not in JIT_MODES:
        raise ValueError(f"`jit_compile` must be one of {JIT_MODES}, got {mode!r}.")
    if mode == "on":
        if strategy is not None and precision == "mixed_float16":
            raise ValueError(
                "XLA with mixed_float16 under MirroredStrategy crashes (keras-team/keras#18666)."
            )
        return True
    if mode == "off" or strategy is not None:
        return False
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    return keras.backend.backend() == "jax"


@keras.saving.register_keras_serializable(package="keras_densenet")
class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """Scales another schedule up linearly over its first updates.

    The factor rises from ``1 / warmup_steps`` at update 0 to 1 at update
    ``warmup_steps`` (Goyal et al., 2017), the ramp ``CosineDecay`` uses for its
    own ``warmup_steps``; this wraps schedules that have none, such as the
    paper's step schedule.

    Args:
        schedule: The wrapped ``LearningRateSchedule``.
        warmup_steps: Updates over which the rate rises, a positive int.
    """

    def __init__(self, schedule: Any, warmup_steps: int) -> None:
        self.schedule = schedule
        self.warmup_steps = check_int("warmup_steps", warmup_steps, 1)

    def __call__(self, step: Any) -> Any:
        step = keras.ops.cast(step, "float32")
        start = 1.0 / self.warmup_steps
        progress = keras.ops.minimum(step, float(self.warmup_steps)) / self.warmup_steps
        return self.schedule(step) * (start + (1.0 - start) * progress)

    def get_config(self) -> dict[str, Any]:
        return {
            "schedule": keras.optimizers.schedules.serialize(self.schedule),
            "warmup_steps": self.warmup_steps,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LinearWarmup:
        schedule = keras.optimizers.schedules.deserialize(config["schedule"])
        return cls(schedule, config["warmup_steps"])


def _lr_schedule(
    config: TrainConfig, base_lr: float, total_steps: int, steps_per_epoch: int
) -> Any:
    warmup = min(round(config.warmup_epochs * steps_per_epoch), max(total_steps - 1, 0))
    if config.schedule == "cosine":
        if warmup:
            return keras.optimizers.schedules.CosineDecay(
                base_lr / warmup,
                decay_steps=max(total_steps - warmup, 1),
                warmup_target=base_lr,
                warmup_steps=warmup,
            )
        return keras.optimizers.schedules.CosineDecay(base_lr, decay_steps=max(total_steps, 1))
    # The schedule is looked up with the number of updates already made, and a
    # step equal to a boundary still gets the earlier value: the update that
    # starts the second half (step total/2) must see lr/10, hence the -1.
    first = max(0, round(total_steps * 0.5) - 1)
    boundaries = [first, max(first + 1, round(total_steps * 0.75) - 1)]
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
        boundaries, [base_lr, base_lr / 10, base_lr / 100]
    )
    return LinearWarmup(schedule, warmup) if warmup else schedule


def make_optimizer(
    config: TrainConfig, total_steps: int, global_batch: int, steps_per_epoch: int | None = None
) -> keras.Optimizer:
    """SGD with Nesterov momentum, the lr schedule and weight decay on kernels.

    Args:
        config: The training options.
        total_steps: Optimizer steps in the whole run (for the schedule).
        global_batch: Global batch size (for lr scaling).
        steps_per_epoch: Optimizer steps per epoch (for ``warmup_epochs``;
            default ``total_steps / config.epochs``).

    Returns:
        A Keras optimizer.
    """
    base_lr = config.learning_rate or 0.1 * global_batch / REFERENCE_BATCH
    if steps_per_epoch is None:
        steps_per_epoch = max(1, total_steps // config.epochs)
    optimizer = keras.optimizers.SGD(
        learning_rate=_lr_schedule(config, base_lr, total_steps, steps_per_epoch),
        momentum=config.momentum,
        nesterov=True,
        weight_decay=config.weight_decay or None,
    )
    # The paper decays convolution and classifier kernels, not BN scales/offsets.
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    return optimizer


def _one_hot(num_classes: int) -> Any:
    import tensorflow as tf

    def convert(images: Any, labels: Any) -> tuple[Any, Any]:
        return images, tf.one_hot(tf.cast(labels, tf.int32), num_classes)

    return convert


#: Options added after runs were first written, with the value those runs used.
_LEGACY_OPTIONS = {"bn_momentum": 0.99, "warmup_epochs": 0.0}


#: Options a resumed run may change: it may run longer or with another
#: learning rate (e.g. lower after a NaN loss), print differently, recalibrate
#: BN with more or fewer batches, or live in a moved directory. Anything else
#: would silently change the experiment.
_RESUMABLE_CHANGES = frozenset(
    {"resume", "verbose", "epochs", "learning_rate", "bn_recalibrate_steps", "out"}
)


def _prepare_run_dir(config: TrainConfig) -> int | None:
    """Checks ``out`` before any file is written; returns the epochs already done.

    Returns None when a resumed run is already complete (nothing to do).
    """
    out = config.out
    has_run = os.path.exists(os.path.join(out, rundir.CONFIG))
    if has_run and not config.resume:
        raise ValueError(
            f"`out` {out!r} already holds a run: pass resume=True (--resume) to continue it, "
            "or choose another directory."
        )
    if not (has_run and config.resume):
        return 0
    previous = {**_LEGACY_OPTIONS, **rundir.read_config(out)}
    changed = rundir.option_changes(previous, config.to_dict(), _RESUMABLE_CHANGES)
    if changed:
        raise ValueError(
            f"`resume` needs the same options as the run in {out!r}; these differ "
            f"(was, now): {changed}."
        )
    done = rundir.epochs_done(out)
    history = os.path.join(out, rundir.HISTORY)
    if os.path.exists(history):
        rundir.read_history(history)  # a corrupted history is named now, not after training
    if done > config.epochs:
        raise ValueError(
            f"The run in {out!r} has already trained {done} epochs: `epochs` must be at least "
            f"{done} to resume it (got {config.epochs}); nothing was changed."
        )
    if done == config.epochs and rundir.read_summary(out) is not None:
        return None
    return done


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
    """

    train: Any
    validation: Any
    info: Any
    steps_per_epoch: int
    global_batch: int
    recalibration: Any = None


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
    }
    fraction = config.validation_fraction or None
    train_ds, info = load_dataset(
        config.dataset, "train", validation_fraction=fraction, **data_args
    )
    val_split = "validation" if fraction else "test"
    val_ds, _ = load_dataset(config.dataset, val_split, validation_fraction=fraction, **data_args)
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
    if config.label_smoothing:
        train_ds = train_ds.map(_one_hot(info.num_classes))
        val_ds = val_ds.map(_one_hot(info.num_classes))
    steps = config.steps_per_epoch or max(1, math.ceil(info.num_examples / global_batch))
    if config.steps_per_epoch:
        train_ds = train_ds.repeat()
    return TrainingData(train_ds, val_ds, info, steps, global_batch, recalibration)


def build_training_model(
    config: TrainConfig, data: TrainingData, strategy: Any = None
) -> keras.Model:
    """Builds and compiles the model of a run for its data.

    Call it under the dtype policy of ``config.precision`` (see `dtype_policy`)
    so every layer computes in low precision and ``compile`` wraps the
    optimizer for loss scaling under mixed_float16.

    Args:
        config: The training options (architecture, optimizer, XLA, ...).
        data: The run's data; input shape, classes and normalization come
            from it.
        strategy: The active ``tf.distribute`` strategy, if any.

    Returns:
        The compiled model.
    """
    info = data.info
    model = build_densenet(
        config.preset,
        **config.architecture(),
        memory_efficient=config.memory_efficient,
        bn_momentum=config.bn_momentum,
        input_shape=info.image_shape,
        num_classes=info.num_classes,
        normalization=info.normalization,
        name=config.preset or "densenet",
    )
    if config.sync_batchnorm:
        for layer in model._flatten_layers():
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.synchronized = True
    if config.label_smoothing:
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing)
        metric = keras.metrics.CategoricalAccuracy(name="accuracy")
    else:
        loss = keras.losses.SparseCategoricalCrossentropy()
        metric = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    model.compile(
        optimizer=make_optimizer(
            config, data.steps_per_epoch * config.epochs, data.global_batch, data.steps_per_epoch
        ),
        loss=loss,
        metrics=[metric],
        jit_compile=resolve_jit_compile(config.jit_compile, strategy, config.precision),
    )
    return model


def train(config: TrainConfig | Mapping[str, Any]) -> dict[str, Any]:
    """Trains a DenseNet with ``model.fit`` and writes a run directory.

    The run directory is locked for the whole run (a second process using it
    fails at once, naming the first one's process id), and every option, the
    data and a resumed run's files are checked before anything is written.

    Args:
        config: A `TrainConfig` or a dict of its fields.

    Returns:
        The run summary (also written to ``out/summary.json``): final metrics,
        test accuracy before and after BN recalibration, parameter count,
        images/s, wall time, paths. Resuming a run that is already complete
        returns its summary, with ``"already_complete": True``, and changes
        nothing.

    Raises:
        ValueError: For bad options, data that cannot be found, a directory in
            use by another process, or a run that cannot be resumed as asked,
            before any training starts.
        TrainingError: If the loss becomes NaN/inf (the last good checkpoint
            is kept) or the batch does not fit in memory.
    """
    if not isinstance(config, TrainConfig):
        config = TrainConfig.from_dict(config)
    previous = keras.distribution.distribution()
    try:
        devices = None
        if config.distribute == "data_parallel":
            devices = _data_parallel(config)
            import jax

            if jax.process_index() > 0:  # one run directory per host; the chief's is `out`
                worker_out = os.path.join(config.out, f"worker-{jax.process_index()}")
                config = dataclasses.replace(config, out=worker_out)
        rundir.ensure_writable_dir(config.out)
        with rundir.lock(config.out):
            done = _prepare_run_dir(config)
            if done is None:
                return {**(rundir.read_summary(config.out) or {}), "already_complete": True}
            return _train(config, devices, done)
    finally:
        keras.distribution.set_distribution(previous)


def _train(config: TrainConfig, devices: int | None, done: int) -> dict[str, Any]:
    started = time.perf_counter()
    if config.seed is not None:
        keras.utils.set_random_seed(config.seed)
    if config.deterministic and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()

    strategy = _strategy(config)
    if devices is not None:
        replicas = devices
    else:
        replicas = strategy.num_replicas_in_sync if strategy is not None else 1
    data = load_training_data(config, replicas)
    global_batch = data.global_batch
    scope = strategy.scope() if strategy else contextlib.nullcontext()
    with dtype_policy(config.precision), scope:
        model = build_training_model(config, data, strategy)
    jit = bool(model.jit_compile)

    out = config.out
    history_path = os.path.join(out, rundir.HISTORY)
    best_path = os.path.join(out, rundir.BEST)
    last_path = os.path.join(out, rundir.LAST)
    rundir.trim_history(history_path, done)
    kept = rundir.read_history(history_path) if os.path.exists(history_path) else {}
    _io.write_json(os.path.join(out, rundir.CONFIG), config.to_dict())
    meter = ThroughputMeter(global_batch)
    # Order matters for a kill between callbacks: every epoch the backup has
    # seen is already in the CSV and the checkpoints (an epoch logged but not
    # backed up is trimmed from the CSV and trained again on --resume).
    callbacks = [
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.CSVLogger(history_path, append=True),
        AtomicModelCheckpoint(
            best_path,
            monitor="val_accuracy",
            mode="max",
            save_best_only=True,
            # A resumed run's best.keras must beat its earlier epochs too.
            initial_value_threshold=max(kept.get("val_accuracy") or [None], key=_or_minus_inf),
        ),
        AtomicModelCheckpoint(last_path),
        AtomicBackupAndRestore(os.path.join(out, rundir.BACKUP)),
        keras.callbacks.TensorBoard(os.path.join(out, rundir.LOGS), write_graph=False),
        meter,
    ]
    if config.bn_recalibrate_steps:
        callbacks.append(BatchNormRecalibration(data.recalibration, config.bn_recalibrate_steps))
    try:
        history = model.fit(
            data.train,
            validation_data=data.validation,
            epochs=config.epochs,
            steps_per_epoch=data.steps_per_epoch if config.steps_per_epoch else None,
            callbacks=callbacks,
            shuffle=False,  # the tf.data pipeline shuffles
            verbose=config.verbose,
        )
    except Exception as err:
        if type(err).__name__ == "ResourceExhaustedError" or isinstance(err, MemoryError):
            raise TrainingError(
                f"Out of memory at batch size {config.batch_size}: try --memory-efficient, a "
                "smaller --batch-size, or --precision mixed_bfloat16/mixed_float16."
            ) from err
        raise
    losses = history.history.get("loss", [])
    if losses and not math.isfinite(losses[-1]):
        kept_model = (
            f"The last good model is {last_path} and --resume restarts from the last good epoch"
            if os.path.exists(last_path)
            else "No epoch finished, so no model was saved"
        )
        raise TrainingError(
            f"The loss became NaN/inf in epoch {done + len(losses)}; training stopped. "
            f"{kept_model}; lower --learning-rate or use float32."
        )
    return _finish_run(config, data, model, meter, started, jit, replicas)


def _or_minus_inf(value: float | None) -> float:
    return -math.inf if value is None or math.isnan(value) else value


def _finish_run(
    config: TrainConfig,
    data: TrainingData,
    model: keras.Model,
    meter: ThroughputMeter,
    started: float,
    jit: bool,
    replicas: int,
) -> dict[str, Any]:
    """Recalibrates and evaluates the best model, plots, and writes the summary."""
    from keras_densenet.viz import plot_history

    out, info = config.out, data.info
    full_history = rundir.read_history(os.path.join(out, rundir.HISTORY))
    plot_history(full_history, os.path.join(out, rundir.CURVES), title=model.name)
    best_path = os.path.join(out, rundir.BEST)
    test_args = {
        "split": "test",
        "data_dir": config.data_dir,
        "batch_size": data.global_batch,
        "image_size": config.image_size,
        "channels": config.channels,
    }
    # The best epoch's weights, in the compiled training model (a reload would
    # rebuild and re-trace it).
    model.load_weights(best_path)
    before = None
    if config.bn_recalibrate_steps:
        # best.keras is what gets evaluated and exported: it ships population
        # statistics; last.keras keeps the moving averages of the training state.
        before = evaluate(model, config.dataset, **test_args)["accuracy"]
        recalibrate_batchnorm(model, data.recalibration, config.bn_recalibrate_steps)
        _io.save_model(model, best_path)
    evaluation = evaluate(model, config.dataset, out=out, **test_args)
    summary = {
        "model": model.name,
        "params": int(model.count_params()),
        "trainable_params": int(sum(int(np.prod(w.shape)) for w in model.trainable_weights)),
        "dataset": config.dataset,
        "source": info.source,
        "class_names": list(info.class_names),
        "input_shape": list(info.image_shape),
        "mean": list(info.mean),
        "std": list(info.std),
        "epochs": len(full_history["epoch"]),
        "final": {k: v[-1] for k, v in full_history.items() if k != "epoch"},
        "best_val_accuracy": max(full_history.get("val_accuracy", [float("nan")])),
        "test_accuracy": evaluation["accuracy"],
        "test_accuracy_before_recalibration": before,
        "bn_recalibrate_steps": config.bn_recalibrate_steps,
        "bn_momentum": config.bn_momentum,
        "images_per_second": meter.images_per_second(),
        "wall_time_s": round(time.perf_counter() - started, 2),
        "precision": config.precision,
        "optimizer": type(model.optimizer).__name__,
        "jit_compile": jit,
        "replicas": replicas,
        "global_batch_size": data.global_batch,
        "best_model": best_path,
        "last_model": os.path.join(out, rundir.LAST),
    }
    _io.write_json(os.path.join(out, rundir.SUMMARY), summary)
    return summary


#: Kept here too: ``from keras_densenet.training import load_model`` is public.
load_model = rundir.load_model


def evaluate(
    model: keras.Model | str | os.PathLike,
    dataset: str,
    *,
    split: str = "test",
    out: str | os.PathLike | None = None,
    data_dir: str | None = None,
    batch_size: int = 256,
    image_size: Sequence[int] | None = None,
    channels: int | None = None,
    allow_unsafe: bool = False,
) -> dict[str, Any]:
    """Accuracy, per-class accuracy and a confusion matrix on a split.

    Args:
        model: A Keras model, a ``.keras`` file, or a run directory.
        dataset: Dataset name (see `keras_densenet.data.load_dataset`).
        split: Which split to evaluate.
        out: Where to write ``evaluation.json`` and ``confusion_matrix.png``
            (a run directory if ``model`` is one; nothing written if None).
        data_dir: Data directory.
        batch_size: Evaluation batch size.
        image_size: Optional resize, as in training.
        channels: Optional channel conversion, as in training.
        allow_unsafe: Allow a model file that carries code (see `load_model`).

    Returns:
        ``{"accuracy", "per_class_accuracy", "confusion_matrix", "class_names",
        "num_examples"}``.

    Raises:
        ValueError: For a missing model or dataset, or a model whose input or
            classes do not fit the data.
    """
    from keras_densenet.data import load_dataset
    from keras_densenet.viz import confusion_matrix, plot_confusion_matrix

    if not isinstance(model, keras.Model):
        if out is None and os.path.isdir(os.fspath(model)):
            out = model
        model = load_model(model, allow_unsafe=allow_unsafe)
    ds, info = load_dataset(
        dataset,
        split,
        batch_size=batch_size,
        data_dir=data_dir,
        normalize=False,
        augment=False,
        shuffle=False,
        image_size=tuple(image_size) if image_size else None,
        channels=channels,
    )
    if model.output_shape[-1] != info.num_classes:
        raise ValueError(
            f"The model has {model.output_shape[-1]} outputs but {dataset!r} has "
            f"{info.num_classes} classes."
        )
    expected = tuple(model.input_shape[1:])
    if any(e is not None and e != g for e, g in zip(expected, info.image_shape, strict=True)):
        raise ValueError(
            f"The model takes images of shape {expected} but {dataset!r} gives "
            f"{info.image_shape}; pass image_size/channels as in training."
        )
    labels, predictions = [], []
    for images, batch_labels in ds:
        probabilities = model.predict_on_batch(np.asarray(images))
        predictions.append(np.argmax(keras.ops.convert_to_numpy(probabilities), axis=-1))
        labels.append(np.asarray(batch_labels))
    y_true, y_pred = np.concatenate(labels), np.concatenate(predictions)
    matrix = confusion_matrix(y_true, y_pred, info.num_classes)
    per_class = matrix.diagonal() / np.maximum(matrix.sum(axis=1), 1)
    result = {
        "accuracy": float(np.mean(y_true == y_pred)),
        "per_class_accuracy": dict(zip(info.class_names, map(float, per_class), strict=True)),
        "confusion_matrix": matrix.tolist(),
        "class_names": list(info.class_names),
        "num_examples": len(y_true),
        "split": split,
    }
    if out is not None:
        os.makedirs(out, exist_ok=True)
        _io.write_json(os.path.join(out, rundir.EVALUATION), result)
        plot_confusion_matrix(
            matrix,
            info.class_names,
            os.path.join(out, "confusion_matrix.png"),
            title=f"{model.name} on {dataset} {split}",
        )
    return result


__all__ = [
    "PRESETS",
    "TrainConfig",
    "TrainingData",
    "TrainingError",
    "build_training_model",
    "evaluate",
    "load_model",
    "load_training_data",
    "make_optimizer",
    "resolve_jit_compile",
    "train",
]
