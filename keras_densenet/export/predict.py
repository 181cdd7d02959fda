"""Predictions from a model, a ``.keras`` file, a run directory or an export.

`predict` gives the top-k class names and probabilities of each image,
resizing as the exported graph does, so a ``.keras`` model and its SavedModel
answer the same.
"""

from __future__ import annotations

import dataclasses
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
from keras_densenet.export.model import (
    check_class_names,
    model_spec,
    model_thresholds,
    resolve_model,
)
from keras_densenet.export.savedmodel import (
    IMAGES_INPUT,
    METADATA,
    PROBABILITIES,
    SERVING_DEFAULT,
)
from keras_densenet.export.versions import savedmodel_dir


@dataclasses.dataclass
class _Predictor:
    """What runs a batch of uint8 images and what its outputs mean."""

    run: Callable[[np.ndarray], np.ndarray]
    channels: int
    size: tuple[int, int] | None  # resize as decoded (Keras models); None: the graph does
    names: list[str] | None
    thresholds: list[float] | None  # multi-label models only


def _savedmodel_predictor(path: str) -> _Predictor:
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
    names = thresholds = None
    if METADATA in loaded.signatures:
        metadata = loaded.signatures[METADATA]()
        names = [n.decode("utf-8") for n in metadata["class_names"].numpy()]
        if "thresholds" in metadata:
            thresholds = [float(t) for t in metadata["thresholds"].numpy()]

    def run(batch: np.ndarray) -> np.ndarray:
        return serve(**{IMAGES_INPUT: tf.constant(batch)})[PROBABILITIES].numpy()

    return _Predictor(run, int(spec.shape[-1]), None, names, thresholds)


def _savedmodel_path(model_or_path: Any) -> str | None:
    """A SavedModel's version directory, None for a Keras model or model file;
    refuses a missing path and a directory that is neither (no loading)."""
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
    return savedmodel


def _load_predictor(model_or_path: Any, savedmodel: str | None, allow_unsafe: bool) -> _Predictor:
    """The predictor of a model, ``.keras`` file, run directory or SavedModel."""
    if savedmodel is not None:
        return _savedmodel_predictor(savedmodel)
    model, stored_names = resolve_model(model_or_path, allow_unsafe=allow_unsafe)
    height, width, channels, _ = model_spec(model)

    def run(batch: np.ndarray) -> np.ndarray:
        probabilities = model(batch, training=False)
        return np.asarray(keras.ops.convert_to_numpy(probabilities), np.float32)

    # Resized as decoded: one image at its own size at a time.
    thresholds = model_thresholds(model, model_or_path)
    return _Predictor(run, channels, (height, width), stored_names, thresholds)


def predict_scores(
    model_or_path: keras.Model | str | os.PathLike,
    images: Any,
    class_names: Sequence[str] | None = None,
    max_image_pixels: int = image_files.MAX_PIXELS,
    allow_unsafe: bool = False,
) -> tuple[list[str], np.ndarray, list[float] | None]:
    """Every image's probabilities, with the class names and a multi-label model's thresholds.

    Args:
        model_or_path: As for `predict`.
        images: As for `predict`.
        class_names: As for `predict`.
        max_image_pixels: As for `predict`.
        allow_unsafe: As for `predict`.

    Returns:
        ``(class_names, probabilities, thresholds)``: probabilities float32
        ``[images, classes]``; thresholds one per label for a multi-label
        model (its SavedModel's or run's, else 0.5), None for a single-label one.

    Raises:
        ValueError: As `predict`.
        TypeError: As `predict`.
    """
    check_int("max_image_pixels", max_image_pixels, 1, 2**62)
    savedmodel = _savedmodel_path(model_or_path)
    items = check_items(images, max_image_pixels)  # every file's header, before any work
    predictor = _load_predictor(model_or_path, savedmodel, allow_unsafe)
    rows: list[np.ndarray | None] = [None] * len(items)
    for indices, batch in stream_batches(
        items, predictor.channels, max_image_pixels, predictor.size
    ):
        probabilities = predictor.run(batch)
        for row, i in enumerate(indices):
            rows[i] = probabilities[row]
    outputs = np.stack(rows) if rows else np.zeros((0, 0), np.float32)
    chosen = class_names if class_names is not None else predictor.names
    names = check_class_names(chosen, outputs.shape[-1]) if rows else []
    return names, outputs, predictor.thresholds


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
    number. A multi-label model's scores are independent per label: see
    `predict_labels` for the labels each image has.

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
    names, outputs, _ = predict_scores(
        model_or_path, images, class_names, max_image_pixels, allow_unsafe
    )
    return top_classes(names, outputs, top_k)


def top_classes(
    names: Sequence[str], probabilities: np.ndarray, top_k: int
) -> list[list[tuple[str, float]]]:
    """Per row, the ``top_k`` ``(class, probability)`` pairs, most likely first."""
    order = np.argsort(-np.asarray(probabilities), axis=-1, kind="stable")[:, :top_k]
    return [
        [(names[c], float(row[c])) for c in top]
        for row, top in zip(probabilities, order, strict=True)
    ]


def predict_labels(
    model_or_path: keras.Model | str | os.PathLike,
    images: Any,
    thresholds: Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
    *,
    max_image_pixels: int = image_files.MAX_PIXELS,
    allow_unsafe: bool = False,
) -> list[list[tuple[str, float]]]:
    """The labels of each image a multi-label model gives: those at or above their threshold.

    Args:
        model_or_path: A multi-label (sigmoid) model, ``.keras`` file, run
            directory or SavedModel, as for `predict`.
        images: As for `predict`.
        thresholds: One decision threshold per label (default: the
            SavedModel's, or the run's ``thresholds.json``, else 0.5).
        class_names: Override the stored label names.
        max_image_pixels: As for `predict`.
        allow_unsafe: As for `predict`.

    Returns:
        For each image, ``(label, probability)`` for every label whose
        probability reaches its threshold, most likely first (empty when none does).

    Raises:
        ValueError: As `predict`, for a single-label (softmax) model, or
            thresholds that do not fit the labels.
    """
    names, outputs, stored = predict_scores(
        model_or_path, images, class_names, max_image_pixels, allow_unsafe
    )
    if stored is None:
        raise ValueError(
            "predict_labels needs a multi-label (sigmoid) model; this one is single-label: "
            "use predict."
        )
    cuts = np.asarray(stored if thresholds is None else thresholds, np.float64).reshape(-1)
    if len(cuts) != len(stored):
        raise ValueError(
            f"`thresholds` must have {len(stored)} values (one per label), got {len(cuts)}."
        )
    return labels_above(names, outputs, cuts)


def labels_above(
    names: Sequence[str], probabilities: np.ndarray, thresholds: Any
) -> list[list[tuple[str, float]]]:
    """Per row, ``(label, probability)`` of the labels at or above their threshold, most
    likely first."""
    result = []
    for row in np.asarray(probabilities):
        above = [i for i in np.argsort(-row, kind="stable") if row[i] >= thresholds[i]]
        result.append([(names[i], float(row[i])) for i in above])
    return result


__all__ = ["labels_above", "predict", "predict_labels", "predict_scores", "top_classes"]
