"""The DenseNet presets: the architectures of the paper and keras.applications.

Presets are data (keras-hub style): one mapping from name to the
`keras_densenet.build_densenet` arguments plus metadata (parameter counts,
published error rates). One shortcut function per preset builds it
(``densenet121(...)`` is ``build_densenet("densenet121", ...)``). Nothing here
imports Keras until a shortcut is called.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

IMAGENET_STEM = "imagenet"
CIFAR_STEM = "cifar"
STEMS = (IMAGENET_STEM, CIFAR_STEM)


def _preset(config: dict[str, Any], description: str, **metadata: Any) -> Mapping[str, Any]:
    return MappingProxyType(
        {"config": MappingProxyType(config), "description": description, **metadata}
    )


def _config(
    stem: str,
    growth_rate: int,
    num_init_features: int,
    compression: float = 0.5,
    bottleneck: bool = True,
    **layout: Any,
) -> dict[str, Any]:
    """`build_densenet` arguments; ``layout`` is ``blocks=`` or ``depth=``."""
    imagenet = stem == IMAGENET_STEM
    return {
        **layout,
        "growth_rate": growth_rate,
        "compression": compression,
        "bottleneck": bottleneck,
        "num_init_features": num_init_features,
        "stem": stem,
        "input_shape": (224, 224, 3) if imagenet else (32, 32, 3),
        "num_classes": 1000 if imagenet else 10,
    }


def _imagenet(
    blocks: tuple[int, ...],
    params: int,
    growth_rate: int = 32,
    num_init_features: int = 64,
    **metadata: Any,
) -> Mapping[str, Any]:
    return _preset(
        _config(IMAGENET_STEM, growth_rate, num_init_features, blocks=blocks),
        f"ImageNet DenseNet-BC, blocks {blocks}, k={growth_rate}",
        params=params,
        **metadata,
    )


def _cifar(
    depth: int, growth_rate: int, trainable_params: int, **metadata: Any
) -> Mapping[str, Any]:
    return _preset(
        _config(CIFAR_STEM, growth_rate, 2 * growth_rate, depth=depth),
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
        "densenet161": _imagenet(
            (6, 12, 36, 24),
            28_900_936,
            growth_rate=48,
            num_init_features=96,
            trainable_params=28_681_000,
            top1_error=22.86,
        ),
        "densenet201": _imagenet((6, 12, 48, 32), 20_242_984, top1_error=22.6),
        "densenet264": _imagenet((6, 12, 64, 48), 33_736_232, trainable_params=33_337_704),
        "densenet_bc_100_12": _cifar(100, 12, 769_162, params=793_150, cifar10_error=4.51),
        "densenet_bc_250_24": _cifar(250, 24, 15_324_406, params=15_582_382, cifar10_error=3.62),
        "densenet_bc_190_40": _cifar(190, 40, 25_624_430, params=25_881_390, cifar10_error=3.46),
        "densenet_40_12": _preset(
            _config(CIFAR_STEM, 12, 16, compression=1.0, bottleneck=False, depth=40),
            "The paper's plain DenseNet (L=40, k=12): 3x3 convolutions only, no compression",
            cifar10_error=5.24,
        ),
    }
)


def _shortcut(preset: str) -> Callable[..., Any]:
    def builder(**kwargs: Any) -> Any:
        from keras_densenet.models import build_densenet

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
densenet161 = _shortcut("densenet161")
densenet169 = _shortcut("densenet169")
densenet201 = _shortcut("densenet201")
densenet264 = _shortcut("densenet264")
densenet_bc_100_12 = _shortcut("densenet_bc_100_12")
densenet_bc_250_24 = _shortcut("densenet_bc_250_24")
densenet_bc_190_40 = _shortcut("densenet_bc_190_40")
densenet_40_12 = _shortcut("densenet_40_12")

__all__ = [
    "CIFAR_STEM",
    "IMAGENET_STEM",
    "PRESETS",
    "STEMS",
    "densenet121",
    "densenet161",
    "densenet169",
    "densenet201",
    "densenet264",
    "densenet_40_12",
    "densenet_bc_100_12",
    "densenet_bc_190_40",
    "densenet_bc_250_24",
]
