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
from keras_densenet.evaluation import evaluate, predict_split, primary_score
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
        score (accuracy, or macro AUROC for multi-label data) they gave (None
        otherwise: the final test evaluation is theirs).
    """
    val_args = {
        **test_args,
        "split": "validation",
        "validation_fraction": config.validation_fraction,
    }
    held_out = bool(config.validation_fraction)
    if held_out:
        ema = primary_score(evaluate(best, config.dataset, **val_args))
        moving_averages = BatchNormRecalibrator(best).snapshot()
    recalibrate_batchnorm(best, data.recalibration, config.bn_recalibrate_steps)
    if held_out and primary_score(evaluate(best, config.dataset, **val_args)) < ema:
        turned_down = primary_score(evaluate(best, config.dataset, **test_args))
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
    if config.verbose:
        steps = [
            f"BatchNorm statistics from {config.bn_recalibrate_steps} batches"
            * bool(config.bn_recalibrate_steps),
            "decision thresholds on validation" * data.multi_label,
            f"test evaluation ({data.test_info.num_examples} images)" if data.test_info else "",
            "plots",
        ]
        print(f"finishing: {', '.join(s for s in steps if s)}", flush=True)
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
        before = primary_score(evaluate(best, config.dataset, **test_args))
        statistics, after = recalibrate_best(best, best_path, data, config, test_args)
    thresholds = None
    if data.multi_label:
        thresholds = choose_thresholds(best, config, data, test_args)
        _io.write_json(os.path.join(out, rundir.THRESHOLDS), thresholds)
        test_args["thresholds"] = list(thresholds.values())
    evaluation = evaluate(best, config.dataset, out=out, **test_args)
    if statistics == "recalibrated":
        after = primary_score(evaluation)
    summary = {
        **_describe_model(model, data, jit, replicas),
        **_results(full_history, evaluation, (before, after), statistics, config),
        "images_per_second": meter.images_per_second(),
        **_fine_tuning(config, meter),
        "wall_time_s": round(time.perf_counter() - started, 2),
        "best_model": best_path,
        "last_model": os.path.join(out, rundir.LAST),
    }
    _io.write_json(os.path.join(out, rundir.SUMMARY), summary)
    return summary


def choose_thresholds(
    best: keras.Model, config: TrainConfig, data: TrainingData, test_args: dict[str, Any]
) -> dict[str, float]:
    """Per-label decision thresholds with the highest F1 on the validation split.

    Without a held-out validation split the test split validates (as it
    chooses the best epoch then); a label without a positive validation
    example keeps `keras_densenet.scores.DEFAULT_THRESHOLD`.

    Returns:
        Label name -> threshold, in label order.
    """
    from keras_densenet.data import load_dataset
    from keras_densenet.scores import f1_threshold

    fraction = config.validation_fraction or None
    batches, info = load_dataset(
        config.dataset,
        "validation" if fraction else "test",
        batch_size=test_args["batch_size"],
        data_dir=config.data_dir,
        normalize=False,
        augment=False,
        shuffle=False,
        image_size=tuple(config.image_size) if config.image_size else None,
        channels=config.channels,
        validation_fraction=fraction,
        bad_images=config.bad_images,
    )
    targets, probabilities = predict_split(best, batches)
    return {
        name: f1_threshold(targets[:, i], probabilities[:, i])[0]
        for i, name in enumerate(info.class_names)
    }


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
    evaluation: dict[str, Any],
    around: tuple[float | None, float | None],
    statistics: str,
    config: TrainConfig,
) -> dict[str, Any]:
    """The summary's fields about how the run went.

    ``around`` is the test score (accuracy, or macro AUROC for multi-label
    data) with the moving averages and with the recalibrated statistics (both
    None when recalibration is off); the one ``statistics`` names is the
    final one.
    """
    metric = "macro_auroc" if evaluation.get("multi_label") else "accuracy"
    val_metric = "val_auroc" if evaluation.get("multi_label") else "val_accuracy"
    scores = {
        f"best_{val_metric}": max(history.get(val_metric, [float("nan")])),
        f"test_{metric}": primary_score(evaluation),
        f"test_{metric}_before_recalibration": around[0],
        f"test_{metric}_after_recalibration": around[1],
    }
    if evaluation.get("multi_label"):
        per_label = evaluation["per_label"]
        scores["multi_label"] = True
        scores["test_auroc"] = {name: s["auroc"] for name, s in per_label.items()}
        scores["thresholds"] = {name: s["threshold"] for name, s in per_label.items()}
    return {
        "preset": config.preset,
        "dataset": config.dataset,
        "epochs": len(history["epoch"]),
        "final": {k: v[-1] for k, v in history.items() if k != "epoch"},
        **scores,
        "bn_statistics": statistics,
        "bn_recalibrate_steps": config.bn_recalibrate_steps,
        "bn_momentum": config.bn_momentum,
    }


__all__ = ["choose_thresholds", "finish_run", "recalibrate_best"]
