"""The end of a run: final BatchNorm statistics, the test evaluation, summary.json.

`finish_run` reloads the best epoch's model, gives it recalibrated BatchNorm
statistics where validation agrees (`recalibrate_best`), evaluates it on the
test split, draws the curves and writes ``summary.json`` last, so a run
directory with a summary is a complete run.
"""

from __future__ import annotations

import os
import time
from typing import Any

import keras
import numpy as np

from keras_densenet import _io, rundir
from keras_densenet.batchnorm import BatchNormRecalibrator, recalibrate_batchnorm
from keras_densenet.evaluation import evaluate
from keras_densenet.training.callbacks import ThroughputMeter
from keras_densenet.training.config import TrainConfig
from keras_densenet.training.data import TrainingData


def recalibrate_best(
    best: keras.Model,
    best_path: str,
    data: TrainingData,
    config: TrainConfig,
    test_args: dict[str, Any],
) -> tuple[str, float | None]:
    """Gives best.keras population BN statistics unless validation prefers its own.

    With a held-out validation split, the recalibrated statistics are kept
    only if they validate at least as well as the moving averages: after a
    long run at momentum 0.9 the moving averages can be the better estimate
    (full Fashion-MNIST: 0.930 against 0.923 on the test split), while after
    a short one they are far worse (0.28 against 0.71). Without one (the test
    split validates), recalibration is kept: the test split never chooses.

    Args:
        best: best.keras, loaded; its statistics are changed in place.
        best_path: Where best.keras is; rewritten only if recalibration is kept.
        data: The run's data (`recalibration` batches, unaugmented).
        config: The run's options (``bn_recalibrate_steps``, ``validation_fraction``).
        test_args: `evaluate` options for the test split.

    Returns:
        What best.keras now has, ``"recalibrated"`` or ``"moving averages"``,
        and where validation turned the recalibrated statistics down, the test
        accuracy they gave (None otherwise: the final test evaluation is theirs).
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
        turned_down = evaluate(best, config.dataset, **test_args)["accuracy"]
        BatchNormRecalibrator(best).restore(moving_averages)
        return "moving averages", turned_down
    # best.keras is what gets evaluated and exported; last.keras keeps the
    # moving averages of the training state.
    _io.save_model(best, best_path)
    return "recalibrated", None


def finish_run(
    config: TrainConfig,
    data: TrainingData,
    model: keras.Model,
    meter: ThroughputMeter,
    started: float,
    jit: bool,
    replicas: int,
) -> dict[str, Any]:
    """Recalibrates and evaluates the best model, plots, and writes the summary.

    Args:
        config: The run's options.
        data: The run's data.
        model: The trained model (its name, parameters and dtype policy are recorded).
        meter: The run's throughput.
        started: ``time.perf_counter()`` when the run started.
        jit: Whether XLA was on.
        replicas: Devices the batch was split across.

    Returns:
        The summary, as written to ``summary.json``.
    """
    from keras_densenet.viz import plot_history

    out = config.out
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
    # A plain (not distributed) copy of the best epoch's model, its optimizer
    # included (rundir.load_model compiles it under the policy it was saved with).
    best = rundir.load_model(best_path)
    before, after, statistics = None, None, "moving averages"
    if config.bn_recalibrate_steps:
        before = evaluate(best, config.dataset, **test_args)["accuracy"]
        statistics, after = recalibrate_best(best, best_path, data, config, test_args)
    evaluation = evaluate(best, config.dataset, out=out, **test_args)
    if statistics == "recalibrated":
        after = evaluation["accuracy"]
    summary = {
        **_describe_model(model, data, jit, replicas),
        **_results(full_history, evaluation["accuracy"], (before, after), statistics, config),
        "images_per_second": meter.images_per_second(),
        **_fine_tuning(config, meter),
        "wall_time_s": round(time.perf_counter() - started, 2),
        "best_model": best_path,
        "last_model": os.path.join(out, rundir.LAST),
    }
    _io.write_json(os.path.join(out, rundir.SUMMARY), summary)
    return summary


def _fine_tuning(config: TrainConfig, meter: ThroughputMeter) -> dict[str, Any]:
    """The summary's fields about the pretrained weights and each phase's speed."""
    if config.weights is None:
        return {}
    from keras_densenet.pretrained import identify

    try:
        kind = identify(config.weights).kind
    except ValueError:  # moved since the run started: its config still names it
        kind = None
    fields = {"weights": config.weights, "weights_kind": kind}
    if config.freeze_epochs:
        fields["images_per_second_frozen"] = meter.images_per_second(0, config.freeze_epochs)
        if config.freeze_epochs < config.epochs:
            fields["images_per_second_unfrozen"] = meter.images_per_second(config.freeze_epochs)
    return fields


def _describe_model(
    model: keras.Model, data: TrainingData, jit: bool, replicas: int
) -> dict[str, Any]:
    """The summary's fields about what was trained and on what."""
    info = data.info
    return {
        "model": model.name,
        "params": int(model.count_params()),
        "trainable_params": int(sum(int(np.prod(w.shape)) for w in model.trainable_weights)),
        "source": info.source,
        "class_names": list(info.class_names),
        "input_shape": list(info.image_shape),
        "mean": list(info.mean),
        "std": list(info.std),
        "precision": model.dtype_policy.name,
        "optimizer": type(model.optimizer).__name__,
        "jit_compile": jit,
        "replicas": replicas,
        "global_batch_size": data.global_batch,
    }


def _results(
    history: dict[str, list[float]],
    test_accuracy: float,
    around: tuple[float | None, float | None],
    statistics: str,
    config: TrainConfig,
) -> dict[str, Any]:
    """The summary's fields about how the run went.

    ``around`` is the test accuracy with the moving averages and with the
    recalibrated statistics (both None when recalibration is off); the one
    ``statistics`` names is ``test_accuracy``.
    """
    return {
        "preset": config.preset,
        "dataset": config.dataset,
        "epochs": len(history["epoch"]),
        "final": {k: v[-1] for k, v in history.items() if k != "epoch"},
        "best_val_accuracy": max(history.get("val_accuracy", [float("nan")])),
        "test_accuracy": test_accuracy,
        "test_accuracy_before_recalibration": around[0],
        "test_accuracy_after_recalibration": around[1],
        "bn_statistics": statistics,
        "bn_recalibrate_steps": config.bn_recalibrate_steps,
        "bn_momentum": config.bn_momentum,
    }


__all__ = ["finish_run", "recalibrate_best"]
