"""Evaluation: accuracy and the confusion matrix, or per-label AUROC (multi-label).

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
    thresholds: Sequence[float] | None = None,
    allow_unsafe: bool = False,
) -> dict[str, Any]:
    """Scores a model on a split: accuracy and a confusion matrix, or per-label AUROC.

    Args:
        model: A Keras model, a ``.keras`` file, or a run directory.
        dataset: Dataset name (see `keras_densenet.data.load_dataset`);
            default: the run's dataset when ``model`` is a run directory.
        split: ``"train"``, ``"validation"`` or ``"test"``.
        out: Where to write ``evaluation.json`` and ``confusion_matrix.png``
            (``roc_curves.png`` for multi-label data); a run directory if
            ``model`` is one; nothing written if None. Checked before any work.
        data_dir: Data directory (default: the run's).
        batch_size: Evaluation batch size.
        image_size: Optional resize, as in training (default: the run's).
        channels: Optional channel conversion, as in training (default: the run's).
        validation_fraction: The part of the training split held out as
            ``"validation"`` (default: the run's).
        bad_images: Image folders: ``"error"`` or ``"skip"`` for files that are
            not readable images (default: the run's, else ``"error"``).
        thresholds: Multi-label data: one decision threshold per label for
            precision, recall and F1 (default: the run's ``thresholds.json``,
            else 0.5).
        allow_unsafe: Allow a model file that carries code (see
            `keras_densenet.rundir.load_model`).

    Returns:
        Single-label data: ``{"accuracy", "per_class_accuracy", "per_class"``
        (precision, recall, F1 and support of each class), ``"macro_f1",
        "confusion_matrix", "class_names", "num_examples", "split"}``.
        Multi-label data: ``{"macro_auroc", "per_label"`` (AUROC, precision,
        recall, F1, support and threshold of each label), ``"macro_f1",
        "class_names", "num_examples", "split", "multi_label": True}``.

    Raises:
        ValueError: For a missing model or dataset, an unwritable ``out``, a
            split the data does not have, or a model whose input or classes do
            not fit the data.
    """
    from keras_densenet.viz import plot_confusion_matrix, plot_roc_curves

    if out is None and isinstance(model, (str, os.PathLike)) and os.path.isdir(model):
        out = model
    if thresholds is None and isinstance(model, (str, os.PathLike)):
        thresholds = run_thresholds(model)
    model, ds, info = _load_split(
        model,
        split,
        out,
        batch_size,
        allow_unsafe,
        {
            "dataset": dataset,
            "data_dir": data_dir,
            "image_size": image_size,
            "channels": channels,
            "validation_fraction": validation_fraction,
            "bad_images": bad_images,
        },
    )
    targets, probabilities = predict_split(model, ds)
    title = f"{model.name} on {info.name} {split}"
    if info.multi_label:
        result = _multi_label_result(targets, probabilities, info, thresholds)
    else:
        result = _single_label_result(targets, probabilities, info)
    result.update(num_examples=len(targets), split=split)
    if out is not None:
        _io.write_json(os.path.join(out, rundir.EVALUATION), result)
        if info.multi_label:
            plot_roc_curves(
                targets, probabilities, info.class_names, os.path.join(out, rundir.ROC), title
            )
        else:
            matrix = np.asarray(result["confusion_matrix"])
            plot_confusion_matrix(
                matrix, info.class_names, os.path.join(out, rundir.CONFUSION), title
            )
    return result


def _load_split(
    model: Any,
    split: str,
    out: Any,
    batch_size: int,
    allow_unsafe: bool,
    given: dict[str, Any],
) -> tuple[Any, Any, Any]:
    """The checked model, the split's unaugmented batches and its `DatasetInfo`."""
    import keras

    from keras_densenet.data import load_dataset

    check_choice("split", split, SPLITS)
    check_positive_int("batch_size", batch_size, 65_536)
    options = _run_defaults(model, given)
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
    _check_fits(model, info, options["dataset"])
    return model, ds, info


def predict_split(model: Any, batches: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, probabilities)`` of a model over every batch of a split.

    Args:
        model: A Keras model.
        batches: ``(images, labels)`` batches, images as the model takes them.

    Returns:
        The labels as the data gives them (class indices, or multi-hot
        vectors) and the model's outputs, float32, one row per example.
    """
    import keras

    labels, outputs = [], []
    for images, batch_labels in batches:
        probabilities = model.predict_on_batch(np.asarray(images))
        outputs.append(np.asarray(keras.ops.convert_to_numpy(probabilities), np.float32))
        labels.append(np.asarray(batch_labels))
    return np.concatenate(labels), np.concatenate(outputs)


def _single_label_result(
    y_true: np.ndarray, probabilities: np.ndarray, info: Any
) -> dict[str, Any]:
    y_pred = np.argmax(probabilities, axis=-1)
    matrix = confusion_matrix(y_true, y_pred, info.num_classes)
    per_class = matrix.diagonal() / np.maximum(matrix.sum(axis=1), 1)
    scores = precision_recall_f1(matrix)
    return {
        "accuracy": float(np.mean(y_true == y_pred)),
        "per_class_accuracy": dict(zip(info.class_names, map(float, per_class), strict=True)),
        "per_class": {
            name: {key: scores[key][i].item() for key in scores}
            for i, name in enumerate(info.class_names)
        },
        "macro_f1": float(np.mean(scores["f1"])),
        "confusion_matrix": matrix.tolist(),
        "class_names": list(info.class_names),
    }


def _multi_label_result(
    targets: np.ndarray, probabilities: np.ndarray, info: Any, thresholds: Any
) -> dict[str, Any]:
    from keras_densenet.scores import label_scores

    if thresholds is not None and len(thresholds) != info.num_classes:
        raise ValueError(
            f"`thresholds` has {len(thresholds)} values for the {info.num_classes} labels of "
            f"{info.name!r}."
        )
    scores = label_scores(targets, probabilities, thresholds)
    areas = scores["auroc"][~np.isnan(scores["auroc"])]
    return {
        "macro_auroc": float(np.mean(areas)) if areas.size else float("nan"),
        "per_label": {
            name: {key: scores[key][i].item() for key in scores}
            for i, name in enumerate(info.class_names)
        },
        "macro_f1": float(np.mean(scores["f1"])),
        "class_names": list(info.class_names),
        "multi_label": True,
    }


def primary_score(result: dict[str, Any]) -> float:
    """The number a result is judged by: accuracy, or the macro AUROC (multi-label)."""
    return result["macro_auroc"] if result.get("multi_label") else result["accuracy"]


def run_thresholds(path: str | os.PathLike) -> list[float] | None:
    """A multi-label run's decision thresholds (``thresholds.json``), or None.

    Args:
        path: A run directory (anything else has none).
    """
    file = os.path.join(os.fspath(path), rundir.THRESHOLDS)
    if not os.path.isfile(file):
        return None
    stored = _io.read_json(file, "thresholds file")
    return [float(stored[name]) for name in stored]


__all__ = [
    "SPLITS",
    "confusion_matrix",
    "evaluate",
    "precision_recall_f1",
    "predict_split",
    "primary_score",
    "run_thresholds",
]
