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

from keras_densenet.evaluation import evaluate
from keras_densenet.models import PRESETS
from keras_densenet.rundir import MODELS as RUN_MODELS
from keras_densenet.rundir import load_model
from keras_densenet.training.callbacks import (
    AtomicBackupAndRestore,
    AtomicModelCheckpoint,
    ThroughputMeter,
)
from keras_densenet.training.config import (
    DISTRIBUTE,
    JIT_MODES,
    OPTIONS,
    PRECISIONS,
    SCHEDULES,
    TrainConfig,
)
from keras_densenet.training.loop import (
    TrainingData,
    TrainingError,
    build_training_model,
    load_training_data,
    train,
)
from keras_densenet.training.recipe import (
    REFERENCE_BATCH,
    LinearWarmup,
    dtype_policy,
    make_optimizer,
    make_strategy,
    resolve_jit_compile,
)

__all__ = [
    "DISTRIBUTE",
    "JIT_MODES",
    "OPTIONS",
    "PRECISIONS",
    "PRESETS",
    "REFERENCE_BATCH",
    "RUN_MODELS",
    "SCHEDULES",
    "AtomicBackupAndRestore",
    "AtomicModelCheckpoint",
    "LinearWarmup",
    "ThroughputMeter",
    "TrainConfig",
    "TrainingData",
    "TrainingError",
    "build_training_model",
    "dtype_policy",
    "evaluate",
    "load_model",
    "load_training_data",
    "make_optimizer",
    "make_strategy",
    "resolve_jit_compile",
    "train",
]
