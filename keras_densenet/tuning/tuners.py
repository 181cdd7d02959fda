"""KerasTuner's three tuners with pruning-aware oracles and a record of each trial.

Every override of a KerasTuner internal (a method whose name starts with an
underscore) lives in this file; they were written against keras-tuner 1.4.8,
the version ``setup.cfg`` pins.
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Any

import keras
import keras_tuner

from keras_densenet._io import write_json
from keras_densenet.tuning.hypermodel import DenseNetHyperModel, PrunedTrialError
from keras_densenet.tuning.space import TUNERS

#: KerasTuner's project folder inside the tuning directory.
PROJECT_NAME = "search"
#: What each trial records next to KerasTuner's ``trial.json``.
TRIAL_INFO = "densenet_trial.json"
#: The keras-tuner version these overrides were written against.
KERAS_TUNER_VERSION = "1.4.8"


def is_pruned(trial: Any) -> bool:
    """Whether a trial was pruned for its parameter budget (not a crash)."""
    return PrunedTrialError.__name__ in (trial.message or "")


class _PruneAwareOracle:
    """Counts only real crashes, not pruned trials, as consecutive failures."""

    def _check_consecutive_failures(self) -> None:
        consecutive = 0
        for trial_id in self.end_order:
            trial = self.trials[trial_id]
            if trial.status == "FAILED":
                if is_pruned(trial):
                    continue  # cheap and expected: neither counts nor resets
                consecutive += 1
            else:
                consecutive = 0
            if consecutive == self.max_consecutive_failed_trials:
                raise RuntimeError(
                    f"Number of consecutive failures exceeded the limit of "
                    f"{self.max_consecutive_failed_trials}.\n{trial.message or ''}"
                )


class _HyperbandOracle(_PruneAwareOracle, keras_tuner.oracles.HyperbandOracle):
    def __init__(self, *, max_trials: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_trials = max_trials  # Hyperband has no cap of its own


class _RandomSearchOracle(_PruneAwareOracle, keras_tuner.oracles.RandomSearchOracle):
    pass


class _BayesianOracle(_PruneAwareOracle, keras_tuner.oracles.BayesianOptimizationOracle):
    pass


class _DenseNetTuner:
    """Tuner mixin: cheap space declaration, and a record of each trial."""

    def __init__(self, oracle: Any, hypermodel: DenseNetHyperModel, **kwargs: Any) -> None:
        # The KerasTuner subclasses only build their oracle in __init__; ours
        # is built by `make_tuner`, so go straight to the base Tuner.
        keras_tuner.Tuner.__init__(self, oracle=oracle, hypermodel=hypermodel, **kwargs)

    def _populate_initial_space(self) -> None:
        # KerasTuner builds a whole model here to discover the space; the
        # space has no conditional parts, so declaring it is enough.
        hp = self.oracle.get_space()
        self.hypermodel.declare_hyperparameters(hp)
        self.oracle.update_space(hp)

    def _build_hypermodel(self, hp: Any) -> keras.Model:
        # Checkpoints hold SGD's slots but a new model's optimizer is unbuilt:
        # Keras warns and skips them, which is what a fresh schedule wants.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            return super()._build_hypermodel(hp)

    def load_model(self, trial: Any) -> keras.Model:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            model = super().load_model(trial)
        # Load again into a built optimizer, so the trained SGD state (momentum,
        # step count) comes along and a saved model reloads without warnings.
        with keras_tuner.engine.tuner.maybe_distribute(self.distribution_strategy):
            model.optimizer.build(model.trainable_variables)
            model.load_weights(self._get_checkpoint_fname(trial.trial_id))
        return model

    def _try_run_and_update_trial(self, trial: Any, *args: Any, **kwargs: Any) -> None:
        # Prune here, before KerasTuner clears the session and collects garbage
        # for a build (about a second) and prints the traceback of every failed
        # trial; the oracle still gets a FAILED trial, as from FailedTrialError.
        started = time.perf_counter()
        try:
            self.hypermodel.check_budget(trial.hyperparameters)
        except PrunedTrialError as err:
            trial.status = keras_tuner.engine.trial.TrialStatus.FAILED
            trial.message = f"{type(err).__module__}.{type(err).__name__}: {err}"
            info = {"tuner_id": self.tuner_id, "time_s": round(time.perf_counter() - started, 3)}
            write_json(os.path.join(self.get_trial_dir(trial.trial_id), TRIAL_INFO), info)
            if getattr(self.oracle, "verbose", 1):  # a worker's oracle client has none
                print(f"Trial {trial.trial_id} {err}")
            return
        super()._try_run_and_update_trial(trial, *args, **kwargs)

    def run_trial(self, trial: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        info: dict[str, Any] = {"tuner_id": self.tuner_id}
        try:
            results = super().run_trial(trial, *args, **kwargs)
            epochs = [h.epoch[-1] + 1 for h in results if getattr(h, "epoch", None)]
            info["epochs"] = max(epochs) if epochs else None
            return results
        finally:
            info["time_s"] = round(time.perf_counter() - started, 3)
            write_json(os.path.join(self.get_trial_dir(trial.trial_id), TRIAL_INFO), info)


class _Hyperband(_DenseNetTuner, keras_tuner.Hyperband):
    pass


class _RandomSearch(_DenseNetTuner, keras_tuner.RandomSearch):
    pass


class _Bayesian(_DenseNetTuner, keras_tuner.BayesianOptimization):
    pass


def check_search_args(
    tuner: Any, max_trials: Any, max_epochs: Any, factor: Any, max_failures: Any
) -> None:
    if tuner not in TUNERS:
        raise ValueError(f"`tuner` must be one of {TUNERS}, got {tuner!r}.")
    for name, value, low in (
        ("max_trials", max_trials, 1),
        ("max_epochs", max_epochs, 1),
        ("factor", factor, 2),
        ("max_consecutive_failed_trials", max_failures, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"`{name}` must be an integer >= {low}, got {value!r}.")


def make_tuner(
    hypermodel: DenseNetHyperModel,
    tuner: str = "hyperband",
    *,
    max_trials: int = 10,
    max_epochs: int = 20,
    factor: int = 3,
    directory: str | os.PathLike = "tuning/default",
    overwrite: bool = False,
    seed: int | None = None,
    max_consecutive_failed_trials: int = 3,
) -> keras_tuner.Tuner:
    """Creates a KerasTuner tuner for a `DenseNetHyperModel`.

    Args:
        hypermodel: The search space.
        tuner: ``"hyperband"``, ``"bayesian"`` or ``"random"``.
        max_trials: Most trials to run (Hyperband stops after this many too).
        max_epochs: Hyperband's largest number of epochs per model.
        factor: Hyperband's reduction factor (>= 2).
        directory: Where KerasTuner keeps its project (``directory/search``).
        overwrite: Start afresh instead of reloading an existing project.
        seed: The oracle's random seed.
        max_consecutive_failed_trials: Crashed trials in a row (pruned ones
            not counted) that stop the search.

    Returns:
        The tuner (a subclass of ``keras_tuner.Hyperband``,
        ``BayesianOptimization`` or ``RandomSearch``).

    Raises:
        ValueError: For an unknown tuner or a bad count.
    """
    check_search_args(tuner, max_trials, max_epochs, factor, max_consecutive_failed_trials)
    common = {
        "objective": keras_tuner.Objective(hypermodel.objective, direction="max"),
        "seed": seed,
        "max_consecutive_failed_trials": max_consecutive_failed_trials,
    }
    if tuner == "hyperband":
        oracle = _HyperbandOracle(
            max_trials=max_trials, max_epochs=max_epochs, factor=factor, **common
        )
        cls: type = _Hyperband
    elif tuner == "bayesian":
        oracle, cls = _BayesianOracle(max_trials=max_trials, **common), _Bayesian
    else:
        oracle, cls = _RandomSearchOracle(max_trials=max_trials, **common), _RandomSearch
    return cls(
        oracle,
        hypermodel,
        directory=os.fspath(directory),
        project_name=PROJECT_NAME,
        overwrite=overwrite,
        distribution_strategy=hypermodel.strategy,
    )


__all__ = ["KERAS_TUNER_VERSION", "PROJECT_NAME", "TRIAL_INFO", "is_pruned", "make_tuner"]
