"""Hyperparameter search over DenseNet architectures with KerasTuner.

`tune` runs Hyperband (default), Bayesian optimization (which needs
scikit-learn: ``pip install 'keras-tuner[bayesian]'``) or random search over
a `DenseNetHyperModel`, whose space covers the growth rate k, the transition
compression theta, the depth of the paper's 3-block CIFAR layout (drawn as
``layers_per_block`` n, so only valid depths ``6n + 4`` with bottlenecks and
``3n + 4`` without are ever built), bottleneck on/off, dropout and the
learning rate. A trial is a short ``keras-densenet train`` run on the base
config's data, scored on recalibrated BatchNorm statistics.

Parameter budget: with ``max_params`` every configuration's trainable
parameters are counted in closed form (`count_trainable_params`, no model is
built); one over the budget is recorded as ``PRUNED`` in milliseconds and does
not count towards KerasTuner's limit of consecutive failures.

Resuming: the search state lives in ``out/search`` and is reloaded when the
same ``out`` is used again: finished trials are kept, a trial that was running
when the process died is run again. ``overwrite=True`` starts afresh.

Distributed search uses KerasTuner's own chief/worker mode: start the same
command (same ``out`` on a shared file system, same options) once as the
chief and once per worker, with these environment variables::

    KERASTUNER_ORACLE_IP=10.0.0.1 KERASTUNER_ORACLE_PORT=8000 \\
        KERASTUNER_TUNER_ID=chief keras-densenet tune ... --out /shared/tuning/x
    KERASTUNER_ORACLE_IP=10.0.0.1 KERASTUNER_ORACLE_PORT=8000 \\
        KERASTUNER_TUNER_ID=worker0 keras-densenet tune ... --out /shared/tuning/x

The chief only serves the oracle and, when the search is over, writes the
results; each worker trains trials. KerasTuner's chief checks for finished
workers every 20 seconds, so it may exit up to 20 s after the last worker.

Modules: `space` (the search space, no KerasTuner needed), `hypermodel`,
`tuners` (every KerasTuner override), `results`, `search` (`tune`).

Example:
    >>> summary = tune(
    ...     {"dataset": "fashion_mnist_sample", "steps_per_epoch": 20},
    ...     tuner="random", max_trials=4, max_epochs=2, out="tuning/x")
    >>> summary["best"]["val_accuracy"], summary["best_config"]
"""

from keras_densenet._lazy import lazy_exports

# Public name -> the module that defines it (imported on first use).
_EXPORTS = {
    "DenseNetHyperModel": "hypermodel",
    "FIXED_ONLY": "space",
    "OBJECTIVE": "space",
    "PROJECT_NAME": "tuners",
    "PrunedTrialError": "hypermodel",
    "QUICK": "space",
    "SEARCH_SPACE": "space",
    "SearchSpace": "space",
    "TRIAL_INFO": "tuners",
    "TUNERS": "space",
    "collect_results": "results",
    "count_trainable_params": "keras_densenet.architecture",
    "make_tuner": "tuners",
    "plot_results": "results",
    "tune": "search",
    "write_results": "results",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
