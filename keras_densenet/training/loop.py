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
import errno
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from keras_densenet import _io, rundir
from keras_densenet.architecture import TORCH_BN_EPSILON
from keras_densenet.batchnorm import (
    BatchNormRecalibration,
)
from keras_densenet.losses import SparseSmoothedCrossentropy, WeightedBinaryCrossentropy
from keras_densenet.models import build_densenet
from keras_densenet.scores import primary_metric
from keras_densenet.training.callbacks import (
    AtomicBackupAndRestore,
    AtomicModelCheckpoint,
    ThroughputMeter,
)
from keras_densenet.training.config import TrainConfig
from keras_densenet.training.data import TrainingData, class_weight_map, load_training_data
from keras_densenet.training.finish import finish_run
from keras_densenet.training.recipe import (
    data_parallel,
    dtype_policy,
    make_optimizer,
    make_strategy,
    resolve_jit_compile,
    resolve_precision,
)
from keras_densenet.training.resume import prepare_run_dir


class TrainingError(RuntimeError):
    """Training stopped for a reason the user can act on (NaN loss, out of memory)."""


class OutOfMemoryError(TrainingError):
    """The batch did not fit in memory; the message lists the remedies.

    After it the process may be unable to free TensorFlow's memory (freeing a
    variable can itself fail), so a program should report it and exit; the
    run directory is consistent (files are renamed into place whole).
    """


def model_normalization(
    config: TrainConfig, data: TrainingData
) -> tuple[list[float], list[float]] | Any:
    """The input normalization a run's model carries (``config.normalization``).

    ``"auto"`` is what ``config.weights`` were trained with (ImageNet's
    statistics for keras.applications, torchvision, timm and keras-hub
    weights; the source model's own for a model of this package), else the
    training images' mean and std.
    """
    channels = data.info.image_shape[-1]
    if config.normalization == "dataset" or (
        config.normalization == "auto" and config.weights is None
    ):
        return data.info.normalization
    from keras_densenet.pretrained import identify, imagenet_statistics, source_normalization

    if config.normalization == "imagenet":
        return imagenet_statistics(channels)
    return source_normalization(identify(config.weights), channels) or data.info.normalization


def build_training_model(
    config: TrainConfig,
    data: TrainingData,
    strategy: Any = None,
    *,
    frozen: bool = False,
    load_weights: bool = True,
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
        frozen: Build it for the head-only phase of a fine-tuning run (the
            backbone frozen); see `compile_phase`.
        load_weights: Load ``config.weights`` into the backbone (a resumed
            run's backup brings its own weights instead).

    Returns:
        The compiled model.

    Raises:
        ValueError: If ``config.weights`` does not fit the backbone (naming
            the file and tensor).
    """
    info = data.info
    bn_epsilon = None
    if config.weights is not None:
        from keras_densenet.models import is_torch_weights

        bn_epsilon = TORCH_BN_EPSILON if is_torch_weights(config.weights) else None
    model = build_densenet(
        config.preset,
        **config.architecture(),
        memory_efficient=config.memory_efficient,
        bn_momentum=config.bn_momentum,
        bn_epsilon=bn_epsilon,
        input_shape=info.image_shape,
        num_classes=info.num_classes,
        classifier_activation="sigmoid" if data.multi_label else "softmax",
        normalization=model_normalization(config, data),
    )
    if config.weights is not None and load_weights:
        from keras_densenet.pretrained import load_backbone_weights

        load_backbone_weights(model, config.weights)
    if config.sync_batchnorm:
        for layer in model._flatten_layers():
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.synchronized = True
    compile_phase(model, config, data, strategy, frozen=frozen)
    return model


def phases(config: TrainConfig) -> list[tuple[int, int, bool]]:
    """A run's training phases: ``(first epoch, end epoch, backbone frozen)``.

    One phase for a run from scratch; a fine-tuning run with
    ``freeze_epochs`` trains the head alone first, then everything.
    """
    if not config.freeze_epochs:
        return [(0, config.epochs, False)]
    if config.freeze_epochs == config.epochs:
        return [(0, config.epochs, True)]
    return [(0, config.freeze_epochs, True), (config.freeze_epochs, config.epochs, False)]


def compile_phase(
    model: keras.Model,
    config: TrainConfig,
    data: TrainingData,
    strategy: Any = None,
    *,
    frozen: bool,
) -> None:
    """Freezes or unfreezes the backbone and compiles the model for one phase.

    Each phase has an optimizer of its own, its warm-up and schedule over
    the phase's epochs: the head-only phase at the full rate, the phase that
    trains everything with the backbone at ``config.backbone_lr_scale`` of it.
    A frozen backbone's BatchNorms run in inference mode (Keras 3 does so
    for a layer with ``trainable=False``) and nothing of it changes.
    """
    from keras_densenet.heads import freeze_backbone

    freeze_backbone(model, frozen)
    start, end, _ = next(p for p in phases(config) if p[2] == frozen)
    loss, metrics = _loss_and_metrics(config, data)
    steps = data.steps_per_epoch
    model.compile(
        optimizer=make_optimizer(
            config,
            steps * (end - start),
            data.global_batch,
            steps,
            backbone_lr_scale=1.0 if frozen else config.backbone_lr_scale,
        ),
        loss=loss,
        metrics=metrics,
        jit_compile=resolve_jit_compile(config.jit_compile, strategy, config.precision),
    )


def _loss_and_metrics(config: TrainConfig, data: TrainingData) -> tuple[Any, list[Any]]:
    """A phase's loss and metrics: softmax cross-entropy and accuracy, or per
    label binary cross-entropy and the macro AUROC (multi-label)."""
    if data.multi_label:
        if data.class_weights is not None:
            loss = WeightedBinaryCrossentropy(data.class_weights, config.label_smoothing)
        else:
            loss = keras.losses.BinaryCrossentropy(label_smoothing=config.label_smoothing)
        return loss, [
            keras.metrics.AUC(
                multi_label=True, num_labels=data.info.num_classes, name=primary_metric(True)
            ),
            keras.metrics.BinaryAccuracy(name="binary_accuracy"),
        ]
    if config.label_smoothing:
        loss = SparseSmoothedCrossentropy(config.label_smoothing)
    else:
        loss = keras.losses.SparseCategoricalCrossentropy()
    return loss, [keras.metrics.SparseCategoricalAccuracy(name=primary_metric(False))]


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
        created = rundir.first_missing(config.out)
        rundir.ensure_writable_dir(config.out)
        try:
            with rundir.lock(config.out):
                done = prepare_run_dir(config)
                if done is None:
                    return {**(rundir.read_summary(config.out) or {}), "already_complete": True}
                return _train(config, devices, done)
        except BaseException:
            if created:  # refused before anything was written: leave no directory behind
                rundir.remove_if_unused(config.out, up_to=created)
            raise
    finally:
        keras.distribution.set_distribution(previous)


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
    todo = [phase for phase in phases(config) if phase[1] > done]
    with dtype_policy(resolve_precision(config.precision)), scope:
        # A resumed run's backup holds its weights: the source is not read again.
        model = build_training_model(
            config, data, strategy, frozen=todo[0][2], load_weights=done == 0
        )
    jit = bool(model.jit_compile)
    if config.verbose:
        print(describe_run(config, data, model, jit, done), flush=True)

    meter = ThroughputMeter(global_batch)
    callbacks = _callbacks(config, data, meter, done)
    for index, (start, end, frozen) in enumerate(todo):
        if index:  # the backbone unfreezes: a new optimizer, its warm-up and schedule
            with dtype_policy(resolve_precision(config.precision)), scope:
                compile_phase(model, config, data, strategy, frozen=frozen)
            if config.verbose:
                print(f"epoch {start + 1}: the backbone trains from here on", flush=True)
        backup = next(c for c in callbacks if isinstance(c, AtomicBackupAndRestore))
        backup.phase_start = start or None
        _fit(model, config, data, callbacks, done, start, end)
    return finish_run(config, data, model, meter, started, jit, replicas)


def _callbacks(
    config: TrainConfig, data: TrainingData, meter: ThroughputMeter, done: int
) -> list[keras.callbacks.Callback]:
    """The run's callbacks; trims a resumed run's history and writes config.json."""
    out = config.out
    history_path = os.path.join(out, rundir.HISTORY)
    monitor = f"val_{primary_metric(data.multi_label)}"
    rundir.trim_history(history_path, done)
    kept = rundir.read_history(history_path) if os.path.exists(history_path) else {}
    _io.write_json(os.path.join(out, rundir.CONFIG), config.to_dict())
    # Order matters for a kill between callbacks: every epoch the backup has
    # seen is already in the CSV and the checkpoints (an epoch logged but not
    # backed up is trimmed from the CSV and trained again on --resume).
    callbacks = [
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.CSVLogger(history_path, append=True),
        AtomicModelCheckpoint(
            os.path.join(out, rundir.BEST),
            monitor=monitor,
            mode="max",
            save_best_only=True,
            # A resumed run's best.keras must beat its earlier epochs too (a NaN
            # threshold would refuse every later epoch).
            initial_value_threshold=max(
                (v for v in kept.get(monitor, []) if not math.isnan(v)), default=None
            ),
        ),
        AtomicModelCheckpoint(os.path.join(out, rundir.LAST)),
        AtomicBackupAndRestore(os.path.join(out, rundir.BACKUP)),
        keras.callbacks.TensorBoard(os.path.join(out, rundir.LOGS), write_graph=False),
        meter,
    ]
    if config.bn_recalibrate_steps:
        callbacks.append(BatchNormRecalibration(data.recalibration, config.bn_recalibrate_steps))
    return callbacks


#: How allocation failures read in runtime errors other than ResourceExhaustedError
#: (lower case): oneDNN's primitives report theirs as an AbortedError with status 1
#: (``dnnl_out_of_memory``), C++ as ``std::bad_alloc``, the allocators as "failed to
#: allocate" or "out of memory" (CUDA, XLA, PyTorch).
_OUT_OF_MEMORY_MESSAGES = (
    "out of memory",
    "oom when allocating",
    "failed to allocate",
    "bad_alloc",
    "status: 1, message:",
)


def is_out_of_memory(err: BaseException) -> bool:
    """Whether an error of ``model.fit`` means a batch did not fit in memory.

    Only errors a runtime raises are read by their message (TensorFlow's
    ``OpError`` kinds, ``RuntimeError`` and its subclasses: XLA's, PyTorch's);
    an ``OSError`` counts by its errno, and no other kind (a ``ValueError`` that
    names a file "out of memory.png" is not one).

    Args:
        err: The error.

    Returns:
        True for a TensorFlow ``ResourceExhaustedError``, a ``MemoryError``, an
        ``OSError`` with ``errno.ENOMEM``, or a runtime error whose message reads as a
        failed allocation (`_OUT_OF_MEMORY_MESSAGES`).
    """
    kinds = {cls.__name__ for cls in type(err).__mro__}
    if "ResourceExhaustedError" in kinds or isinstance(err, MemoryError):
        return True
    if isinstance(err, OSError):
        return err.errno == errno.ENOMEM
    if "OpError" not in kinds and not isinstance(err, RuntimeError):
        return False
    message = str(err).lower()
    return any(phrase in message for phrase in _OUT_OF_MEMORY_MESSAGES)


def _fit(
    model: keras.Model,
    config: TrainConfig,
    data: TrainingData,
    callbacks: list[keras.callbacks.Callback],
    done: int,
    start: int = 0,
    end: int | None = None,
) -> None:
    """``model.fit`` over epochs ``start..end``; out of memory and a NaN/inf
    loss become a `TrainingError`."""
    try:
        history = model.fit(
            data.train,
            validation_data=data.validation,
            initial_epoch=start,
            epochs=config.epochs if end is None else end,
            steps_per_epoch=data.steps_per_epoch if config.steps_per_epoch else None,
            class_weight=class_weight_map(data),
            callbacks=callbacks,
            shuffle=False,  # the tf.data pipeline shuffles
            verbose=config.verbose,
        )
    except Exception as err:
        if is_out_of_memory(err):
            raise OutOfMemoryError(
                f"Out of memory at batch size {config.batch_size}: try --memory-efficient, a "
                "smaller --batch-size, or --precision mixed_bfloat16/mixed_float16."
            ) from err
        raise
    losses = history.history.get("loss", [])
    if losses and not math.isfinite(losses[-1]):
        last_path = os.path.join(config.out, rundir.LAST)
        kept_model = (
            f"The last good model is {last_path} and --resume restarts from the last good epoch"
            if os.path.exists(last_path)
            else "No epoch finished, so no model was saved"
        )
        raise TrainingError(
            f"The loss became NaN/inf in epoch {max(done, start) + len(losses)}; training "
            "stopped. "
            f"{kept_model}; lower --learning-rate or use float32."
        )


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
    if done and rundir.read_summary(config.out) is not None:
        resumed = (
            f" | extending the finished {done}-epoch run to {config.epochs} epochs "
            "(its summary.json and best.keras are replaced at the end)"
        )
    return (
        f"{config.dataset} ({info.source}: {sizes}, {'x'.join(map(str, info.image_shape))}, "
        f"{info.num_classes} {'labels' if info.multi_label else 'classes'}) | "
        f"{model.name} ({trainable:,} trainable params) | "
        f"{config.epochs} epochs of {data.steps_per_epoch} steps, batch {data.global_batch} | "
        f"{model.dtype_policy.name}, XLA {'on' if jit else 'off'} | "
        f"{config.out}{resumed}"
    )


__all__ = [
    "OutOfMemoryError",
    "TrainingError",
    "build_training_model",
    "compile_phase",
    "model_normalization",
    "phases",
    "train",
]
