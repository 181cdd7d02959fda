"""Functional-API DenseNet builders.

``build_densenet`` follows ``keras.applications`` conventions for
``include_top``, ``pooling``, ``input_shape``, ``classifier_activation`` and
``weights``, and names its layers as ``keras.applications`` does, so the
published ImageNet weights load into the ImageNet presets.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import keras

from keras_densenet._validation import check_positive_int
from keras_densenet.architecture import (
    BN_EPSILON,
    BN_MOMENTUM,
    MAX_CLASSES,
    POOLINGS,
    TORCH_BN_EPSILON,
    blocks_from_depth,
    check_bn_epsilon,
    check_bn_momentum,
    min_input_size,
    model_name,
    resolve_config,
)
from keras_densenet.heads import classifier_head
from keras_densenet.layers import DenseBlock, TransitionLayer
from keras_densenet.normalization import BatchNormalization
from keras_densenet.presets import CIFAR_STEM, PRESETS


def _check_head(
    include_top: bool,
    pooling: Any,
    num_classes: Any,
    classifier_activation: Any,
    feature_outputs: bool = False,
) -> None:
    if not isinstance(include_top, bool):
        raise TypeError(f"`include_top` must be a bool, got {include_top!r}.")
    if pooling not in POOLINGS:
        raise ValueError(f"`pooling` must be one of {POOLINGS}, got {pooling!r}.")
    if not isinstance(feature_outputs, bool):
        raise TypeError(f"`feature_outputs` must be True or False, got {feature_outputs!r}.")
    if feature_outputs and (include_top or pooling is not None):
        raise ValueError(
            "`feature_outputs=True` returns the dense blocks' feature maps: it needs "
            f"`include_top=False` and `pooling=None`, got include_top={include_top}, "
            f"pooling={pooling!r}."
        )
    if include_top:
        check_positive_int("num_classes", num_classes, MAX_CLASSES)
        try:
            keras.activations.get(classifier_activation)
        except (ValueError, TypeError) as err:
            raise ValueError(
                f"`classifier_activation` must be a Keras activation name, callable or None, "
                f"got {classifier_activation!r}."
            ) from err


#: File endings of PyTorch checkpoints `build_densenet` accepts as ``weights``.
TORCH_WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


#: What a missing ``weights`` file is answered with: nothing is downloaded.
WEIGHTS_HINT = (
    "nothing is downloaded: on a machine with internet get keras.applications' file (e.g. "
    "densenet121_weights_tf_dim_ordering_tf_kernels.h5 from "
    "https://storage.googleapis.com/tensorflow/keras-applications/densenet/) or torchvision's "
    "(e.g. densenet121-a639ec97.pth from https://download.pytorch.org/models/), copy it here "
    "and pass its path"
)


def is_torch_weights(weights: Any) -> bool:
    """Whether ``weights`` names a PyTorch checkpoint (by its file ending)."""
    return isinstance(weights, (str, os.PathLike)) and os.fspath(weights).endswith(
        TORCH_WEIGHT_SUFFIXES
    )


def _check_weights(weights: Any) -> None:
    if weights is None:
        return
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(f"`weights` must be None or a path to a weights file, got {weights!r}.")
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise ValueError(f"`weights` file not found: {path!r}; {WEIGHTS_HINT}.")
    if not (path.endswith(".h5") or is_torch_weights(path)):
        raise ValueError(
            f"`weights` must be a Keras `.weights.h5` file, a keras.applications legacy `.h5` "
            f"file or a PyTorch checkpoint ({', '.join(TORCH_WEIGHT_SUFFIXES)}), got {path!r}."
        )


def _check_normalization(
    normalization: Any, channels: int
) -> tuple[list[float], list[float]] | None:
    if normalization is None:
        return None
    if isinstance(normalization, str):
        if normalization != "imagenet":
            raise ValueError(
                f"`normalization` must be (mean, std) or 'imagenet', got {normalization!r}."
            )
        from keras_densenet.preprocessing import imagenet_normalization

        normalization = imagenet_normalization()
    try:
        mean, std = ([float(v) for v in part] for part in normalization)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"`normalization` must be a (mean, std) pair of per-channel sequences, got "
            f"{normalization!r}."
        ) from err
    if len(mean) != channels or len(std) != channels or min(std) <= 0:
        raise ValueError(
            f"`normalization` needs {channels} means and {channels} positive stds (one per "
            f"input channel), got mean={mean}, std={std}."
        )
    return mean, std


def build_densenet(
    preset: str | None = None,
    *,
    blocks: Sequence[int] | None = None,
    depth: int | None = None,
    growth_rate: int | None = None,
    compression: float | None = None,
    bottleneck: bool | None = None,
    bottleneck_width: int | None = None,
    num_init_features: int | None = None,
    stem: str | None = None,
    dropout_rate: float | None = None,
    memory_efficient: bool = False,
    bn_momentum: float = BN_MOMENTUM,
    bn_epsilon: float | None = None,
    input_shape: tuple[int | None, int | None, int] | None = None,
    include_top: bool = True,
    pooling: str | None = None,
    num_classes: int | None = None,
    classifier_activation: Any = "softmax",
    weights: str | os.PathLike | None = None,
    kernel_regularizer: Any = None,
    normalization: tuple[Sequence[float], Sequence[float]] | str | None = None,
    feature_outputs: bool = False,
    name: str | None = None,
) -> keras.Model:
    """Builds a DenseNet (Huang et al., CVPR 2017) with the functional API.

    A preset fills defaults; any explicit keyword argument overrides it.
    ``depth`` selects the paper's 3-block CIFAR layout; ``blocks`` any layout.

    Args:
        preset: A name in `PRESETS`, e.g. ``"densenet121"`` or
            ``"densenet_bc_100_12"``, or None.
        blocks: Layers per dense block, e.g. ``(6, 12, 24, 16)``.
        depth: Total depth L of the 3-block layout: ``(L-4)/6`` layers per
            block with bottlenecks, ``(L-4)/3`` without.
        growth_rate: Growth rate k (default 32).
        compression: Transition compression theta in (0, 1] (default 0.5).
        bottleneck: Use 1x1 bottleneck convolutions (default True).
        bottleneck_width: Bottleneck width as a multiple of k (default 4).
        num_init_features: Stem output channels (default 64 for the ImageNet
            stem, 2k for the CIFAR stem).
        stem: ``"imagenet"`` (7x7/2 conv, BN-ReLU, 3x3/2 max pool, padded
            symmetrically) or ``"cifar"`` (one 3x3 conv). Defaults to
            ``"cifar"`` for a ``depth`` layout, else ``"imagenet"``.
        dropout_rate: Dropout after each convolution, in [0, 1) (default 0).
        memory_efficient: Recompute each dense layer in the backward pass
            (only its new maps are kept) to save training memory.
        bn_momentum: Momentum of every BatchNormalization's moving
            statistics, in [0, 1) (Keras convention; default 0.9, PyTorch's
            0.1). keras.applications uses 0.99, which after a short run
            leaves the statistics of the untrained network; momentum does
            not change inference, so its weights give identical outputs.
        bn_epsilon: Epsilon of every BatchNormalization (default
            keras.applications' 1.001e-5, or PyTorch's 1e-5 when ``weights``
            is a PyTorch checkpoint).
        input_shape: ``(height, width, channels)``; None dims allowed. Default
            ``(224, 224, 3)`` (ImageNet stem) or ``(32, 32, 3)`` (CIFAR stem).
        include_top: Add global average pooling and the classifier.
        pooling: Without the top: None (4D features), ``"avg"`` or ``"max"``.
        num_classes: Classifier outputs (default: the preset's, else 1000 for
            the ImageNet stem and 10 for the CIFAR stem).
        classifier_activation: Activation of the classifier; it always
            computes in float32 so mixed precision gives float32 outputs.
        weights: None, a Keras ``.weights.h5`` file, a keras.applications
            legacy ``.h5`` weights file (loaded by layer name), or a PyTorch
            checkpoint of torchvision's or timm's DenseNet (``.pth``,
            ``.pt``, ``.bin`` or ``.safetensors``; see
            `keras_densenet.weights.load_torch_weights`).
        kernel_regularizer: Optional regularizer for every convolution kernel.
        normalization: Optional per-channel ``(mean, std)`` of the training
            data; the model then normalizes raw pixel values itself with a
            ``keras.layers.Normalization`` layer named ``"normalization"``, so
            saved and exported models need no outside preprocessing.
            ``"imagenet"`` is ImageNet's mean and std, what the pretrained
            keras.applications, torchvision and timm weights expect (see
            `keras_densenet.preprocessing`).
        feature_outputs: Output a dict of every dense block's features, for
            a detection or segmentation head: ``{"P2": ..., "P5": ...}`` at
            strides 4, 8, 16, 32 for the ImageNet stem (keras-hub's
            ``pyramid_outputs`` names; ``P<log2 stride>`` in general, so the
            3-block CIFAR stem gives P0, P1, P2). Needs ``include_top=False``
            and no ``pooling``.
        name: Model name (default: what was built, e.g. ``"densenet121"`` or
            ``"densenet_bc_40_12"``; see `keras_densenet.presets.model_name`).

    Returns:
        An uncompiled ``keras.Model``.

    Raises:
        ValueError: For an unknown preset, an argument out of range, an input
            shape that is NCHW-looking or too small, or a missing weights file.
        TypeError: For an argument of the wrong type.

    Example:
        >>> model = build_densenet("densenet_bc_100_12", input_shape=(28, 28, 1))
        >>> model.output_shape
        (None, 10)
    """
    config = resolve_config(
        preset,
        blocks=blocks,
        depth=depth,
        growth_rate=growth_rate,
        compression=compression,
        bottleneck=bottleneck,
        bottleneck_width=bottleneck_width,
        num_init_features=num_init_features,
        stem=stem,
        dropout_rate=dropout_rate,
        input_shape=input_shape,
        num_classes=num_classes,
    )
    _check_head(include_top, pooling, config["num_classes"], classifier_activation, feature_outputs)
    bn_momentum = check_bn_momentum(bn_momentum)
    if bn_epsilon is None:  # PyTorch checkpoints were trained with PyTorch's epsilon
        bn_epsilon = TORCH_BN_EPSILON if is_torch_weights(weights) else BN_EPSILON
    bn_epsilon = check_bn_epsilon(bn_epsilon)
    _check_weights(weights)
    norm = _check_normalization(normalization, config["input_shape"][-1])

    inputs = keras.Input(shape=config["input_shape"], name="image")
    x = inputs
    if norm is not None:
        mean, std = norm
        x = keras.layers.Normalization(
            axis=-1, mean=mean, variance=[s * s for s in std], name="normalization"
        )(x)
    x = _stem(x, config, kernel_regularizer, bn_momentum, bn_epsilon)
    x, pyramid = _dense_blocks(
        x,
        config,
        memory_efficient=memory_efficient,
        bn_momentum=bn_momentum,
        bn_epsilon=bn_epsilon,
        kernel_regularizer=kernel_regularizer,
    )
    x = _head(x, include_top, pooling, config["num_classes"], classifier_activation)
    outputs = pyramid if feature_outputs else x
    model = keras.Model(inputs, outputs, name=name or model_name(config, preset))

    if weights is not None:
        from keras_densenet.weights import load_weights

        load_weights(model, weights)
    return model


def _stem(
    inputs: Any,
    config: dict[str, Any],
    kernel_regularizer: Any,
    bn_momentum: float,
    bn_epsilon: float,
) -> Any:
    conv_args = {
        "use_bias": False,
        "kernel_initializer": "he_normal",
        "kernel_regularizer": kernel_regularizer,
        "name": "conv1_conv",
    }
    features = config["num_init_features"]
    if config["stem"] == CIFAR_STEM:
        return keras.layers.Conv2D(features, 3, padding="same", **conv_args)(inputs)
    x = keras.layers.ZeroPadding2D(3, name="conv1_pad")(inputs)
    x = keras.layers.Conv2D(features, 7, strides=2, **conv_args)(x)
    x = BatchNormalization(epsilon=bn_epsilon, momentum=bn_momentum, name="conv1_bn")(x)
    x = keras.layers.Activation("relu", name="conv1_relu")(x)
    x = keras.layers.ZeroPadding2D(1, name="pool1_pad")(x)
    return keras.layers.MaxPooling2D(3, strides=2, name="pool1")(x)


def _dense_blocks(
    x: Any,
    config: dict[str, Any],
    *,
    memory_efficient: bool,
    bn_momentum: float,
    bn_epsilon: float,
    kernel_regularizer: Any,
) -> tuple[Any, dict[str, Any]]:
    """The dense blocks and transitions, then the final BN-ReLU.

    Returns:
        The features and every block's output by keras-hub's pyramid name
        (``P<log2 stride>``).
    """
    block_args = {
        "growth_rate": config["growth_rate"],
        "bottleneck": config["bottleneck"],
        "bottleneck_width": config["bottleneck_width"],
        "dropout_rate": config["dropout_rate"],
        "memory_efficient": memory_efficient,
        "bn_momentum": bn_momentum,
        "bn_epsilon": bn_epsilon,
        "kernel_regularizer": kernel_regularizer,
    }
    pyramid = {}
    stride = 4 if config["stem"] != CIFAR_STEM else 1
    for i, num_layers in enumerate(config["blocks"]):
        x = DenseBlock(num_layers, name=f"conv{i + 2}", **block_args)(x)
        pyramid[f"P{stride.bit_length() - 1}"] = x
        stride *= 2
        if i < len(config["blocks"]) - 1:
            x = TransitionLayer(
                config["compression"],
                dropout_rate=config["dropout_rate"],
                bn_momentum=bn_momentum,
                bn_epsilon=bn_epsilon,
                kernel_regularizer=kernel_regularizer,
                name=f"pool{i + 2}",
            )(x)
    x = BatchNormalization(epsilon=bn_epsilon, momentum=bn_momentum, name="bn")(x)
    return keras.layers.Activation("relu", name="relu")(x), pyramid


def _head(x: Any, include_top: bool, pooling: str | None, num_classes: int, activation: Any) -> Any:
    """keras.applications' top: the classifier, or global pooling, or nothing."""
    if include_top:
        return classifier_head(x, num_classes, activation=activation)
    if pooling == "avg":
        return keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if pooling == "max":
        return keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
    return x


def build_backbone(
    preset: str | None = None,
    *,
    weights: str | os.PathLike | None = None,
    name: str | None = None,
    **kwargs: Any,
) -> keras.Model:
    """A DenseNet backbone: images to the final BN-ReLU features, for a task head.

    `build_densenet` without a top: the same architecture arguments, the
    same layer names. Put a head on it with
    `keras_densenet.heads.build_classifier`; its dense blocks' outputs are
    `keras_densenet.heads.pyramid_outputs`.

    Args:
        preset: A name in `PRESETS`, or None with ``blocks``/``depth``.
        weights: None, or pretrained weights for the backbone alone (any
            source `keras_densenet.weights.load_backbone_weights` reads:
            keras.applications, torchvision, timm, keras-hub, a ``.keras``
            file or a run directory); a classifier in the file is ignored.
        name: Model name (default: what was built, plus ``_backbone``).
        **kwargs: `build_densenet`'s architecture, input and normalization
            arguments (``blocks``, ``growth_rate``, ``input_shape``,
            ``normalization``, ``memory_efficient``, ``bn_epsilon``, ...).

    Returns:
        An uncompiled ``keras.Model`` with a 4D output.

    Raises:
        TypeError: For a head argument (``include_top``, ``pooling``,
            ``num_classes``, ``classifier_activation``, ``feature_outputs``)
            or an argument of the wrong type.
        ValueError: As `build_densenet`, and for weights that do not fit the
            backbone (nothing is loaded then).
    """
    head = sorted(set(kwargs) & _HEAD_ARGUMENTS)
    if head:
        raise TypeError(
            f"build_backbone() takes no head arguments, got {head}: put a head on the "
            "backbone with keras_densenet.heads.build_classifier."
        )
    if weights is not None and kwargs.get("bn_epsilon") is None and is_torch_weights(weights):
        kwargs["bn_epsilon"] = TORCH_BN_EPSILON  # PyTorch's BatchNorm epsilon
    model = build_densenet(preset, include_top=False, **kwargs)
    model.name = name or f"{model.name}_backbone"
    if weights is not None:
        from keras_densenet.weights import load_backbone_weights

        load_backbone_weights(model, weights)
    return model


_HEAD_ARGUMENTS = frozenset(
    {"include_top", "pooling", "num_classes", "classifier_activation", "feature_outputs"}
)


__all__ = [
    "POOLINGS",
    "PRESETS",
    "blocks_from_depth",
    "build_backbone",
    "build_densenet",
    "min_input_size",
    "resolve_config",
]
