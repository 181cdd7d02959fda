"""A DenseNet's architecture in closed form: resolved, checked, counted, named.

`resolve_config` merges a preset (`keras_densenet.presets`) with explicit
arguments and checks the result, so a bad architecture fails before anything
is built; `count_trainable_params` counts the parameters the model would have
and `model_name` names it after what it is. Nothing here imports Keras or
TensorFlow, which keeps the command line's ``--help`` instant. The defaults
every layer and run starts from live here too (BatchNorm epsilon and
momentum, the recalibration batches).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from keras_densenet._validation import (
    check_float,
    check_int_sequence,
    check_positive_int,
    check_rate,
)
from keras_densenet.presets import CIFAR_STEM, IMAGENET_STEM, PRESETS, STEMS

#: BatchNormalization epsilon of ``keras.applications.DenseNet*``: kept, so
#: its published weights give identical outputs.
BN_EPSILON = 1.001e-5
#: PyTorch's BatchNormalization epsilon (torchvision and timm weights).
TORCH_BN_EPSILON = 1e-5
#: Default BatchNormalization momentum (Keras convention: the weight of the
#: old moving average). 0.9 is PyTorch's 0.1 and the paper's Torch default;
#: with keras.applications' 0.99 the moving statistics of a short run still
#: describe the untrained network, so evaluation lags training badly. Momentum
#: does not change inference, so pretrained weights load with identical outputs.
BN_MOMENTUM = 0.9
#: The momentum models saved before ``bn_momentum`` existed were trained with.
LEGACY_BN_MOMENTUM = 0.99
#: Batches BatchNorm statistics are recomputed from (PreciseBN) unless told
#: otherwise: a thousand or two images, which Wu & Johnson (2021) find enough.
RECALIBRATION_STEPS = 30


def check_compression(value: Any) -> float:
    """Validates a transition compression factor theta.

    Args:
        value: The compression factor.

    Returns:
        The factor as a float.

    Raises:
        TypeError: If it is not a number.
        ValueError: If it is outside (0, 1].
    """
    return check_float("compression", value, 0.0, 1.0, low_open=True)


def compressed_channels(channels: int, compression: float) -> int:
    """Returns ``floor(channels * compression)``, robust to float rounding.

    Args:
        channels: Number of input channels of a transition.
        compression: Compression factor theta in (0, 1].

    Returns:
        The number of output channels.
    """
    # 0.29 * 100 == 28.999999999999996 in floating point; the paper means 29.
    return math.floor(channels * compression + 1e-9)


def check_bn_epsilon(value: Any) -> float:
    """Validates a BatchNormalization epsilon: a finite number in (0, 1).

    Raises:
        TypeError: If it is not a number.
        ValueError: If it is outside (0, 1).
    """
    return check_float("bn_epsilon", value, 0.0, 1.0, low_open=True, high_open=True)


def check_bn_momentum(value: Any) -> float:
    """Validates a BatchNormalization momentum.

    Args:
        value: The momentum, in [0, 1) (Keras convention: the weight of the
            old moving average; PyTorch's ``momentum=0.1`` is 0.9 here).

    Returns:
        The momentum as a float.

    Raises:
        TypeError: If it is not a number.
        ValueError: If it is outside [0, 1).
    """
    return check_rate("bn_momentum", value)


#: Upper bounds of the architecture arguments, far above any published
#: DenseNet, so an absurd value fails with a message instead of exhausting memory.
MAX_WIDTH = 4096  # growth rate, stem features
MAX_BLOCK_LAYERS = 1000  # layers in one dense block
MAX_BLOCKS = 16  # dense blocks
MAX_CLASSES = 1_000_000
MAX_INPUT_SIDE = 16_384  # pixels

POOLINGS = (None, "avg", "max")


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
    if stem == IMAGENET_STEM:
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
    if "blocks" in given:  # (a given depth needs no pop: it is read before blocks)
        config.pop("depth", None)
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
        config.setdefault("stem", CIFAR_STEM)
    elif config.get("blocks") is not None:
        config["blocks"] = _check_blocks(config["blocks"])
        config.setdefault("stem", IMAGENET_STEM)
    else:
        raise ValueError(
            "Give a `preset`, `blocks` (layers per dense block) or `depth` (3-block CIFAR "
            f"layout); known presets: {', '.join(sorted(PRESETS))}."
        )
    if config["stem"] not in STEMS:
        raise ValueError(f"`stem` must be one of {STEMS}, got {config['stem']!r}.")

    if config["num_init_features"] is None:
        config["num_init_features"] = (
            64 if config["stem"] == IMAGENET_STEM else 2 * config["growth_rate"]
        )
    config["num_init_features"] = check_positive_int(
        "num_init_features", config["num_init_features"], MAX_WIDTH
    )
    if config["num_classes"] is None:
        config["num_classes"] = 1000 if config["stem"] == IMAGENET_STEM else 10
    if config.get("input_shape") is None:
        config["input_shape"] = (224, 224, 3) if config["stem"] == IMAGENET_STEM else (32, 32, 3)
    config["input_shape"] = _check_input_shape(
        config["input_shape"], config["stem"], len(config["blocks"])
    )
    return config


def count_trainable_params(
    preset: str | None = None, *, include_top: bool = True, **overrides: Any
) -> int:
    """Trainable parameters of a DenseNet, counted without building it.

    Takes the architecture arguments of `keras_densenet.build_densenet` and
    gives exactly ``sum(prod(w.shape) for w in model.trainable_weights)`` of
    the model it would build (BN moving statistics and the normalization
    layer are not trainable).

    Args:
        preset: Optional name in `PRESETS`.
        include_top: Count the classifier.
        **overrides: Architecture arguments of ``build_densenet`` (``depth``,
            ``blocks``, ``growth_rate``, ``compression``, ``bottleneck``,
            ``bottleneck_width``, ``num_init_features``, ``stem``,
            ``input_shape``, ``num_classes``, ...).

    Returns:
        The number of trainable parameters.

    Raises:
        ValueError: As `resolve_config`.
        TypeError: As `resolve_config`.

    Example:
        >>> count_trainable_params("densenet_bc_100_12")
        769162
    """
    config = resolve_config(preset, **overrides)
    k, width = config["growth_rate"], config["bottleneck_width"] * config["growth_rate"]
    channels = config["num_init_features"]
    in_channels = config["input_shape"][-1]
    if config["stem"] == "cifar":
        total = 9 * in_channels * channels  # 3x3 conv, no bias
    else:
        total = 49 * in_channels * channels + 2 * channels  # 7x7 conv + BN
    blocks = config["blocks"]
    for i, layers in enumerate(blocks):
        for _ in range(layers):
            total += 2 * channels  # BN gamma and beta of the layer's input
            if config["bottleneck"]:
                total += channels * width + 2 * width + 9 * width * k
            else:
                total += 9 * channels * k
            channels += k
        if i < len(blocks) - 1:
            out = compressed_channels(channels, config["compression"])
            total += 2 * channels + channels * out
            channels = out
    total += 2 * channels  # final BN
    if include_top:
        total += channels * config["num_classes"] + config["num_classes"]
    return total


_ARCHITECTURE_KEYS = (
    "blocks",
    "growth_rate",
    "compression",
    "bottleneck",
    "bottleneck_width",
    "num_init_features",
    "stem",
)


def model_name(config: Mapping[str, Any], preset: str | None = None) -> str:
    """A name that says what was built.

    The preset's name when the architecture is the preset's; otherwise the
    paper's naming: ``densenet_bc_40_12`` (DenseNet-BC, L=40, k=12; ``b``
    bottleneck only, ``c`` compression only) for the CIFAR stem, and
    ``densenet121_k12`` (DenseNet-121 layout with k=12) for the ImageNet stem.

    Args:
        config: A resolved architecture (`resolve_config`).
        preset: The preset it started from, if any.

    Returns:
        The name.
    """
    if preset is not None:
        base = resolve_config(preset)
        if all(_tuple_if(base[k]) == _tuple_if(config[k]) for k in _ARCHITECTURE_KEYS):
            return preset
    blocks, k = config["blocks"], config["growth_rate"]
    depth = (2 if config["bottleneck"] else 1) * sum(blocks) + len(blocks) + 1
    if config["stem"] == CIFAR_STEM:
        kind = "b" * config["bottleneck"] + "c" * (config["compression"] < 1)
        return f"densenet{'_' + kind if kind else ''}_{depth}_{k}"
    return f"densenet{depth}" + (f"_k{k}" if k != 32 else "")


def _tuple_if(value: Any) -> Any:
    """Lists as tuples, for comparing configs read from JSON with resolved ones."""
    return tuple(value) if isinstance(value, list) else value


__all__ = [
    "BN_EPSILON",
    "BN_MOMENTUM",
    "LEGACY_BN_MOMENTUM",
    "MAX_BLOCKS",
    "MAX_BLOCK_LAYERS",
    "MAX_CLASSES",
    "MAX_INPUT_SIDE",
    "MAX_WIDTH",
    "POOLINGS",
    "RECALIBRATION_STEPS",
    "TORCH_BN_EPSILON",
    "blocks_from_depth",
    "check_bn_epsilon",
    "check_bn_momentum",
    "check_compression",
    "compressed_channels",
    "count_trainable_params",
    "min_input_size",
    "model_name",
    "resolve_config",
]
