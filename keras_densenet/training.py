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
import csv
import dataclasses
import json
import math
import os
import time
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import keras
import numpy as np

from keras_densenet.models import PRESETS, build_densenet, resolve_config

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
JIT_MODES = ("off", "on", "auto")
SCHEDULES = ("step", "cosine")
DISTRIBUTE = (None, "mirrored", "data_parallel")
#: The models a run directory holds, in the order a loader prefers them.
RUN_MODELS = ("best.keras", "last.keras")
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
        **kwargs: ``keras.callbacks.ModelCheckpoint`` arguments.
    """

    def __init__(self, filepath: str | os.PathLike, **kwargs: Any) -> None:
        self.final_path = os.fspath(filepath)
        directory, base = os.path.split(self.final_path)
        super().__init__(os.path.join(directory, f".tmp-{base}"), **kwargs)

    def _save_model(self, epoch: int, batch: int | None, logs: Mapping[str, Any]) -> None:
        if not _finite(logs):
            return
        super()._save_model(epoch, batch, logs)
        if os.path.exists(self.filepath):
            os.replace(self.filepath, self.final_path)


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
        os.makedirs(self.backup_dir, exist_ok=True)
        weights_tmp = os.path.join(self.backup_dir, ".tmp-latest.weights.h5")
        meta_tmp = f"{self._training_metadata_path}.tmp"
        self.model.save_weights(weights_tmp, overwrite=True)
        with open(meta_tmp, "w") as f:
            json.dump({"epoch": self._current_epoch, "batch": self._last_batch_seen}, f)
        os.replace(weights_tmp, self._weights_path)
        os.replace(meta_tmp, self._training_metadata_path)


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


def _lr_schedule(config: TrainConfig, base_lr: float, total_steps: int) -> Any:
    if config.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(base_lr, decay_steps=max(total_steps, 1))
    # The schedule is looked up with the number of updates already made, and a
    # step equal to a boundary still gets the earlier value: the update that
    # starts the second half (step total/2) must see lr/10, hence the -1.
    first = max(0, round(total_steps * 0.5) - 1)
    boundaries = [first, max(first + 1, round(total_steps * 0.75) - 1)]
    return keras.optimizers.schedules.PiecewiseConstantDecay(
        boundaries, [base_lr, base_lr / 10, base_lr / 100]
    )


def make_optimizer(config: TrainConfig, total_steps: int, global_batch: int) -> keras.Optimizer:
    """SGD with Nesterov momentum, the lr schedule and weight decay on kernels.

    Args:
        config: The training options.
        total_steps: Optimizer steps in the whole run (for the schedule).
        global_batch: Global batch size (for lr scaling).

    Returns:
        A Keras optimizer.
    """
    base_lr = config.learning_rate or 0.1 * global_batch / REFERENCE_BATCH
    optimizer = keras.optimizers.SGD(
        learning_rate=_lr_schedule(config, base_lr, total_steps),
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


def _trim_history(path: str, epochs_done: int) -> None:
    """Drops CSV rows of epochs that a resumed run will train again."""
    if not os.path.exists(path):
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) < epochs_done]
    tmp = f"{path}.tmp"
    with open(tmp, "w", newline="") as f:
        csv.writer(f).writerows(kept)
    os.replace(tmp, path)


def _epochs_done(backup_dir: str) -> int:
    path = os.path.join(backup_dir, "training_metadata.json")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return int(json.load(f)["epoch"])


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Writes JSON atomically (temporary name, then rename).

    Args:
        path: Destination file.
        data: JSON-serializable data.
    """
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)


def ensure_writable_dir(path: str, name: str = "out") -> None:
    """Creates a directory if needed and checks a file can be written in it.

    Args:
        path: The directory.
        name: The argument it came from, for the error message.

    Raises:
        ValueError: If it is not a directory, cannot be created or is not writable.
    """
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"`{name}` {path!r} exists and is not a directory.")
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write-test-{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as err:
        raise ValueError(f"`{name}` {path!r} is not writable: {err.strerror}.") from err


def _prepare_run_dir(config: TrainConfig) -> None:
    out = config.out
    has_run = os.path.isdir(out) and os.path.exists(os.path.join(out, "config.json"))
    if has_run and not config.resume:
        raise ValueError(
            f"`out` {out!r} already holds a run: pass resume=True (--resume) to continue it, "
            "or choose another directory."
        )
    ensure_writable_dir(out)
    if has_run and config.resume:
        with open(os.path.join(out, "config.json")) as f:
            previous = json.load(f)
        # A resumed run may run longer or with another learning rate (e.g. lower
        # after a NaN loss); anything else would silently change the experiment.
        ignored = {"resume", "verbose", "epochs", "learning_rate"}
        changed = {
            k: (previous.get(k), v)
            for k, v in config.to_dict().items()
            if k not in ignored and previous.get(k) != v
        }
        if changed:
            raise ValueError(
                f"`resume` needs the same options as the run in {out!r}; these differ "
                f"(was, now): {changed}."
            )


@dataclasses.dataclass
class TrainingData:
    """The datasets of a run and what the model needs to know about them.

    Attributes:
        train: Training batches (repeated when ``steps_per_epoch`` is capped).
        validation: Validation batches.
        info: The training split's `keras_densenet.data.DatasetInfo`.
        steps_per_epoch: Optimizer steps per epoch.
        global_batch: Global batch size (per-replica batch x replicas).
    """

    train: Any
    validation: Any
    info: Any
    steps_per_epoch: int
    global_batch: int


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
    if config.label_smoothing:
        train_ds = train_ds.map(_one_hot(info.num_classes))
        val_ds = val_ds.map(_one_hot(info.num_classes))
    steps = config.steps_per_epoch or max(1, math.ceil(info.num_examples / global_batch))
    if config.steps_per_epoch:
        train_ds = train_ds.repeat()
    return TrainingData(train_ds, val_ds, info, steps, global_batch)


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
        optimizer=make_optimizer(config, data.steps_per_epoch * config.epochs, data.global_batch),
        loss=loss,
        metrics=[metric],
        jit_compile=resolve_jit_compile(config.jit_compile, strategy, config.precision),
    )
    return model


def train(config: TrainConfig | Mapping[str, Any]) -> dict[str, Any]:
    """Trains a DenseNet with ``model.fit`` and writes a run directory.

    Args:
        config: A `TrainConfig` or a dict of its fields.

    Returns:
        The run summary (also written to ``out/summary.json``): final metrics,
        test accuracy, parameter count, images/s, wall time, paths.

    Raises:
        ValueError: For bad options or data that cannot be found, before any
            training starts.
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
        _prepare_run_dir(config)
        return _train(config, devices)
    finally:
        keras.distribution.set_distribution(previous)


def _train(config: TrainConfig, devices: int | None) -> dict[str, Any]:
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
    info, global_batch = data.info, data.global_batch
    scope = strategy.scope() if strategy else contextlib.nullcontext()
    with dtype_policy(config.precision), scope:
        model = build_training_model(config, data, strategy)
    jit = bool(model.jit_compile)

    out = config.out
    backup_dir = os.path.join(out, "backup")
    history_path = os.path.join(out, "history.csv")
    done = _epochs_done(backup_dir) if config.resume else 0
    _trim_history(history_path, done)
    write_json(os.path.join(out, "config.json"), config.to_dict())
    meter = ThroughputMeter(global_batch)
    # Order matters for a kill between callbacks: every epoch the backup has
    # seen is already in the CSV and the checkpoints (an epoch logged but not
    # backed up is trimmed from the CSV and trained again on --resume).
    callbacks = [
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.CSVLogger(history_path, append=True),
        AtomicModelCheckpoint(
            os.path.join(out, "best.keras"),
            monitor="val_accuracy",
            mode="max",
            save_best_only=True,
        ),
        AtomicModelCheckpoint(os.path.join(out, "last.keras")),
        AtomicBackupAndRestore(backup_dir),
        keras.callbacks.TensorBoard(os.path.join(out, "logs"), write_graph=False),
        meter,
    ]
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
        raise TrainingError(
            f"The loss became NaN/inf in epoch {done + len(losses)}; training stopped. The last "
            f"good model is {os.path.join(out, 'last.keras')} and --resume restarts from the "
            "last good epoch; lower --learning-rate or use float32."
        )

    from keras_densenet.viz import plot_history, read_history_csv

    full_history = read_history_csv(history_path)
    plot_history(full_history, os.path.join(out, "curves.png"), title=model.name)
    best_path = os.path.join(out, "best.keras")
    evaluation = evaluate(
        best_path,
        config.dataset,
        split="test",
        out=out,
        data_dir=config.data_dir,
        batch_size=global_batch,
        image_size=config.image_size,
        channels=config.channels,
    )
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
        "images_per_second": meter.images_per_second(),
        "wall_time_s": round(time.perf_counter() - started, 2),
        "precision": config.precision,
        "optimizer": type(model.optimizer).__name__,
        "jit_compile": jit,
        "replicas": replicas,
        "global_batch_size": global_batch,
        "best_model": best_path,
        "last_model": os.path.join(out, "last.keras"),
    }
    write_json(os.path.join(out, "summary.json"), summary)
    return summary


def load_model(
    path: str | os.PathLike, *, allow_unsafe: bool = False, compile: bool = True
) -> keras.Model:
    """Loads a ``.keras`` model in safe mode (no ``custom_objects`` needed).

    Safe mode refuses files that would run arbitrary code when loaded (a
    ``Lambda`` layer's pickled function); only ``allow_unsafe=True`` turns it
    off, for files you trust.

    Args:
        path: A ``.keras`` file, or a run directory (its ``best.keras``, else
            ``last.keras``).
        allow_unsafe: Load ``Lambda`` layers and other code-carrying objects.
        compile: Restore the training configuration (optimizer, loss) too.

    Returns:
        The model.

    Raises:
        ValueError: If the file is missing, truncated, corrupted, or needs
            unsafe deserialization that was not allowed.
    """
    import keras_densenet  # noqa: F401  (registers the layers)

    path = os.fspath(path)
    if os.path.isdir(path):
        found = [os.path.join(path, n) for n in RUN_MODELS if os.path.isfile(os.path.join(path, n))]
        if not found:
            raise ValueError(
                f"Directory {path!r} is not a training run directory: it has none of "
                f"{', '.join(RUN_MODELS)}."
            )
        path = found[0]
    if not os.path.isfile(path):
        raise ValueError(f"Model file not found: {path!r}.")
    if not path.endswith(".keras"):
        raise ValueError(f"Expected a Keras `.keras` model file, got {path!r}.")
    if path.endswith(".keras") and not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path!r} is not a valid .keras file (not a zip archive): truncated or corrupted."
        )
    try:
        return keras.saving.load_model(path, compile=compile, safe_mode=not allow_unsafe)
    except Exception as err:
        text = str(err)
        if "safe_mode" in text or "unsafe" in text.lower():
            raise ValueError(
                f"Refusing to load {path!r}: it contains code (e.g. a Lambda layer) that would "
                "run on load; pass allow_unsafe=True (--allow-unsafe) only for a file you trust."
            ) from err
        raise ValueError(f"Cannot load model {path!r}: {type(err).__name__}: {text}") from err


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
        write_json(os.path.join(out, "evaluation.json"), result)
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
