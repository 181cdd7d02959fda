"""Scores of multi-label predictions: exact AUROC, ROC curves and F1-optimal thresholds.

Keras' ``AUC`` metric, which the training logs show, approximates the area
with a fixed grid of thresholds; these are exact (the area equals
scikit-learn's ``roc_auc_score``), computed with numpy on the whole split
after training.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: The metric that chooses the best epoch, the kept BN statistics and the
#: best trial: a single-label model's accuracy, a multi-label model's macro AUROC.
PRIMARY = {False: "accuracy", True: "auroc"}


def primary_metric(multi_label: bool) -> str:
    """The name of the metric a model is judged by (`PRIMARY`)."""
    return PRIMARY[bool(multi_label)]


#: The decision threshold of a label that validation cannot choose one for.
DEFAULT_THRESHOLD = 0.5


def _checked(targets: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    targets = np.asarray(targets, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if targets.shape != scores.shape or targets.ndim != 1:
        raise ValueError(
            f"`targets` and `scores` must be 1-D and of one shape, got {targets.shape} and "
            f"{scores.shape}."
        )
    if not np.isin(targets, (0.0, 1.0)).all():
        raise ValueError("`targets` must be 0 or 1.")
    return targets, scores


def roc_auc(targets: Any, scores: Any) -> float:
    """The area under the ROC curve of one label, exact, ties counted half.

    Args:
        targets: 0/1 truth per example.
        scores: The model's score per example (higher: more likely positive).

    Returns:
        The area in [0, 1], or NaN when the examples are all positive or all
        negative (the area is undefined).

    Raises:
        ValueError: If the shapes differ or a target is not 0 or 1.
    """
    targets, scores = _checked(targets, scores)
    positives = targets.sum()
    negatives = len(targets) - positives
    if not positives or not negatives:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    # Average the ranks of tied scores.
    sorted_scores = scores[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    for start, end in zip(starts, ends, strict=True):
        if end - start > 1:
            ranks[order[start:end]] = (start + end + 1) / 2
    rank_sum = ranks[targets == 1].sum()
    return float((rank_sum - positives * (positives + 1) / 2) / (positives * negatives))


def roc_curve(targets: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct threshold, from (0, 0) to (1, 1).

    Args:
        targets: 0/1 truth per example.
        scores: The model's score per example.

    Returns:
        ``(fpr, tpr)``; empty arrays when a rate is undefined (no positive or
        no negative example).

    Raises:
        ValueError: As `roc_auc`.
    """
    targets, scores = _checked(targets, scores)
    positives, negatives = targets.sum(), len(targets) - targets.sum()
    if not positives or not negatives:
        return np.zeros(0), np.zeros(0)
    order = np.argsort(-scores, kind="mergesort")
    hits = np.cumsum(targets[order])
    last = np.r_[np.flatnonzero(np.diff(scores[order])), len(scores) - 1]
    tpr = np.r_[0.0, hits[last] / positives]
    fpr = np.r_[0.0, (last + 1 - hits[last]) / negatives]
    return fpr, tpr


def f1_threshold(targets: Any, scores: Any) -> tuple[float, float]:
    """The decision threshold of one label with the highest F1 (``score >= threshold``).

    Args:
        targets: 0/1 truth per example.
        scores: The model's score per example.

    Returns:
        ``(threshold, f1)``: among the example's scores, the one whose F1 is
        highest (the highest such score on a tie); `DEFAULT_THRESHOLD` and NaN
        when no example is positive.

    Raises:
        ValueError: As `roc_auc`.
    """
    targets, scores = _checked(targets, scores)
    positives = targets.sum()
    if not positives:
        return DEFAULT_THRESHOLD, float("nan")
    order = np.argsort(-scores, kind="mergesort")
    hits = np.cumsum(targets[order])
    # Each distinct score as a threshold: every example at or above it is positive.
    last = np.r_[np.flatnonzero(np.diff(scores[order])), len(scores) - 1]
    predicted = last + 1
    f1 = 2 * hits[last] / (predicted + positives)
    best = int(np.argmax(f1))  # the first maximum: the highest threshold
    return float(scores[order][last[best]]), float(f1[best])


def label_scores(
    targets: np.ndarray, probabilities: np.ndarray, thresholds: Any = None
) -> dict[str, np.ndarray]:
    """Per-label AUROC, precision, recall, F1 and support at decision thresholds.

    Args:
        targets: ``(N, labels)`` 0/1 truth.
        probabilities: ``(N, labels)`` scores.
        thresholds: One threshold per label; `DEFAULT_THRESHOLD` for all when None.

    Returns:
        ``{"auroc", "precision", "recall", "f1", "support", "threshold"}``, one
        value per label (precision, recall and F1 are 0 where they divide by 0).
    """
    targets = np.asarray(targets, np.float64)
    probabilities = np.asarray(probabilities, np.float64)
    labels = targets.shape[1]
    thresholds = (
        np.full(labels, DEFAULT_THRESHOLD) if thresholds is None else np.asarray(thresholds)
    )
    predicted = probabilities >= thresholds
    hits = (predicted & (targets == 1)).sum(axis=0).astype(np.float64)
    called, support = predicted.sum(axis=0), targets.sum(axis=0)
    precision = np.divide(hits, called, out=np.zeros(labels), where=called > 0)
    recall = np.divide(hits, support, out=np.zeros(labels), where=support > 0)
    total = precision + recall
    return {
        "auroc": np.array([roc_auc(targets[:, i], probabilities[:, i]) for i in range(labels)]),
        "precision": precision,
        "recall": recall,
        "f1": np.divide(2 * precision * recall, total, out=np.zeros(labels), where=total > 0),
        "support": support.astype(int),
        "threshold": thresholds.astype(np.float64),
    }


__all__ = [
    "DEFAULT_THRESHOLD",
    "PRIMARY",
    "f1_threshold",
    "label_scores",
    "primary_metric",
    "roc_auc",
    "roc_curve",
]
