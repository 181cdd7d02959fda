"""`tune`: a whole search, resumable, in one locked tuning directory.

Leaves in ``out``::

    tuning/x/
      .lock                      # held by the chief (or the lone process)
      search/                    # KerasTuner's project: oracle.json, trial_*/
      tune_config.json           # what was asked (a restart must ask the same)
      results.csv  results.json  # every trial, ranked best first
      accuracy_vs_params.png     # validation accuracy against trainable params
      best_config.json           # a TrainConfig dict: keras-densenet train --config
      best.keras                 # the best trial's model, BN statistics recalibrated
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import keras_tuner

from keras_densenet import _io, rundir
from keras_densenet._io import write_json
from keras_densenet.architecture import resolve_config
from keras_densenet.batchnorm import recalibrate_batchnorm
from keras_densenet.training import TrainConfig, make_strategy
from keras_densenet.tuning.hypermodel import DenseNetHyperModel
from keras_densenet.tuning.results import collect_results, plot_results, write_results
from keras_densenet.tuning.space import search_role
from keras_densenet.tuning.tuners import PROJECT_NAME, check_search_args, make_tuner

#: What was asked for, in the tuning directory.
TUNE_CONFIG = rundir.TUNING_MARKER


#: Search options a resumed search may change (it may run more trials).
_RESUMABLE_CHANGES = frozenset({"max_trials"})


def _prepare_out(out: str, record: dict[str, Any], overwrite: bool) -> None:
    rundir.check_tuning_dir(out)
    path = os.path.join(out, TUNE_CONFIG)
    previous = None
    if not overwrite and os.path.exists(path):
        previous = _io.read_json(path, "tuning config")
        if not isinstance(previous, dict):
            raise ValueError(
                f"The tuning config {path!r} must hold a JSON object: it is corrupted; restore it "
                "or pass `overwrite=True`."
            )
    has_project = os.path.exists(os.path.join(out, PROJECT_NAME, "oracle.json"))
    if previous is None and has_project and not overwrite:
        raise ValueError(
            f"`out` {out!r} holds a search without {TUNE_CONFIG}: pass `overwrite=True` "
            "or choose another directory."
        )
    if previous is not None:
        if isinstance(previous.get("base"), dict):  # written before `out` was left out
            previous["base"].pop("out", None)
        # Anything but more trials would mix two different searches in one oracle.
        now = json.loads(json.dumps(record, default=str))
        changed = rundir.option_changes(previous, now, _RESUMABLE_CHANGES)
        if changed:
            raise ValueError(
                f"`out` {out!r} holds a search with other options; resume it with the same "
                f"ones, or pass `overwrite=True`. Differences (was, now): {changed}."
            )
    write_json(path, record)


def tune(
    base: TrainConfig | Mapping[str, Any] | None = None,
    *,
    tuner: str = "hyperband",
    max_trials: int = 10,
    max_epochs: int = 20,
    factor: int = 3,
    ranges: Mapping[str, Any] | None = None,
    fixed: Mapping[str, Any] | None = None,
    max_params: int | None = None,
    out: str | os.PathLike = "tuning/default",
    overwrite: bool = False,
    callbacks: Sequence[keras.callbacks.Callback] | None = None,
    max_consecutive_failed_trials: int = 3,
) -> dict[str, Any]:
    """Searches DenseNet architectures and training settings with KerasTuner.

    Args:
        base: Training options (`TrainConfig` or dict) shared by all trials:
            dataset, batch size, precision, XLA, ``steps_per_epoch``, seed...
            Its ``epochs`` is replaced by ``max_epochs``.
        tuner: ``"hyperband"`` (default), ``"bayesian"`` or ``"random"``.
        max_trials: Most trials to run.
        max_epochs: Epochs per trial (Hyperband: the most for one model).
        factor: Hyperband's reduction factor.
        ranges: Search ranges (see `DenseNetHyperModel`).
        fixed: Values held fixed (see `DenseNetHyperModel`).
        max_params: Optional trainable-parameter budget; larger
            configurations are pruned before they are built.
        out: The tuning directory (see the module docstring).
        overwrite: Discard an existing search in ``out`` instead of resuming.
        callbacks: Extra Keras callbacks for every trial (deep-copyable).
        max_consecutive_failed_trials: Crashed trials in a row that stop the
            search (pruned ones not counted).

    Returns:
        ``{"role", "tuner", "trials", "completed", "pruned", "failed",
        "best", "best_config", "best_model", "results_csv", "results_json",
        "plot", "out", "wall_time_s"}``; a distributed worker returns only
        ``role``, ``tuner_id``, ``out`` and ``wall_time_s``.

    Raises:
        ValueError: For bad options, a dataset that cannot be found, a search
            space whose models do not fit the data, or an ``out`` holding a
            search with other options.
    """
    started = time.perf_counter()
    role = search_role()
    out = os.fspath(out)
    if not out:
        raise ValueError("`out` must name a tuning directory.")
    if base is None:
        base = TrainConfig()
    elif not isinstance(base, TrainConfig):
        if not isinstance(base, Mapping):
            raise ValueError(f"`base` must be a TrainConfig, a dict or None, got {base!r}.")
        base = TrainConfig.from_dict(base)
    check_search_args(tuner, max_trials, max_epochs, factor, max_consecutive_failed_trials)
    base = base.replace(epochs=max_epochs, out=os.path.join(out, "best_run"), resume=False)
    if base.distribute not in (None, "mirrored"):
        raise ValueError(
            f"`distribute` must be None or 'mirrored' for a search, got {base.distribute!r}; "
            "spread trials over machines with KerasTuner's chief/worker mode instead."
        )
    strategy = make_strategy(base)
    hypermodel = DenseNetHyperModel(
        base, ranges=ranges, fixed=fixed, max_params=max_params, strategy=strategy
    )
    # Fail before searching if the data is missing or the layout cannot fit it.
    info = hypermodel.data.info
    default_config = hypermodel.trial_config(keras_tuner.HyperParameters())
    resolve_config(None, **default_config.architecture(), input_shape=info.image_shape)

    record = {
        "tuner": tuner,
        "max_trials": max_trials,
        "max_epochs": max_epochs,
        "factor": factor,
        **hypermodel.describe(),
        # Not the base's `out`: it follows the tuning directory, which may be moved.
        "base": {k: v for k, v in hypermodel.base.to_dict().items() if k not in ("verbose", "out")},
    }
    with contextlib.ExitStack() as stack:
        if role != "worker":  # the chief (or a lone process) owns the directory
            rundir.ensure_writable_dir(out)
            stack.enter_context(rundir.lock(out, "tuning directory"))
            _prepare_out(out, record, overwrite)
        return _search(
            hypermodel,
            role,
            started,
            callbacks,
            tuner=tuner,
            max_trials=max_trials,
            max_epochs=max_epochs,
            factor=factor,
            max_params=max_params,
            out=out,
            overwrite=overwrite,
            max_consecutive_failed_trials=max_consecutive_failed_trials,
        )


def _write_best(
    search: Any, hypermodel: DenseNetHyperModel, best: dict[str, Any], out: str
) -> tuple[str, str]:
    """Writes best_config.json and best.keras (recalibrated); returns their paths."""
    base = hypermodel.base
    trial = search.oracle.get_trial(best["trial_id"])
    config = hypermodel.trial_config(trial.hyperparameters.copy())
    if not config.verbose:  # a quiet search should not give a silent training run
        config = config.replace(verbose=1)
    best_config_path = os.path.join(out, "best_config.json")
    write_json(best_config_path, config.to_dict())
    best_model_path = os.path.join(out, "best.keras")
    best_model = search.load_model(trial)
    if base.bn_recalibrate_steps:
        recalibrate_batchnorm(best_model, hypermodel.data.recalibration, base.bn_recalibrate_steps)
    _io.save_model(best_model, best_model_path)
    return best_config_path, best_model_path


def _search(
    hypermodel: DenseNetHyperModel,
    role: str,
    started: float,
    callbacks: Sequence[keras.callbacks.Callback] | None,
    *,
    tuner: str,
    max_trials: int,
    max_epochs: int,
    factor: int,
    max_params: int | None,
    out: str,
    overwrite: bool,
    max_consecutive_failed_trials: int,
) -> dict[str, Any]:
    """Runs the search and, on the chief, writes results, plot and the best model."""
    base = hypermodel.base
    search = make_tuner(
        hypermodel,
        tuner,
        max_trials=max_trials,
        max_epochs=max_epochs,
        factor=factor,
        directory=out,
        overwrite=overwrite and role != "worker",
        seed=base.seed,
        max_consecutive_failed_trials=max_consecutive_failed_trials,
    )
    search.search(callbacks=list(callbacks or []), verbose=base.verbose)
    if role == "worker":
        return {
            "role": role,
            "tuner_id": search.tuner_id,
            "out": out,
            "wall_time_s": round(time.perf_counter() - started, 2),
        }

    rows = collect_results(search, hypermodel)
    csv_path, json_path = write_results(rows, out)
    plot_path = plot_results(
        rows,
        os.path.join(out, "accuracy_vs_params.png"),
        max_params=max_params,
        title=f"{tuner} search on {base.dataset}: {len(rows)} trials",
    )
    best = rows[0] if rows and rows[0]["status"] == "COMPLETED" else None
    best_config_path = best_model_path = None
    if best is not None:
        best_config_path, best_model_path = _write_best(search, hypermodel, best, out)
    return {
        "role": role,
        "tuner": tuner,
        "trials": len(rows),
        "completed": sum(r["status"] == "COMPLETED" for r in rows),
        "pruned": sum(r["status"] == "PRUNED" for r in rows),
        "failed": sum(r["status"] not in ("COMPLETED", "PRUNED") for r in rows),
        "best": best,
        "best_config": best_config_path,
        "best_model": best_model_path,
        "results_csv": csv_path,
        "results_json": json_path,
        "plot": plot_path,
        "out": out,
        "wall_time_s": round(time.perf_counter() - started, 2),
    }


__all__ = ["tune"]
