"""Training: ``model.fit`` with the paper's recipe, into a run directory.

`train` builds a DenseNet from a preset (its input shape and number of classes
from the dataset unless given), compiles it with SGD + Nesterov momentum, the
paper's step schedule and decoupled weight decay on kernels, and runs
``model.fit`` with Keras callbacks. Everything lands in one run directory
(see `keras_densenet.rundir` for its layout).

Modules: `config` (`TrainConfig`, every option with its rule), `recipe`
(optimizer, schedules, precision, XLA, distribution), `callbacks` (atomic
checkpoints, throughput) and `loop` (`train` and its data and model).

Example:
    >>> summary = train({"dataset": "fashion_mnist_sample", "epochs": 2, "out": "runs/x"})
    >>> summary["test_accuracy"]
"""

from keras_densenet._lazy import lazy_exports

# Public name -> the module that defines it (imported on first use).
_EXPORTS = {
    "AtomicBackupAndRestore": "callbacks",
    "AtomicModelCheckpoint": "callbacks",
    "DISTRIBUTE": "config",
    "JIT_MODES": "config",
    "LinearWarmup": "recipe",
    "RUN_MODELS": "keras_densenet.rundir:MODELS",
    "OPTIONS": "config",
    "OutOfMemoryError": "loop",
    "PRECISIONS": "config",
    "PRESETS": "keras_densenet.models",
    "REFERENCE_BATCH": "recipe",
    "SCHEDULES": "config",
    "ThroughputMeter": "callbacks",
    "TrainConfig": "config",
    "TrainingData": "data",
    "TrainingError": "loop",
    "build_training_model": "loop",
    "dtype_policy": "recipe",
    "evaluate": "keras_densenet.evaluation",
    "load_model": "keras_densenet.rundir",
    "load_training_data": "data",
    "make_optimizer": "recipe",
    "make_strategy": "recipe",
    "resolve_jit_compile": "recipe",
    "resolve_precision": "recipe",
    "train": "loop",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
