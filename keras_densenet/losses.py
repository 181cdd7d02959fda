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
