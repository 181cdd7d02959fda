"""Serving an export: the TF Serving command and REST request bodies."""

from __future__ import annotations

import base64
import json
import os
import shlex
from collections.abc import Sequence
from typing import Any

import numpy as np

from keras_densenet.export.inputs import image_list
from keras_densenet.export.savedmodel import (
    BYTES_INPUT,
    IMAGES_INPUT,
    REQUEST_FORMATS,
    SERVING_BYTES,
    SERVING_DEFAULT,
)


def tensorflow_serving_command(
    model_dir: str | os.PathLike, model_name: str | None = None, port: int = 8501
) -> str:
    """A ``docker run`` command serving ``model_dir`` with TF Serving's REST API.

    Args:
        model_dir: The directory holding the numbered versions.
        model_name: Name in the URL; default: the directory's name.
        port: Host port for the REST API.

    Returns:
        A shell command; then POST to
        ``http://localhost:<port>/v1/models/<model_name>:predict``.
    """
    source = os.path.abspath(os.fspath(model_dir))
    name = model_name or os.path.basename(source.rstrip(os.sep))
    return (
        f"docker run --rm -p {int(port)}:8501 "
        f"--mount type=bind,source={shlex.quote(source)},target=/models/{shlex.quote(name)} "
        f"-e MODEL_NAME={shlex.quote(name)} -t tensorflow/serving"
    )


def serving_request_body(
    images: Any, format: str = "instances", signature_name: str | None = None
) -> str:
    """Builds a TF Serving REST ``:predict`` request body.

    Arrays become uint8 nested lists for ``serving_default``; ``bytes``
    objects (encoded image files) become ``{"b64": ...}`` values for
    ``serving_bytes``.

    Args:
        images: uint8 images of one size: an array ``(batch, height, width,
            channels)`` or ``(height, width, channels)``, or a list of such
            images; or a list of encoded image ``bytes``.
        format: ``"instances"`` (row format: one entry per image) or
            ``"inputs"`` (columnar format: one entry per input name).
        signature_name: Default ``"serving_default"`` for pixel arrays and
            ``"serving_bytes"`` for encoded bytes.

    Returns:
        The JSON text of the body.

    Raises:
        ValueError: For an unknown ``format``, images of different sizes, or
            images that are not raw pixels of rank 3.

    Example:
        >>> body = serving_request_body(np.zeros((1, 28, 28, 1), np.uint8))
        >>> json.loads(body)["signature_name"]
        'serving_default'
    """
    if format not in REQUEST_FORMATS:
        raise ValueError(f"`format` must be one of {REQUEST_FORMATS}, got {format!r}.")
    if (
        isinstance(images, Sequence)
        and images
        and all(isinstance(i, (bytes, bytearray)) for i in images)
    ):
        values: list[Any] = [{"b64": base64.b64encode(bytes(i)).decode("ascii")} for i in images]
        input_name, default_signature = BYTES_INPUT, SERVING_BYTES
    else:
        image_list_ = image_list(images, channels=None)
        if len({image.shape for image in image_list_}) != 1:
            raise ValueError(
                "A request body needs images of one size (TF Serving takes one tensor), got "
                f"shapes {sorted({image.shape for image in image_list_})}; resize them or "
                "send one request per size."
            )
        values = np.stack(image_list_).tolist()
        input_name, default_signature = IMAGES_INPUT, SERVING_DEFAULT
    body: dict[str, Any] = {"signature_name": signature_name or default_signature}
    if format == "instances":
        body["instances"] = values
    else:
        body["inputs"] = {input_name: values}
    return json.dumps(body, separators=(",", ":"))


__all__ = ["serving_request_body", "tensorflow_serving_command"]
