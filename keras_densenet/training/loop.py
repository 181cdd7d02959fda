"""The training loop: data -> model -> ``model.fit`` -> run directory.

`train` builds a DenseNet from a preset (its input shape and number of classes
from the dataset unless given), compiles it with the paper's recipe
(`keras_densenet.training.recipe`), runs ``model.fit`` with Keras callbacks,
recalibrates the best model's BatchNorm statistics, evaluates it on the test
split and writes everything into one run directory (`keras_densenet.rundir`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
import warnings
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from keras_densenet import _io, rundir
from keras_densenet.batchnorm import (
    BatchNormRecalibration,
    BatchNormRecalibrator,
    recalibrate_batchnorm,
)
from keras_densenet.evaluation import evaluate
from keras_densenet.losses import SparseSmoothedCrossentropy
from keras_densenet.models import build_densenet
from keras_densenet.training.callbacks import (
    AtomicBackupAndRestore,
    AtomicModelCheckpoint,
    ThroughputMeter,
)
from keras_densenet.training.config import LEGACY_OPTIONS, TrainConfig
from keras_densenet.training.recipe import (
    data_parallel,
    dtype_policy,
    make_optimizer,
    make_strategy,
    resolve_jit_compile,
    resolve_precision,
)


class TrainingError(RuntimeError):
    """Training stopped for a reason the user can act on (NaN loss, out of memory)."""


class OutOfMemoryError(TrainingError):
    """The batch did not fit in memory; the message lists the remedies.

    After it the process may be unable to free TensorFlow's memory (freeing a
    variable can itself fail), so a program should report it and exit; the
    run directory is consistent (files are renamed into place whole).
    """


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
            f"`out` {out!r} already holds a run: pass `resume=True` to continue it, "
            "or choose another directory."
        )
    if not (has_run and config.resume):
        return 0
    previous = {**LEGACY_OPTIONS, **rundir.read_config(out)}
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
    for other in (test_info, val_info):
        if other.class_names != info.class_names:
            raise ValueError(
                f"The {other.split} split of {config.dataset!r} has classes "
                f"{list(other.class_names)}, the training split {list(info.class_names)}."
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
    )
    if config.sync_batchnorm:
        for layer in model._flatten_layers():
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.synchronized = True
    if config.label_smoothing:
        loss = SparseSmoothedCrossentropy(config.label_smoothing)
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


def _recalibrate_best(
    best: keras.Model,
    best_path: str,
    data: TrainingData,
    config: TrainConfig,
    test_args: dict[str, Any],
) -> str:
    """Gives best.keras population BN statistics unless validation prefers its own.

    With a held-out validation split, the recalibrated statistics are kept
    only if they validate at least as well as the moving averages: after a
    long run at momentum 0.9 the moving averages can be the better estimate
    (full Fashion-MNIST: 0.930 against 0.923 on the test split), while after
    a short one they are far worse (0.28 against 0.71). Without one (the test
    split validates), recalibration is kept: the test split never chooses.

    Returns:
        ``"recalibrated"`` or ``"moving averages"``, what best.keras now has.
    """
    val_args = {
        **test_args,
        "split": "validation",
        "validation_fraction": config.validation_fraction,
    }
    held_out = bool(config.validation_fraction)
    if held_out:
        ema = evaluate(best, config.dataset, **val_args)["accuracy"]
        moving_averages = BatchNormRecalibrator(best).snapshot()
    recalibrate_batchnorm(best, data.recalibration, config.bn_recalibrate_steps)
    if held_out and evaluate(best, config.dataset, **val_args)["accuracy"] < ema:
        BatchNormRecalibrator(best).restore(moving_averages)
        return "moving averages"
    # best.keras is what gets evaluated and exported; last.keras keeps the
    # moving averages of the training state.
    _io.save_model(best, best_path)
    return "recalibrated"


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
    config = TrainConfig.coerce(config)
    previous = keras.distribution.distribution()
    try:
        devices = None
        if config.distribute == "data_parallel":
            devices = data_parallel(config)
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


def _macs_per_image(config: TrainConfig, data: TrainingData) -> int:
    """The run's model's multiply-accumulates per image (a float32 probe build)."""
    from keras_densenet.analysis import count_macs

    with dtype_policy("float32"):
        probe = build_densenet(
            config.preset,
            **config.architecture(),
            input_shape=data.info.image_shape,
            num_classes=data.info.num_classes,
        )
    if config.seed is not None:  # the real model gets the same weights as without the probe
        keras.utils.set_random_seed(config.seed)
    return count_macs(probe)


def _train(config: TrainConfig, devices: int | None, done: int) -> dict[str, Any]:
    started = time.perf_counter()
    if config.seed is not None:
        keras.utils.set_random_seed(config.seed)
    if config.deterministic and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()

    strategy = make_strategy(config)
    if devices is not None:
        replicas = devices
    else:
        replicas = strategy.num_replicas_in_sync if strategy is not None else 1
    data = load_training_data(config, replicas)
    global_batch = data.global_batch
    scope = strategy.scope() if strategy else contextlib.nullcontext()
    precision = resolve_precision(config.precision, macs=lambda: _macs_per_image(config, data))
    with dtype_policy(precision), scope:
        model = build_training_model(config, data, strategy)
    jit = bool(model.jit_compile)
    if config.verbose:
        print(describe_run(config, data, model, jit, done), flush=True)

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
            raise OutOfMemoryError(
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


def describe_run(
    config: TrainConfig, data: TrainingData, model: keras.Model, jit: bool, done: int = 0
) -> str:
    """One line saying what a run is about to do (printed before the first epoch).

    Args:
        config: The training options.
        data: The run's data.
        model: The compiled model.
        jit: Whether XLA is on.
        done: Epochs a resumed run already has.

    Returns:
        The line.
    """
    info = data.info
    val = data.validation_info
    sizes = (
        f"{info.num_examples} train / {val.num_examples if val else '?'} {val.split if val else ''}"
    )
    test = data.test_info
    if test is not None and val is not test:
        sizes += f" / {test.num_examples} test"
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    resumed = f" | resuming after epoch {done}" if done else ""
    return (
        f"{config.dataset} ({info.source}: {sizes}, {'x'.join(map(str, info.image_shape))}, "
        f"{info.num_classes} classes) | {model.name} ({trainable:,} trainable params) | "
        f"{config.epochs} epochs of {data.steps_per_epoch} steps, batch {data.global_batch} | "
        f"{model.dtype_policy.name}, XLA {'on' if jit else 'off'} | "
        f"{config.out}{resumed}"
    )


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
        "bad_images": config.bad_images,
        "data_dir": config.data_dir,
        "batch_size": data.global_batch,
        "image_size": config.image_size,
        "channels": config.channels,
    }
    # A plain (not distributed) copy of the best epoch's model. Keras warns that
    # a LossScaleOptimizer's slots are skipped on reload: they are rebuilt.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        best = rundir.load_model(best_path)
    before, statistics = None, "moving averages"
    if config.bn_recalibrate_steps:
        before = evaluate(best, config.dataset, **test_args)["accuracy"]
        statistics = _recalibrate_best(best, best_path, data, config, test_args)
    evaluation = evaluate(best, config.dataset, out=out, **test_args)
    summary = {
        "model": model.name,
        "preset": config.preset,
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
        "bn_statistics": statistics,
        "bn_recalibrate_steps": config.bn_recalibrate_steps,
        "bn_momentum": config.bn_momentum,
        "images_per_second": meter.images_per_second(),
        "wall_time_s": round(time.perf_counter() - started, 2),
        "precision": model.dtype_policy.name,
        "optimizer": type(model.optimizer).__name__,
        "jit_compile": jit,
        "replicas": replicas,
        "global_batch_size": data.global_batch,
        "best_model": best_path,
        "last_model": os.path.join(out, rundir.LAST),
    }
    _io.write_json(os.path.join(out, rundir.SUMMARY), summary)
    return summary


__all__ = [
    "OutOfMemoryError",
    "TrainingData",
    "TrainingError",
    "build_training_model",
    "load_training_data",
    "train",
]
