"""Predictions from a model, a ``.keras`` file, a run directory or an export.

`predict` gives the top-k class names and probabilities of each image,
resizing as the exported graph does, so a ``.keras`` model and its SavedModel
answer the same.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_densenet import images as image_files
from keras_densenet import rundir
from keras_densenet._validation import check_int
from keras_densenet.export.inputs import check_items, stream_batches
from keras_densenet.export.model import check_class_names, model_spec, resolve_model
from keras_densenet.export.savedmodel import (
    IMAGES_INPUT,
    METADATA,
    PROBABILITIES,
    SERVING_DEFAULT,
)
from keras_densenet.export.versions import savedmodel_dir


def _savedmodel_predictor(
    path: str,
) -> tuple[Callable[[np.ndarray], np.ndarray], int, list[str] | None]:
    try:
        loaded = tf.saved_model.load(path)
    except Exception as err:
        raise ValueError(f"Could not load SavedModel {path!r}: {err}") from err
    serve = loaded.signatures.get(SERVING_DEFAULT)
    if serve is None:
        raise ValueError(f"SavedModel {path!r} has no {SERVING_DEFAULT!r} signature.")
    spec = serve.structured_input_signature[1].get(IMAGES_INPUT)
    if spec is None:
        raise ValueError(
            f"SavedModel {path!r} was not exported by export_savedmodel: its "
            f"{SERVING_DEFAULT!r} signature has no {IMAGES_INPUT!r} input."
        )
    names = None
    if METADATA in loaded.signatures:
        raw = loaded.signatures[METADATA]()["class_names"].numpy()
        names = [n.decode("utf-8") for n in raw]

    def run(batch: np.ndarray) -> np.ndarray:
        return serve(**{IMAGES_INPUT: tf.constant(batch)})[PROBABILITIES].numpy()

    return run, int(spec.shape[-1]), names


def predict(
    model_or_path: keras.Model | str | os.PathLike,
    images: Any,
    top_k: int = 5,
    class_names: Sequence[str] | None = None,
    *,
    max_image_pixels: int = image_files.MAX_PIXELS,
    allow_unsafe: bool = False,
) -> list[list[tuple[str, float]]]:
    """Top-k class names and probabilities per image.

    Works on a Keras model, a ``.keras`` file, a run directory, an exported
    SavedModel version directory, or a model directory (its highest version).
    Images are resized to the model's input size as the exported graph does.
    Files are checked from their headers first, then decoded one at a time
    and run in batches of bounded size, so memory does not grow with their
    number.

    Args:
        model_or_path: The model or a path as above.
        images: A uint8 array ``(batch, height, width, channels)`` or
            ``(height, width, channels)``, a list of such images (sizes may
            differ), or a list of image file paths (JPEG, PNG, GIF, BMP;
            converted to the model's channels).
        top_k: How many classes per image (at most the number of classes).
        class_names: Override the stored class names (default: from the
            SavedModel's metadata or the run's ``summary.json``, else
            ``"0"``, ``"1"``, ...).
        max_image_pixels: Largest ``height x width`` accepted; a file
            announcing more is refused before it is decoded.
        allow_unsafe: Load a model file that carries code (a ``Lambda`` layer).

    Returns:
        For each image, ``top_k`` ``(class_name, probability)`` pairs, most
        likely first.

    Raises:
        ValueError: For a missing or unloadable model, an unreadable,
            truncated or oversized image file, images of the wrong rank,
            channel count or values, or a bad ``top_k`` or ``class_names``.
        TypeError: If ``model_or_path`` is neither a model nor a path.

    Example:
        >>> predict("saved_models/fashion", ["boot.png"], top_k=2)
        [[('Ankle boot', 0.91), ('Sneaker', 0.06)]]
    """
    top_k = check_int("top_k", top_k, 1, 1_000_000)
    check_int("max_image_pixels", max_image_pixels, 1, 2**62)
    savedmodel = None
    if isinstance(model_or_path, (str, os.PathLike)):
        path = os.fspath(model_or_path)
        if not os.path.exists(path):
            raise ValueError(f"Model file or directory not found: {path!r}.")
        if os.path.isdir(path):
            savedmodel = savedmodel_dir(path)
            if savedmodel is None and not any(
                os.path.isfile(os.path.join(path, name)) for name in rundir.MODELS
            ):
                raise ValueError(
                    f"Directory {path!r} is neither an exported SavedModel (version or model "
                    f"directory) nor a training run directory with {' or '.join(rundir.MODELS)}."
                )
    items = check_items(images, max_image_pixels)  # every file's header, before any work
    size = None
    if savedmodel is not None:
        run, channels, stored_names = _savedmodel_predictor(savedmodel)
    else:
        model, stored_names = resolve_model(model_or_path, allow_unsafe=allow_unsafe)
        height, width, channels, _ = model_spec(model)
        size = (height, width)  # resized as decoded: one image at its own size at a time

        def run(batch: np.ndarray) -> np.ndarray:
            probabilities = model(batch, training=False)
            return np.asarray(keras.ops.convert_to_numpy(probabilities), np.float32)

    results: list[list[tuple[str, float]] | None] = [None] * len(items)
    names: list[str] | None = None
    for indices, batch in stream_batches(items, channels, max_image_pixels, size):
        probabilities = run(batch)
        if names is None:
            chosen = class_names if class_names is not None else stored_names
            names = check_class_names(chosen, probabilities.shape[-1])
        k = min(top_k, probabilities.shape[-1])
        order = np.argsort(-probabilities, axis=-1, kind="stable")[:, :k]
        for row, i in enumerate(indices):
            results[i] = [(names[c], float(probabilities[row, c])) for c in order[row]]
    return results  # type: ignore[return-value]


__all__ = ["predict"]
