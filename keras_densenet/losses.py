"""Cross-entropy with label smoothing on integer labels.

Keras' ``SparseCategoricalCrossentropy`` has no ``label_smoothing``, and
one-hot encoding the labels in the input pipeline hides the batch size from
``keras.distribution`` (JAX data parallelism refuses such a dataset). This
loss one-hot encodes inside the loss instead, with the same smoothing as
``keras.losses.CategoricalCrossentropy(label_smoothing=...)``, on every backend.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_densenet._validation import check_rate


@keras.saving.register_keras_serializable(package="keras_densenet")
class SparseSmoothedCrossentropy(keras.losses.Loss):
    """Categorical cross-entropy against smoothed one-hot versions of integer labels.

    Args:
        label_smoothing: In [0, 1): the labels become
            ``one_hot * (1 - label_smoothing) + label_smoothing / num_classes``.
        name: Loss name.
        **kwargs: ``keras.losses.Loss`` arguments (``reduction``, ``dtype``).

    Raises:
        TypeError: If ``label_smoothing`` is not a number.
        ValueError: If ``label_smoothing`` is not in [0, 1).
    """

    def __init__(
        self,
        label_smoothing: float = 0.0,
        name: str = "sparse_smoothed_crossentropy",
        **kwargs: Any,
    ) -> None:
        label_smoothing = check_rate("label_smoothing", label_smoothing)
        super().__init__(name=name, **kwargs)
        self.label_smoothing = label_smoothing

    def call(self, y_true: Any, y_pred: Any) -> Any:
        """Returns the per-example loss.

        Args:
            y_true: Integer labels, shape ``(batch,)`` or ``(batch, 1)``.
            y_pred: Probabilities, shape ``(batch, num_classes)``.
        """
        labels = ops.cast(y_true, "int32")
        if len(labels.shape) == len(y_pred.shape):
            labels = ops.squeeze(labels, axis=-1)
        one_hot = ops.one_hot(labels, ops.shape(y_pred)[-1], dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(
            one_hot, y_pred, label_smoothing=self.label_smoothing
        )

    def get_config(self) -> dict[str, Any]:
        """Returns the serializable config."""
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


@keras.saving.register_keras_serializable(package="keras_densenet")
class WeightedBinaryCrossentropy(keras.losses.Loss):
    """Binary cross-entropy per label with a weight on each label's positives.

    The loss of ``--class-weight balanced`` on multi-label data: a label's
    positive examples count ``positive_weights[label]`` times (its negatives
    over its positives makes both sides weigh the same), as PyTorch's
    ``BCEWithLogitsLoss(pos_weight=...)`` does.

    Args:
        positive_weights: One weight per label, each > 0.
        label_smoothing: In [0, 1): targets become ``t * (1 - s) + s / 2``,
            as ``keras.losses.BinaryCrossentropy`` smooths them.
        name: Loss name.
        **kwargs: ``keras.losses.Loss`` arguments (``reduction``, ``dtype``).

    Raises:
        TypeError: If ``label_smoothing`` is not a number.
        ValueError: If a weight is not a positive finite number, or
            ``label_smoothing`` is not in [0, 1).
    """

    def __init__(
        self,
        positive_weights: Any,
        label_smoothing: float = 0.0,
        name: str = "weighted_binary_crossentropy",
        **kwargs: Any,
    ) -> None:
        import numpy as np

        label_smoothing = check_rate("label_smoothing", label_smoothing)
        weights = np.asarray(positive_weights, dtype=np.float64).reshape(-1)
        if not weights.size or not np.all(np.isfinite(weights)) or weights.min() <= 0:
            raise ValueError(
                f"`positive_weights` must be positive finite numbers, one per label, got "
                f"{positive_weights!r}."
            )
        super().__init__(name=name, **kwargs)
        self.positive_weights = [float(w) for w in weights]
        self.label_smoothing = label_smoothing

    def call(self, y_true: Any, y_pred: Any) -> Any:
        """Returns the per-example loss, the mean over labels.

        Args:
            y_true: 0/1 targets, shape ``(batch, labels)``.
            y_pred: Probabilities, shape ``(batch, labels)``.
        """
        y_pred = ops.cast(y_pred, "float32")
        targets = ops.cast(y_true, "float32")
        targets = targets * (1.0 - self.label_smoothing) + 0.5 * self.label_smoothing
        epsilon = keras.config.epsilon()
        probabilities = ops.clip(y_pred, epsilon, 1.0 - epsilon)
        weights = ops.convert_to_tensor(self.positive_weights, "float32")
        losses = -(
            weights * targets * ops.log(probabilities)
            + (1.0 - targets) * ops.log(1.0 - probabilities)
        )
        return ops.mean(losses, axis=-1)

    def get_config(self) -> dict[str, Any]:
        """Returns the serializable config."""
        return {
            **super().get_config(),
            "positive_weights": self.positive_weights,
            "label_smoothing": self.label_smoothing,
        }
