"""BatchNormalization folded into the convolution before it, for inference.

At inference a BatchNormalization is a fixed per-channel affine map,
``y = s * (z - mean) + beta`` with ``s = gamma / sqrt(variance + epsilon)``.
When ``z`` is a convolution's output, ``W * x + b``, the map can go into the
convolution itself: kernel ``W * s`` (per output channel) and bias
``(b - mean) * s + beta``. One operation and one pass over the activations
less, the same outputs up to float32 rounding.

In a DenseNet the BatchNormalization after each bottleneck 1x1 convolution
(``conv*_block*_1_bn``) and the ImageNet stem's ``conv1_bn`` follow a
convolution directly. The other BatchNormalizations read a concatenation of
several layers' maps (BN-ReLU-Conv order) and stay as they are.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import keras


def _array(variable: Any) -> np.ndarray:
    import keras

    return np.asarray(keras.ops.convert_to_numpy(variable), np.float64)


def _scale_and_shift(bn: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(s, t)`` with ``bn(z) == s * z + t`` at inference, in float64."""
    mean = _array(bn.moving_mean)
    variance = _array(bn.moving_variance)
    gamma = _array(bn.gamma) if bn.scale else 1.0
    beta = _array(bn.beta) if bn.center else 0.0
    scale = gamma / np.sqrt(variance + bn.epsilon)  # per channel: variance is an array
    return scale, beta - mean * scale


def _assign_folded(target: Any, conv: Any, bn: Any) -> None:
    """Sets ``target`` (a Conv2D with a bias) to ``bn(conv(x))``."""
    scale, shift = _scale_and_shift(bn)
    kernel = _array(conv.kernel)
    bias = _array(conv.bias) if conv.use_bias else 0.0
    target.kernel.assign(kernel * scale)  # (assign rounds to the variable's float32 once)
    target.bias.assign(bias * scale + shift)


def _copy_weights(target: Any, source: Any) -> None:
    target.set_weights(source.get_weights())


def _foldable_pairs(model: keras.Model) -> dict[str, str]:
    """``{batchnorm name: conv name}`` for each BN fed only by a Conv2D used only by it."""
    import keras

    from keras_densenet.normalization import BatchNormalization

    pairs = {}
    for layer in model.layers:
        if type(layer) not in (keras.layers.BatchNormalization, BatchNormalization):
            continue  # another subclass may compute something else
        if len(layer._inbound_nodes) != 1 or layer.axis not in (-1, 3):
            continue
        inputs = layer._inbound_nodes[0].input_tensors
        if len(inputs) != 1:
            continue
        producer = inputs[0]._keras_history.operation
        if (
            type(producer) is keras.layers.Conv2D
            and producer.activation is keras.activations.linear
            and len(producer._inbound_nodes) == 1
            and len(producer._outbound_nodes) == 1
        ):
            pairs[layer.name] = producer.name
    return pairs


def _is_foldable_dense(layer: Any) -> bool:
    from keras_densenet.layers import DenseBlock, DenseLayer

    return isinstance(layer, (DenseBlock, DenseLayer)) and layer.bottleneck and not layer.folded


def _folded_config(model: keras.Model, pairs: dict[str, str]) -> dict[str, Any]:
    config = copy.deepcopy(model.get_config())
    convs = set(pairs.values())
    dense = {layer.name for layer in model.layers if _is_foldable_dense(layer)}
    for entry in config["layers"]:
        inner = entry["config"]
        name = inner.get("name")
        if name in convs:
            inner["use_bias"] = True  # (its initial bias is overwritten by the folded one)
        elif name in pairs:
            entry.update(
                module="keras.layers",
                class_name="Identity",
                registered_name=None,
                config={"name": name, "trainable": False, "dtype": inner.get("dtype")},
            )
            for node in entry["inbound_nodes"]:
                node["kwargs"] = {}  # Identity takes no `training` or `mask`
        elif name in dense:
            inner["folded"] = True
    return config


def fold_batchnorm(model: keras.Model) -> keras.Model:
    """The inference form of a functional model, BatchNormalizations folded.

    Each BatchNormalization that directly follows a ``Conv2D`` (fed only by
    it, the convolution used only by it) is folded into that convolution's
    kernel and bias and replaced by an ``Identity`` layer of the same name;
    in `DenseLayer`/`DenseBlock` the bottleneck BatchNormalization is folded
    the same way (``folded=True``). Outputs in inference mode equal the
    model's up to float32 rounding (within 1e-5 for DenseNet-121 logits of
    order 1). The model itself is not changed.

    The folded model is for inference and export: its folded
    convolutions learn without batch statistics, so train the original.

    Args:
        model: A functional Keras model, e.g. from `build_densenet` or a
            training run.

    Returns:
        A new model; ``model`` itself if nothing can be folded.

    Raises:
        ValueError: If ``model`` is not a functional model (a subclassed or
            Sequential model has no graph to rewrite), or cannot be rebuilt
            from its config.

    Example:
        >>> served = fold_batchnorm(build_densenet("densenet121"))
        >>> served.get_layer("conv1_conv").use_bias
        True
    """
    import keras

    import keras_densenet.layers  # noqa: F401  (registers the layers for from_config)

    if not isinstance(model, keras.Model) or type(model) is keras.Sequential:
        raise ValueError(f"`model` must be a functional keras.Model, got {model!r}.")
    if not hasattr(model, "_inbound_nodes") or "layers" not in model.get_config():
        raise ValueError(
            f"`model` must be a functional keras.Model (it needs a layer graph to rewrite), "
            f"got {type(model).__name__} {model.name!r}."
        )
    pairs = _foldable_pairs(model)
    if not pairs and not any(_is_foldable_dense(layer) for layer in model.layers):
        return model
    try:
        folded = model.__class__.from_config(_folded_config(model, pairs))
    except Exception as err:
        raise ValueError(
            f"Cannot rebuild model {model.name!r} with BatchNormalization folded: "
            f"{type(err).__name__}: {err}"
        ) from err
    convs = {conv: bn for bn, conv in pairs.items()}
    for layer in folded.layers:
        source = model.get_layer(layer.name)
        if layer.name in pairs:
            continue  # the Identity that replaced a folded BatchNormalization
        if layer.name in convs:
            _assign_folded(layer, source, model.get_layer(convs[layer.name]))
        elif _is_foldable_dense(source):
            pieces = getattr(source, "dense_layers", [source])
            for new, old in zip(getattr(layer, "dense_layers", [layer]), pieces, strict=True):
                _copy_weights(new.bn1, old.bn1)
                _assign_folded(new.conv1, old.conv1, old.bn2)
                _copy_weights(new.conv2, old.conv2)
        else:
            _copy_weights(layer, source)
    return folded


def batchnorm_count(model: keras.Model) -> int:
    """How many BatchNormalization layers ``model`` has, nested ones included."""
    import keras

    return sum(
        isinstance(layer, keras.layers.BatchNormalization) for layer in model._flatten_layers()
    )


__all__ = ["batchnorm_count", "fold_batchnorm"]
