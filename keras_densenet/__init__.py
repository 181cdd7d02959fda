"""keras_densenet: DenseNets (Huang et al., CVPR 2017) for Keras 3.

Example:
    >>> from keras_densenet import build_densenet
    >>> model = build_densenet("densenet_bc_100_12", input_shape=(28, 28, 1))
"""

from keras_densenet._startup import quiet_native_stderr

with quiet_native_stderr():
    import keras  # noqa: F401  (TensorFlow's import banner goes here)

from keras_densenet.layers import DenseBlock, DenseLayer, TransitionLayer
from keras_densenet.models import (
    PRESETS,
    build_densenet,
    densenet121,
    densenet169,
    densenet201,
    densenet264,
    densenet_bc_100_12,
    densenet_bc_190_40,
    densenet_bc_250_24,
)
from keras_densenet.weights import load_keras_applications_weights

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "DenseBlock",
    "DenseLayer",
    "TransitionLayer",
    "build_densenet",
    "densenet121",
    "densenet169",
    "densenet201",
    "densenet264",
    "densenet_bc_100_12",
    "densenet_bc_190_40",
    "densenet_bc_250_24",
    "load_keras_applications_weights",
]
