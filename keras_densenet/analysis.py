"""Per-block model summaries: output shapes, parameters and multiply-accumulates.

Convention: MACs count the multiply-accumulates of convolutions and dense
layers only (BN, ReLU, pooling and concatenation are left out), as torchvision
documents its "GFLOPS"; FLOPs = 2 x MACs. DenseNet-121 at 224x224 is
2.834 GMACs.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from keras_densenet.layers import DenseBlock, DenseLayer, TransitionLayer


def _hw(shape: Any) -> int:
    height, width = shape[1], shape[2]
    if height is None or width is None:
        raise ValueError(
            "MACs need a fixed input size; build the model with a concrete `input_shape`."
        )
    return int(height) * int(width)


def _dense_layer_macs(layer: DenseLayer, pixels: int, channels: int) -> int:
    k = layer.growth_rate
    if layer.bottleneck:
        width = layer.bottleneck_width * k
        return pixels * channels * width + pixels * 9 * width * k
    return pixels * 9 * channels * k


def layer_macs(layer: keras.layers.Layer) -> int:
    """Multiply-accumulates of one (built, called) top-level layer for one image.

    Args:
        layer: A layer of a functional model.

    Returns:
        Conv and dense MACs; 0 for layers without them.

    Raises:
        ValueError: If the model has no fixed spatial input size.
    """
    if isinstance(layer, keras.layers.Conv2D):
        kh, kw, cin, cout = layer.kernel.shape
        return _hw(layer.output.shape) * kh * kw * cin * cout
    if isinstance(layer, keras.layers.Dense):
        cin, cout = layer.kernel.shape
        return int(cin) * int(cout)
    if isinstance(layer, DenseBlock):
        shape = layer.input.shape
        pixels, channels = _hw(shape), int(shape[-1])
        return sum(
            _dense_layer_macs(dense, pixels, channels + i * layer.growth_rate)
            for i, dense in enumerate(layer.dense_layers)
        )
    if isinstance(layer, DenseLayer):
        shape = layer.input.shape
        return _dense_layer_macs(layer, _hw(shape), int(shape[-1]))
    if isinstance(layer, TransitionLayer):
        shape = layer.input.shape
        return _hw(shape) * int(shape[-1]) * int(layer.output.shape[-1])
    return 0


def block_table(model: keras.Model) -> list[dict[str, Any]]:
    """One row per top-level layer with parameters or MACs.

    Args:
        model: A functional model, e.g. from `build_densenet`.

    Returns:
        Rows ``{"name", "type", "output_shape", "channels", "params", "macs"}``.
    """
    rows = []
    for layer in model.layers:
        params, macs = int(layer.count_params()), layer_macs(layer)
        if not (params or macs):
            continue
        shape = tuple(layer.output.shape)
        rows.append(
            {
                "name": layer.name,
                "type": type(layer).__name__,
                "output_shape": shape,
                "channels": shape[-1],
                "params": params,
                "macs": int(macs),
            }
        )
    return rows


def count_macs(model: keras.Model) -> int:
    """Total conv + dense multiply-accumulates of one image through ``model``.

    Args:
        model: A functional model with a fixed input size.

    Returns:
        The MAC count (FLOPs are twice this).
    """
    return sum(row["macs"] for row in block_table(model))


def format_table(model: keras.Model) -> str:
    """A printable per-block table with totals and the counting convention.

    Args:
        model: A functional model with a fixed input size.

    Returns:
        The table as text.
    """
    rows = block_table(model)
    lines = [f"{'layer':<16}{'type':<20}{'output shape':<22}{'params':>12}{'MMACs':>11}"]
    lines.append("-" * len(lines[0]))
    for row in rows:
        shape = "x".join(str(s) for s in row["output_shape"][1:])
        lines.append(
            f"{row['name']:<16}{row['type']:<20}{shape:<22}{row['params']:>12,}"
            f"{row['macs'] / 1e6:>11.1f}"
        )
    total_macs = sum(r["macs"] for r in rows)
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    lines.append("-" * len(lines[0]))
    lines.append(
        f"total params {model.count_params():,} (trainable {trainable:,}); "
        f"{total_macs / 1e9:.3f} GMACs = {2 * total_macs / 1e9:.3f} GFLOPs per image"
    )
    lines.append("MACs: multiply-accumulates of convolutions and dense layers; FLOPs = 2 x MACs.")
    return "\n".join(lines)
