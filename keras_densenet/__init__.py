"""keras_densenet: DenseNets (Huang et al., CVPR 2017) for Keras 3.

``import keras_densenet`` registers the layers with Keras, so saved models load
with ``keras.saving.load_model`` and no ``custom_objects``. The names below are
imported from their modules on first use; the ``keras-densenet`` command
imports Keras and TensorFlow only when a sub-command runs, so ``--help`` and
argument errors answer at once.

Example:
    >>> from keras_densenet import build_densenet
    >>> model = build_densenet("densenet_bc_100_12", input_shape=(28, 28, 1))
"""

from __future__ import annotations

from keras_densenet._lazy import lazy_exports
from keras_densenet._startup import is_command_line, quiet_native_stderr

__version__ = "0.2.0"

# Public name -> the module that defines it.
_EXPORTS = {
    "DenseBlock": "layers",
    "DenseLayer": "layers",
    "TransitionLayer": "layers",
    "build_densenet": "models",
    "PRESETS": "presets",
    "densenet121": "presets",
    "densenet161": "presets",
    "densenet169": "presets",
    "densenet201": "presets",
    "densenet264": "presets",
    "densenet_40_12": "presets",
    "densenet_bc_100_12": "presets",
    "densenet_bc_190_40": "presets",
    "densenet_bc_250_24": "presets",
    "BatchNormRecalibration": "batchnorm",
    "recalibrate_batchnorm": "batchnorm",
    "load_keras_applications_weights": "weights",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)

if not is_command_line():
    with quiet_native_stderr():
        from keras_densenet import layers, losses  # noqa: F401  (registers them with Keras)
