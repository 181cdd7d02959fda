"""Evaluation: accuracy, per-class accuracy and the confusion matrix of a model.

`evaluate` takes a model, a ``.keras`` file or a run directory; for a run
directory the dataset, its options and the validation split default to the
run's own (its ``config.json``), so ``evaluate("runs/x", split="validation")``
scores exactly the images the run held out. `keras_densenet.viz` only draws
what this computes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from keras_densenet import _io, rundir
from keras_densenet._validation import check_choice, check_positive_int

#: Splits `evaluate` can score.
SPLITS = ("train", "validation", "test")


def confusion_matrix(
    labels: Sequence[int], predictions: Sequence[int], num_classes: int
) -> np.ndarray:
    """Counts ``(true, predicted)`` pairs.

    Args:
        labels: True class indices.
        predictions: Predicted class indices.
        num_classes: Number of classes.

    Returns:
        An int64 array ``[num_classes, num_classes]``, rows true, columns predicted.

    Raises:
        ValueError: If a label or prediction is outside ``0..num_classes - 1``.
    """
    check_positive_int("num_classes", num_classes)
    labels, predictions = np.asarray(labels, int), np.asarray(predictions, int)
    for name, values in (("labels", labels), ("predictions", predictions)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"`{name}` must be class indices in 0..{num_classes - 1}.")
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def precision_recall_f1(matrix: Any) -> dict[str, np.ndarray]:
    """Per-class precision, recall, F1 and support from a confusion matrix.

    Args:
        matrix: ``[num_classes, num_classes]`` counts, rows true, columns
            predicted (`confusion_matrix`).

    Returns:
        ``{"precision", "recall", "f1", "support"}``, one value per class;
        0 where a ratio has nothing to divide by (a class never predicted,
        or absent), as scikit-learn's ``zero_division=0`` does.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    hits = matrix.diagonal()
    predicted, support = matrix.sum(axis=0), matrix.sum(axis=1)
    precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)
    recall = np.divide(hits, support, out=np.zeros_like(hits), where=support > 0)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(hits), where=total > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support.astype(int)}


def _run_defaults(model: Any, given: dict[str, Any]) -> dict[str, Any]:
    """Data options of a run directory's config, for those not given."""
    if not (isinstance(model, (str, os.PathLike)) and rundir.is_run_dir(model)):
        return given
    if not os.path.isfile(os.path.join(os.fspath(model), rundir.CONFIG)):
        return given
    config = rundir.read_config(model)
    stored = {k: config.get(k) for k in given}
    stored["validation_fraction"] = config.get("validation_fraction") or None
    return {k: given[k] if given[k] is not None else stored.get(k) for k in given}


def _check_fits(model: Any, info: Any, name: str) -> None:
    """Refuses a model whose classes or input shape do not fit the data."""
    if model.output_shape[-1] != info.num_classes:
        raise ValueError(
            f"The model has {model.output_shape[-1]} outputs but {name!r} has "
            f"{info.num_classes} classes."
        )
    expected = tuple(model.input_shape[1:])
    if any(e is not None and e != g for e, g in zip(expected, info.image_shape, strict=True)):
        raise ValueError(
            f"The model takes images of shape {expected} but {name!r} gives "
            f"{info.image_shape}; pass image_size/channels as in training."
        )


def _predict_labels(model: Any, batches: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(true labels, predicted labels)`` over every batch."""
    import keras

    labels, predictions = [], []
    for images, batch_labels in batches:
        probabilities = model.predict_on_batch(np.asarray(images))
        predictions.append(np.argmax(keras.ops.convert_to_numpy(probabilities), axis=-1))
        labels.append(np.asarray(batch_labels))
    return np.concatenate(labels), np.concatenate(predictions)


def evaluate(
    model: Any,
    dataset: str | None = None,
    *,
    split: str = "test",
    out: str | os.PathLike | None = None,
    data_dir: str | None = None,
    batch_size: int = 256,
    image_size: Sequence[int] | None = None,
    channels: int | None = None,
    validation_fraction: float | None = None,
    bad_images: str | None = None,
    allow_unsafe: bool = False,
) -> dict[str, Any]:
    """Accuracy, per-class accuracy and a confusion matrix on a split.

    Args:
        model: A Keras model, a ``.keras`` file, or a run directory.
        dataset: Dataset name (see `keras_densenet.data.load_dataset`);
            default: the run's dataset when ``model`` is a run directory.
        split: ``"train"``, ``"validation"`` or ``"test"``.
        out: Where to write ``evaluation.json`` and ``confusion_matrix.png``
            (a run directory if ``model`` is one; nothing written if None).
            Checked before any work.
        data_dir: Data directory (default: the run's).
        batch_size: Evaluation batch size.
        image_size: Optional resize, as in training (default: the run's).
        channels: Optional channel conversion, as in training (default: the run's).
        validation_fraction: The part of the training split held out as
            ``"validation"`` (default: the run's).
        bad_images: Image folders: ``"error"`` or ``"skip"`` for files that are
            not readable images (default: the run's, else ``"error"``).
        allow_unsafe: Allow a model file that carries code (see
            `keras_densenet.rundir.load_model`).

    Returns:
        ``{"accuracy", "per_class_accuracy", "per_class"`` (precision, recall,
        F1 and support of each class), ``"macro_f1", "confusion_matrix",
        "class_names", "num_examples", "split"}``.

    Raises:
        ValueError: For a missing model or dataset, an unwritable ``out``, a
            split the data does not have, or a model whose input or classes do
            not fit the data.
    """
    import keras

    from keras_densenet.data import load_dataset
    from keras_densenet.viz import plot_confusion_matrix

    check_choice("split", split, SPLITS)
    check_positive_int("batch_size", batch_size, 65_536)
    options = _run_defaults(
        model,
        {
            "dataset": dataset,
            "data_dir": data_dir,
            "image_size": image_size,
            "channels": channels,
            "validation_fraction": validation_fraction,
            "bad_images": bad_images,
        },
    )
    if out is None and isinstance(model, (str, os.PathLike)) and os.path.isdir(model):
        out = model
    if out is not None:
        rundir.ensure_writable_dir(out, "out")
    if not isinstance(model, keras.Model):
        model = rundir.load_model(model, allow_unsafe=allow_unsafe)
    if options["dataset"] is None:
        raise ValueError("`dataset` is required unless `model` is a training run directory.")
    image_size = options["image_size"]
    ds, info = load_dataset(
        options["dataset"],
        split,
        batch_size=batch_size,
        data_dir=options["data_dir"],
        normalize=False,
        augment=False,
        shuffle=False,
        image_size=tuple(image_size) if image_size else None,
        channels=options["channels"],
        validation_fraction=options["validation_fraction"],
        bad_images=options["bad_images"] or "error",
    )
    name = options["dataset"]
    _check_fits(model, info, name)
    y_true, y_pred = _predict_labels(model, ds)
    matrix = confusion_matrix(y_true, y_pred, info.num_classes)
    per_class = matrix.diagonal() / np.maximum(matrix.sum(axis=1), 1)
    scores = precision_recall_f1(matrix)
    result = {
        "accuracy": float(np.mean(y_true == y_pred)),
        "per_class_accuracy": dict(zip(info.class_names, map(float, per_class), strict=True)),
        "per_class": {
            name: {key: scores[key][i].item() for key in scores}
            for i, name in enumerate(info.class_names)
        },
        "macro_f1": float(np.mean(scores["f1"])),
        "confusion_matrix": matrix.tolist(),
        "class_names": list(info.class_names),
        "num_examples": len(y_true),
        "split": split,
    }
    if out is not None:
        _io.write_json(os.path.join(out, rundir.EVALUATION), result)
        plot_confusion_matrix(
            matrix,
            info.class_names,
            os.path.join(out, rundir.CONFUSION),
            title=f"{model.name} on {name} {split}",
        )
    return result


__all__ = ["SPLITS", "confusion_matrix", "evaluate", "precision_recall_f1"]
