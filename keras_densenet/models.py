"""Functional-API DenseNet builders and their presets.

``build_densenet`` follows ``keras.applications`` conventions for
``include_top``, ``pooling``, ``input_shape``, ``classifier_activation`` and
``weights``, and names its layers as ``keras.applications`` does, so the
published ImageNet weights load into the ImageNet presets.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import keras

from keras_densenet._validation import check_int_sequence, check_positive_int, check_rate
from keras_densenet.layers import (
    BN_EPSILON,
    BN_MOMENTUM,
    DenseBlock,
    TransitionLayer,
    check_bn_momentum,
    check_compression,
)

#: Upper bounds of the architecture arguments, far above any published
#: DenseNet, so an absurd value fails with a message instead of exhausting memory.
MAX_WIDTH = 4096  # growth rate, stem features
MAX_BLOCK_LAYERS = 1000  # layers in one dense block
MAX_BLOCKS = 16  # dense blocks
MAX_CLASSES = 1_000_000
MAX_INPUT_SIDE = 16_384  # pixels

_IMAGENET = "imagenet"
_CIFAR = "cifar"
STEMS = (_IMAGENET, _CIFAR)
POOLINGS = (None, "avg", "max")


def _preset(config: dict[str, Any], description: str, **metadata: Any) -> Mapping[str, Any]:
    return MappingProxyType(
        {"config": MappingProxyType(config), "description": description, **metadata}
    )


def _imagenet(blocks: tuple[int, ...], params: int, **metadata: Any) -> Mapping[str, Any]:
    config = {
        "blocks": blocks,
        "growth_rate": 32,
        "compression": 0.5,
        "bottleneck": True,
        "num_init_features": 64,
        "stem": _IMAGENET,
        "input_shape": (224, 224, 3),
        "num_classes": 1000,
    }
    return _preset(
        config, f"ImageNet DenseNet-BC, blocks {blocks}, k=32", params=params, **metadata
    )


def _cifar(
    depth: int, growth_rate: int, trainable_params: int, **metadata: Any
) -> Mapping[str, Any]:
    config = {
        "depth": depth,
        "growth_rate": growth_rate,
        "compression": 0.5,
        "bottleneck": True,
        "num_init_features": 2 * growth_rate,
        "stem": _CIFAR,
        "input_shape": (32, 32, 3),
        "num_classes": 10,
    }
    return _preset(
        config,
        f"CIFAR DenseNet-BC (L={depth}, k={growth_rate})",
        trainable_params=trainable_params,
        **metadata,
    )


#: Name -> ``{"config": build_densenet kwargs, "description": str, ...metadata}``.
#: The counts are Keras ``count_params()`` (BN moving statistics included) for
#: ``params`` and trainable weights only for ``trainable_params``.
PRESETS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "densenet121": _imagenet(
            (6, 12, 24, 16), 8_062_504, trainable_params=7_978_856, top1_error=25.0
        ),
        "densenet169": _imagenet((6, 12, 32, 32), 14_307_880, top1_error=23.8),
        "densenet201": _imagenet((6, 12, 48, 32), 20_242_984, top1_error=22.6),
        "densenet264": _imagenet((6, 12, 64, 48), 33_736_232, trainable_params=33_337_704),
        "densenet_bc_100_12": _cifar(100, 12, 769_162, params=793_150, cifar10_error=4.51),
        "densenet_bc_250_24": _cifar(250, 24, 15_324_406, params=15_582_382, cifar10_error=3.62),
        "densenet_bc_190_40": _cifar(190, 40, 25_624_430, params=25_881_390, cifar10_error=3.46),
        "densenet_40_12": _preset(
            {
                "depth": 40,
                "growth_rate": 12,
                "compression": 1.0,
                "bottleneck": False,
                "num_init_features": 16,
                "stem": _CIFAR,
                "input_shape": (32, 32, 3),
                "num_classes": 10,
            },
            "The paper's plain DenseNet (L=40, k=12): 3x3 convolutions only, no compression",
            cifar10_error=5.24,
        ),
    }
)

_ARCH_DEFAULTS: dict[str, Any] = {
    "growth_rate": 32,
    "compression": 0.5,
    "bottleneck": True,
    "bottleneck_width": 4,
    "num_init_features": None,  # 64 for the ImageNet stem, else 2 * growth_rate
    "dropout_rate": 0.0,
    "num_classes": None,  # 1000 for the ImageNet stem, else 10
}


def blocks_from_depth(depth: int, bottleneck: bool = True) -> tuple[int, int, int]:
    """Layers per block of the paper's 3-block CIFAR layout for a depth L.

    Each block has ``(L - 4) / 6`` layers with bottlenecks (two convolutions
    per layer) and ``(L - 4) / 3`` without.

    Args:
        depth: Total depth L (convolutions and the classifier).
        bottleneck: Whether layers have the 1x1 bottleneck.

    Returns:
        The three block sizes.

    Raises:
        ValueError: If ``depth`` does not give a whole, positive number of
            layers per block.
    """
    divisor = 6 if bottleneck else 3
    if (
        isinstance(depth, bool)
        or not isinstance(depth, int)
        or depth < 4 + divisor
        or depth > 4 + divisor * MAX_BLOCK_LAYERS
        or ((depth - 4) % divisor)
    ):
        raise ValueError(
            f"`depth` must be an int with (depth - 4) divisible by {divisor}, from "
            f"{4 + divisor} to {4 + divisor * MAX_BLOCK_LAYERS} "
            f"({'with' if bottleneck else 'without'} bottleneck), e.g. {4 + 16 * divisor}; "
            f"got {depth!r}."
        )
    n = (depth - 4) // divisor
    return (n, n, n)


def _spatial_after(size: int, stem: str, num_blocks: int) -> int:
    if stem == _IMAGENET:
        size = (size - 1) // 2 + 1  # 3-pixel pad, 7x7 conv, stride 2
        size = (size - 1) // 2 + 1  # 1-pixel pad, 3x3 max pool, stride 2
    for _ in range(num_blocks - 1):
        size //= 2  # transition: 2x2 average pool, stride 2
    return size


def min_input_size(stem: str, num_blocks: int) -> int:
    """Smallest height/width that leaves a 1x1 map after every downsampling.

    Args:
        stem: ``"imagenet"`` or ``"cifar"``.
        num_blocks: Number of dense blocks.

    Returns:
        The minimum spatial size in pixels.
    """
    size = 1
    while _spatial_after(size, stem, num_blocks) < 1:
        size += 1
    return size


def _check_input_shape(input_shape: Any, stem: str, num_blocks: int) -> tuple[int | None, ...]:
    if not isinstance(input_shape, (tuple, list)) or len(input_shape) != 3:
        raise ValueError(
            f"`input_shape` must be (height, width, channels) (NHWC), got {input_shape!r}."
        )
    for dim in input_shape:
        if dim is not None and (
            isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= MAX_INPUT_SIDE
        ):
            raise ValueError(
                f"`input_shape` entries must be ints in [1, {MAX_INPUT_SIDE}] or None, got "
                f"{input_shape!r}."
            )
    height, width, channels = input_shape
    if channels is None:
        raise ValueError(f"`input_shape` needs a known channel count, got {input_shape!r}.")
    if height is not None and height <= 4 and channels > 4 and (width is None or width > 4):
        raise ValueError(
            f"`input_shape`={tuple(input_shape)} looks channels-first (NCHW); "
            "keras_densenet models are NHWC: pass (height, width, channels)."
        )
    minimum = min_input_size(stem, num_blocks)
    for dim in (height, width):
        if dim is not None and dim < minimum:
            raise ValueError(
                f"`input_shape`={tuple(input_shape)} is too small for the {stem} stem and "
                f"{num_blocks} blocks: height and width must be at least {minimum}."
            )
    return tuple(input_shape)


def _check_blocks(blocks: Any) -> tuple[int, ...]:
    blocks = check_int_sequence("blocks", blocks, high=MAX_BLOCK_LAYERS)
    if len(blocks) > MAX_BLOCKS:
        raise ValueError(f"`blocks` may have at most {MAX_BLOCKS} entries, got {len(blocks)}.")
    return blocks


def resolve_config(preset: str | None = None, **overrides: Any) -> dict[str, Any]:
    """Merges a preset with explicit arguments and validates the result.

    This runs no TensorFlow op; ``build_densenet`` calls it first, so every
    bad argument fails before any model is built.

    Args:
        preset: Optional name in `PRESETS`.
        **overrides: Any ``build_densenet`` argument; ``None`` means "not given".

    Returns:
        A complete, validated dict of architecture arguments, with ``blocks``
        resolved from ``depth`` where needed.

    Raises:
        ValueError: For an unknown preset or an argument out of range.
        TypeError: For an argument of the wrong type.
    """
    config: dict[str, Any] = dict(_ARCH_DEFAULTS)
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(
                f"Unknown `preset` {preset!r}; known presets: {', '.join(sorted(PRESETS))}."
            )
        config.update(PRESETS[preset]["config"])
    given = {k: v for k, v in overrides.items() if v is not None}
    if "blocks" in given and "depth" in given:
        raise ValueError("Pass either `blocks` or `depth`, not both.")
    if "blocks" in given:
        config.pop("depth", None)
    if "depth" in given:
        config.pop("blocks", None)
    config.update(given)

    config["growth_rate"] = check_positive_int("growth_rate", config["growth_rate"], MAX_WIDTH)
    config["bottleneck_width"] = check_positive_int(
        "bottleneck_width", config["bottleneck_width"], 64
    )
    config["compression"] = check_compression(config["compression"])
    config["dropout_rate"] = check_rate("dropout_rate", config["dropout_rate"])
    if not isinstance(config["bottleneck"], bool):
        raise TypeError(f"`bottleneck` must be a bool, got {config['bottleneck']!r}.")

    if config.get("depth") is not None:
        config["blocks"] = blocks_from_depth(config["depth"], config["bottleneck"])
        config.setdefault("stem", _CIFAR)
    elif config.get("blocks") is not None:
        config["blocks"] = _check_blocks(config["blocks"])
        config.setdefault("stem", _IMAGENET)
    else:
        raise ValueError(
            "Give a `preset`, `blocks` (layers per dense block) or `depth` (3-block CIFAR "
            f"layout); known presets: {', '.join(sorted(PRESETS))}."
        )
    if config["stem"] not in STEMS:
        raise ValueError(f"`stem` must be one of {STEMS}, got {config['stem']!r}.")

    if config["num_init_features"] is None:
        config["num_init_features"] = (
            64 if config["stem"] == _IMAGENET else 2 * config["growth_rate"]
        )
    config["num_init_features"] = check_positive_int(
        "num_init_features", config["num_init_features"], MAX_WIDTH
    )
    if config["num_classes"] is None:
        config["num_classes"] = 1000 if config["stem"] == _IMAGENET else 10
    if config.get("input_shape") is None:
        config["input_shape"] = (224, 224, 3) if config["stem"] == _IMAGENET else (32, 32, 3)
    config["input_shape"] = _check_input_shape(
        config["input_shape"], config["stem"], len(config["blocks"])
    )
    return config


def _check_head(
    include_top: bool, pooling: Any, num_classes: Any, classifier_activation: Any
) -> None:
    if not isinstance(include_top, bool):
        raise TypeError(f"`include_top` must be a bool, got {include_top!r}.")
    if pooling not in POOLINGS:
        raise ValueError(f"`pooling` must be one of {POOLINGS}, got {pooling!r}.")
    if include_top:
        check_positive_int("num_classes", num_classes, MAX_CLASSES)
        try:
            keras.activations.get(classifier_activation)
        except (ValueError, TypeError) as err:
            raise ValueError(
                f"`classifier_activation` must be a Keras activation name, callable or None, "
                f"got {classifier_activation!r}."
            ) from err


def _check_weights(weights: Any) -> None:
    if weights is None:
        return
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(f"`weights` must be None or a path to a weights file, got {weights!r}.")
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise ValueError(f"`weights` file not found: {path!r}.")
    if not path.endswith(".h5"):
        raise ValueError(
            f"`weights` must be a Keras `.weights.h5` file or a keras.applications "
            f"legacy `.h5` file, got {path!r}."
        )


def _check_normalization(
    normalization: Any, channels: int
) -> tuple[list[float], list[float]] | None:
    if normalization is None:
        return None
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
    input_shape: tuple[int | None, int | None, int] | None = None,
    include_top: bool = True,
    pooling: str | None = None,
    num_classes: int | None = None,
    classifier_activation: Any = "softmax",
    weights: str | os.PathLike | None = None,
    kernel_regularizer: Any = None,
    normalization: tuple[Sequence[float], Sequence[float]] | None = None,
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
        memory_efficient: Recompute concatenations and BN-ReLU(-Conv1x1) in
            the backward pass to save training memory.
        bn_momentum: Momentum of every BatchNormalization's moving
            statistics, in [0, 1) (Keras convention; default 0.9, PyTorch's
            0.1). keras.applications uses 0.99, which after a short run
            leaves the statistics of the untrained network; momentum does
            not change inference, so its weights give identical outputs.
        input_shape: ``(height, width, channels)``; None dims allowed. Default
            ``(224, 224, 3)`` (ImageNet stem) or ``(32, 32, 3)`` (CIFAR stem).
        include_top: Add global average pooling and the classifier.
        pooling: Without the top: None (4D features), ``"avg"`` or ``"max"``.
        num_classes: Classifier outputs (default: the preset's, else 1000 for
            the ImageNet stem and 10 for the CIFAR stem).
        classifier_activation: Activation of the classifier; it always
            computes in float32 so mixed precision gives float32 outputs.
        weights: None, a Keras ``.weights.h5`` file, or a keras.applications
            legacy ``.h5`` weights file (loaded by layer name).
        kernel_regularizer: Optional regularizer for every convolution kernel.
        normalization: Optional per-channel ``(mean, std)`` of the training
            data; the model then normalizes raw pixel values itself with a
            ``keras.layers.Normalization`` layer named ``"normalization"``, so
            saved and exported models need no outside preprocessing.
        name: Model name (default: the preset's name or ``"densenet"``).

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
    _check_head(include_top, pooling, config["num_classes"], classifier_activation)
    bn_momentum = check_bn_momentum(bn_momentum)
    _check_weights(weights)
    norm = _check_normalization(normalization, config["input_shape"][-1])

    inputs = keras.Input(shape=config["input_shape"], name="image")
    x = inputs
    if norm is not None:
        mean, std = norm
        x = keras.layers.Normalization(
            axis=-1, mean=mean, variance=[s * s for s in std], name="normalization"
        )(x)
    x = _stem(x, config, kernel_regularizer, bn_momentum)
    block_args = {
        "growth_rate": config["growth_rate"],
        "bottleneck": config["bottleneck"],
        "bottleneck_width": config["bottleneck_width"],
        "dropout_rate": config["dropout_rate"],
        "memory_efficient": memory_efficient,
        "bn_momentum": bn_momentum,
        "kernel_regularizer": kernel_regularizer,
    }
    for i, num_layers in enumerate(config["blocks"]):
        x = DenseBlock(num_layers, name=f"conv{i + 2}", **block_args)(x)
        if i < len(config["blocks"]) - 1:
            x = TransitionLayer(
                config["compression"],
                dropout_rate=config["dropout_rate"],
                bn_momentum=bn_momentum,
                kernel_regularizer=kernel_regularizer,
                name=f"pool{i + 2}",
            )(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=bn_momentum, name="bn")(x)
    x = keras.layers.Activation("relu", name="relu")(x)
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        # float32 classifier: stable softmax and float32 outputs under mixed precision.
        x = keras.layers.Dense(
            config["num_classes"],
            activation=classifier_activation,
            name="predictions",
            dtype="float32",
        )(x)
    elif pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
    model = keras.Model(inputs, x, name=name or preset or "densenet")

    if weights is not None:
        from keras_densenet.weights import load_weights

        load_weights(model, weights)
    return model


def _stem(inputs: Any, config: dict[str, Any], kernel_regularizer: Any, bn_momentum: float) -> Any:
    conv_args = {
        "use_bias": False,
        "kernel_initializer": "he_normal",
        "kernel_regularizer": kernel_regularizer,
        "name": "conv1_conv",
    }
    features = config["num_init_features"]
    if config["stem"] == _CIFAR:
        return keras.layers.Conv2D(features, 3, padding="same", **conv_args)(inputs)
    x = keras.layers.ZeroPadding2D(3, name="conv1_pad")(inputs)
    x = keras.layers.Conv2D(features, 7, strides=2, **conv_args)(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=bn_momentum, name="conv1_bn")(
        x
    )
    x = keras.layers.Activation("relu", name="conv1_relu")(x)
    x = keras.layers.ZeroPadding2D(1, name="pool1_pad")(x)
    return keras.layers.MaxPooling2D(3, strides=2, name="pool1")(x)


def _shortcut(preset: str) -> Any:
    def builder(**kwargs: Any) -> keras.Model:
        return build_densenet(preset, **kwargs)

    builder.__name__ = preset
    builder.__qualname__ = preset
    builder.__doc__ = f"""Builds {PRESETS[preset]["description"]}.

    A shortcut for ``build_densenet({preset!r}, **kwargs)``.

    Args:
        **kwargs: Any keyword argument of `build_densenet`; it overrides the
            preset's value.

    Returns:
        An uncompiled ``keras.Model``.

    Raises:
        ValueError: As `build_densenet`.
        TypeError: As `build_densenet`.
    """
    return builder


densenet121 = _shortcut("densenet121")
densenet169 = _shortcut("densenet169")
densenet201 = _shortcut("densenet201")
densenet264 = _shortcut("densenet264")
densenet_bc_100_12 = _shortcut("densenet_bc_100_12")
densenet_bc_250_24 = _shortcut("densenet_bc_250_24")
densenet_bc_190_40 = _shortcut("densenet_bc_190_40")
