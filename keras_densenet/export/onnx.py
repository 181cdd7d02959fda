"""ONNX files, for serving outside TensorFlow (ONNX Runtime, TensorRT, OpenVINO).

The model's inference function is traced, its variables frozen into
constants and the graph converted with tf2onnx. (Keras's own
``model.export(format="onnx")`` leaves the ``Normalization`` layer's
statistics as extra graph inputs under Keras 3.15, so a model trained here
would not run.) The ONNX model takes float32 raw pixels ``[N, H, W, C]``
(0..255, at the model's input size, any batch size) and returns float32
``probabilities`` ``[N, num_classes]``; a mixed-precision model is converted
as float32.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

import keras

from keras_densenet import _io
from keras_densenet._validation import check_int
from keras_densenet.export.model import model_spec, resolve_model, with_serving_dtype
from keras_densenet.export.savedmodel import IMAGES_INPUT, PROBABILITIES

#: The ONNX operator set written by default (ONNX Runtime 1.16 and newer run it).
OPSET = 17


@contextlib.contextmanager
def _quiet_converter() -> Iterator[None]:
    """tf2onnx and TensorFlow's v1 graph APIs log at INFO/WARNING; errors still show."""
    import tensorflow as tf

    loggers = [logging.getLogger(name) for name in ("tf2onnx", "tensorflow")]
    levels = [logger.level for logger in loggers]
    verbosity = tf.get_logger().level
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        tf.get_logger().setLevel(verbosity)


def export_onnx(
    model: keras.Model | str | os.PathLike,
    path: str | os.PathLike,
    *,
    opset: int = OPSET,
    allow_unsafe: bool = False,
) -> str:
    """Converts an image classifier to an ONNX file, written atomically.

    Args:
        model: A ``keras.Model``, a ``.keras`` file or a run directory.
        path: The ``.onnx`` file to write.
        opset: The ONNX operator set version, from 13 to the newest the
            installed tf2onnx writes (18 for tf2onnx 1.17).
        allow_unsafe: Load a model file that carries code (a ``Lambda`` layer).

    Returns:
        ``path`` as a string.

    Raises:
        ValueError: For a bad ``path`` or ``opset``, or a model that is not an
            image classifier with a fixed input size.
        ImportError: If tf2onnx is not installed
            (``pip install 'keras-densenet[onnx]'``).

    Example:
        >>> export_onnx("runs/fashion", "fashion.onnx")
        'fashion.onnx'
    """
    path = os.fspath(path)
    if not path.endswith(".onnx"):
        raise ValueError(f"`path` must be an .onnx file, got {path!r}.")
    try:
        import tf2onnx
    except ImportError as err:
        raise ImportError(
            "ONNX export needs tf2onnx and onnx: pip install 'keras-densenet[onnx]'."
        ) from err
    check_int("opset", opset, 13, max(tf2onnx.constants.OPSET_TO_IR_VERSION))
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    source, _ = resolve_model(model, allow_unsafe=allow_unsafe)
    source = with_serving_dtype(source, "float32")
    height, width, channels, _ = model_spec(source)

    def serve(images: Any) -> dict[str, Any]:
        return {PROBABILITIES: tf.cast(source(images, training=False), tf.float32)}

    signature = tf.TensorSpec([None, height, width, channels], tf.float32, IMAGES_INPUT)
    frozen = convert_variables_to_constants_v2(tf.function(serve).get_concrete_function(signature))
    inputs, outputs = [t.name for t in frozen.inputs], [t.name for t in frozen.outputs]
    with _quiet_converter():
        proto, _ = tf2onnx.convert.from_graph_def(
            frozen.graph.as_graph_def(), input_names=inputs, output_names=outputs, opset=opset
        )
    # TensorFlow's tensor names ("images:0", "Identity:0") -> the signature's.
    renames = {inputs[0]: IMAGES_INPUT, outputs[0]: PROBABILITIES}
    for node in proto.graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]
    for value in (*proto.graph.input, *proto.graph.output):
        value.name = renames.get(value.name, value.name)
    _io.write_bytes(path, proto.SerializeToString())
    return path


__all__ = ["OPSET", "export_onnx"]
