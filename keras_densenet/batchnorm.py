"""Precise BatchNorm statistics: recompute the population mean and variance.

During training every BatchNormalization keeps an exponential moving average
of its batch statistics, and inference uses it. Those averages lag the
weights: they mix statistics of many older networks, and after a short run or
a fine-tune at a small learning rate they still describe the untrained one,
so a model that has learned evaluates near chance. Wu & Johnson ("Rethinking
'Batch' in BatchNorm", 2021, section 3) call the fix *PreciseBN*: with the
weights frozen, run N training batches through the network in training mode
and set each BN layer's statistics to the exact population moments of the
features it saw.

`recalibrate_batchnorm` does that for any Keras model, on every backend: it
uses only layer state (each layer's momentum set to 0 for the pass, so its
moving statistics hold the last batch's moments, read after every step) and
Keras ops. `BatchNormRecalibration` is a ``model.fit`` callback that scores
every validation pass on recalibrated statistics and puts the moving averages
back afterwards, so training itself, its checkpoints and a resumed run are
exactly as without it.

`batch_norm_pure` and `update_moving_statistics` (defined in
`keras_densenet.normalization`, which also has the fused BatchNormalization
layer) split a training-mode BatchNormalization into its pure forward pass
and its state update, the form a rematerialized (``keras.remat``) function
needs: the memory-efficient `DenseLayer` uses them.

Example:
    >>> model.fit(train, validation_data=val, epochs=10,
    ...           callbacks=[BatchNormRecalibration(train_no_augment, steps=50)])
    >>> recalibrate_batchnorm(model, train_no_augment, steps=50)
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import keras
import numpy as np

from keras_densenet._validation import check_positive_int
from keras_densenet.architecture import RECALIBRATION_STEPS
from keras_densenet.normalization import batch_norm_pure, update_moving_statistics

#: Batches a recalibration uses unless told otherwise.
DEFAULT_STEPS = RECALIBRATION_STEPS


def batchnorm_layers(model: keras.layers.Layer) -> list[keras.layers.BatchNormalization]:
    """The trainable BatchNormalization layers of a model, nested ones included.

    Frozen BN layers (``trainable=False``) run in inference mode in Keras 3
    and keep their statistics, so they are left out.

    Args:
        model: A Keras model or layer.

    Returns:
        The layers, in the order Keras tracks them.
    """
    return [
        layer
        for layer in model._flatten_layers(include_self=True, recursive=True)
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
    ]


def _inputs_of(batch: Any) -> Any:
    """The model input of a batch: ``x`` of ``(x, y)`` or ``(x, y, w)``."""
    if isinstance(batch, (tuple, list)):
        return batch[0]
    if isinstance(batch, dict):
        raise ValueError(
            "`data` must yield input batches or (inputs, labels) tuples, got a dict; map it "
            "to (inputs, labels) first."
        )
    return batch


def _batches(data: Any, batch_size: int) -> Iterator[Any]:
    if isinstance(data, np.ndarray):
        if data.ndim < 2 or not len(data):
            raise ValueError(
                f"`data` must be a non-empty array of inputs (batch first), got shape {data.shape}."
            )
        return (data[i : i + batch_size] for i in range(0, len(data), batch_size))
    if isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
        raise TypeError(
            "`data` must be a tf.data.Dataset, an iterable of batches (inputs or (inputs, "
            f"labels)) or a NumPy array of inputs, got {type(data).__name__}."
        )
    return (_inputs_of(batch) for batch in data)


def _repeat(data: Any) -> Iterator[Any]:
    """The batches of ``data`` over and over (each pass re-iterates it)."""
    while True:
        empty = True
        for x in _batches(data, 64):
            empty = False
            yield x
        if empty:
            raise ValueError("`data` yielded no batches: cannot recalibrate BatchNorm statistics.")


class _Forward:
    """A training-mode forward pass that returns every BN layer's moving stats.

    Compiled once per model (``tf.function`` on TensorFlow, ``jax.jit`` of a
    stateless call on JAX, eager elsewhere) while every momentum is 0, so the
    moving statistics it returns are the current batch's moments.
    """

    def __init__(self, model: keras.Model, layers: list[keras.layers.BatchNormalization]) -> None:
        self.variables = [v for bn in layers for v in (bn.moving_mean, bn.moving_variance)]
        backend = keras.backend.backend()
        self._fn: Any
        if backend == "tensorflow":
            import tensorflow as tf

            def forward(x: Any) -> list[Any]:
                model(x, training=True)
                return [tf.identity(v.value) for v in self.variables]

            self._fn = tf.function(forward, reduce_retracing=True)
        elif backend == "jax":
            import jax

            positions = {id(v): i for i, v in enumerate(model.non_trainable_variables)}
            index = [positions[id(v)] for v in self.variables]

            def stateless(trainable: Any, non_trainable: Any, x: Any) -> list[Any]:
                _, updated = model.stateless_call(trainable, non_trainable, x, training=True)
                return [updated[i] for i in index]

            jitted = jax.jit(stateless)

            def forward(x: Any) -> list[Any]:
                return jitted(
                    [v.value for v in model.trainable_variables],
                    [v.value for v in model.non_trainable_variables],
                    x,
                )

            self._fn = forward
        else:

            def forward(x: Any) -> list[Any]:
                model(x, training=True)
                return [v.value for v in self.variables]

            self._fn = forward

    def __call__(self, x: Any) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each BN layer's ``(mean, variance)`` of batch ``x``, in float64."""
        if keras.backend.backend() != "tensorflow":
            x = np.asarray(x)
        if keras.backend.backend() == "torch":
            import torch

            with torch.no_grad():
                values = self._fn(x)
        else:
            values = self._fn(x)
        arrays = [np.asarray(keras.ops.convert_to_numpy(v), np.float64) for v in values]
        return [(arrays[i], arrays[i + 1]) for i in range(0, len(arrays), 2)]


class _ZeroMomentum:
    """Sets every layer's momentum to 0 for a block, then restores it."""

    def __init__(self, layers: list[keras.layers.BatchNormalization]) -> None:
        self.saved = [(bn, bn.momentum) for bn in layers]

    def __enter__(self) -> None:
        for bn, _ in self.saved:
            bn.momentum = 0.0

    def __exit__(self, *exc: Any) -> None:
        for bn, momentum in self.saved:
            bn.momentum = momentum


class BatchNormRecalibrator:
    """Recomputes a model's BN statistics, reusing one compiled forward pass.

    `recalibrate_batchnorm` is the one-shot form; this class suits repeated
    use (the `BatchNormRecalibration` callback recalibrates every epoch).

    Args:
        model: The model whose BN statistics to recompute.

    Raises:
        TypeError: If ``model`` is not a Keras layer or model.
    """

    def __init__(self, model: keras.layers.Layer) -> None:
        if not isinstance(model, keras.layers.Layer):
            raise TypeError(f"`model` must be a Keras model or layer, got {type(model).__name__}.")
        self.model = model
        self.layers = batchnorm_layers(model)
        self._forward: _Forward | None = None

    def snapshot(self) -> list[np.ndarray]:
        """The current moving statistics, for `restore`."""
        return [
            np.asarray(keras.ops.convert_to_numpy(v))
            for bn in self.layers
            for v in (bn.moving_mean, bn.moving_variance)
        ]

    def restore(self, values: list[np.ndarray]) -> None:
        """Puts back statistics taken by `snapshot`."""
        variables = [v for bn in self.layers for v in (bn.moving_mean, bn.moving_variance)]
        for variable, value in zip(variables, values, strict=True):
            variable.assign(value)

    def __call__(self, batches: Iterable[Any], steps: int | None) -> int:
        """Runs up to ``steps`` batches and sets the population statistics.

        Args:
            batches: Input batches (arrays or tensors, batch first).
            steps: Most batches to use; None uses them all.

        Returns:
            The number of examples the statistics were computed from (0 if
            the model has no trainable BN layer).

        Raises:
            ValueError: If ``batches`` is empty.
        """
        if not self.layers:
            return 0
        # Each layer's batch mean m and variance v give E[x] = m and E[x^2] =
        # v + m^2; weighting by batch size makes the result the exact moments of
        # all the features seen, whatever the batching. The sums are float64.
        sums = [[0.0, 0.0] for _ in self.layers]
        count = 0
        with _ZeroMomentum(self.layers):
            if self._forward is None:
                self._forward = _Forward(self.model, self.layers)
            for x in itertools.islice(batches, steps):
                n = int(keras.ops.shape(x)[0])
                if n == 0:
                    continue
                for i, (mean, variance) in enumerate(self._forward(x)):
                    sums[i][0] += mean * n
                    sums[i][1] += (variance + np.square(mean)) * n
                count += n
        if count == 0:
            raise ValueError("`data` yielded no examples: cannot recalibrate BatchNorm statistics.")
        for i, bn in enumerate(self.layers):
            mean = sums[i][0] / count
            variance = np.maximum(sums[i][1] / count - np.square(mean), 0.0)
            # (assign casts to the variable's dtype: float32 under the mixed policies)
            bn.moving_mean.assign(mean)
            bn.moving_variance.assign(variance)
        return count


def recalibrate_batchnorm(
    model: keras.layers.Layer,
    data: Any,
    steps: int | None = DEFAULT_STEPS,
    *,
    batch_size: int = 64,
) -> int:
    """Sets every BN layer's moving statistics to the population moments (PreciseBN).

    The weights stay frozen and no optimizer step is taken: ``steps`` batches
    run through the model in training mode (BN normalizing with batch
    statistics, as in training), and each trainable BatchNormalization layer
    gets the exact mean and variance of all the features it saw. Frozen BN
    layers (``trainable=False``) are left as they are. Works on the
    TensorFlow, JAX and PyTorch backends.

    Use training images, ideally without augmentation, and a few thousand of
    them (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021, section 3).

    Args:
        model: A Keras model (or layer) with BatchNormalization layers.
        data: A ``tf.data.Dataset`` or any iterable of batches, each an input
            array/tensor or an ``(inputs, labels[, weights])`` tuple; or a
            NumPy array of inputs, split into batches of ``batch_size``.
        steps: Most batches to use (None: all of ``data``, which must then be
            finite).
        batch_size: Batch size for a NumPy array ``data`` (use the training
            batch size: BN statistics depend on it a little).

    Returns:
        The number of examples the statistics come from.

    Raises:
        TypeError: For a ``model`` or ``data`` of the wrong kind.
        ValueError: For a bad ``steps`` or ``batch_size``, or empty ``data``.

    Example:
        >>> train, _ = load_dataset("fashion_mnist_sample", "train", augment=False,
        ...                         normalize=False)
        >>> recalibrate_batchnorm(model, train, steps=50)
        2700
    """
    if steps is not None:
        steps = check_positive_int("steps", steps)
    batch_size = check_positive_int("batch_size", batch_size)
    length = pass_length(data)
    if steps is None and length == INFINITE:
        raise ValueError(
            "`data` is an infinite dataset (it repeats without end): pass `steps`, the number "
            "of batches to use."
        )
    _check_batched(model, data)
    batches = _batches(data, batch_size)
    return BatchNormRecalibrator(model)(batches, steps)


#: `pass_length` of a dataset that repeats without end.
INFINITE = -1


def pass_length(data: Any) -> int | None:
    """Batches in one pass over ``data``: a ``tf.data`` cardinality or ``len``.

    Returns:
        The count, `INFINITE` for a dataset that repeats without end, or None
        where it is not known.
    """
    cardinality = getattr(data, "cardinality", None)
    if callable(cardinality):
        try:
            count = int(cardinality())
        except Exception:  # not a tf.data.Dataset after all
            return None
        return INFINITE if count == INFINITE else (count if count >= 0 else None)
    if isinstance(data, np.ndarray):
        return None  # batched here, by batch_size
    try:
        return len(data)
    except TypeError:
        return None


def _check_batched(model: Any, data: Any) -> None:
    """Refuses a ``tf.data`` dataset of single images (no batch dimension)."""
    spec = getattr(data, "element_spec", None)
    if spec is None:
        return
    if isinstance(spec, (tuple, list)):
        spec = spec[0]
    shape = getattr(spec, "shape", None)
    rank = len(getattr(model, "input_shape", ()) or ())
    if shape is not None and shape.rank is not None and rank and shape.rank == rank - 1:
        raise ValueError(
            f"`data` yields unbatched examples of shape {tuple(shape)} (the model takes "
            f"batches of rank {rank}): call `.batch(n)` on the dataset first."
        )


class BatchNormRecalibration(keras.callbacks.Callback):
    """Scores every validation pass of ``model.fit`` on recalibrated BN statistics.

    Before each validation pass the BN statistics are recomputed from
    ``steps`` batches of ``data`` (see `recalibrate_batchnorm`); after it the
    moving averages are put back, so training, its checkpoints and a resumed
    run are exactly what they would be without this callback, while
    ``val_*`` metrics (and so best-model selection and KerasTuner's scores)
    reflect the accuracy the recalibrated model will have.

    Args:
        data: Training batches (ideally without augmentation); iterated
            without end, so a finite dataset is repeated.
        steps: Batches per recalibration (at most one pass over ``data`` where
            its length is known: more would see the same images again).

    Raises:
        ValueError: For a bad ``steps``.
    """

    def __init__(self, data: Any, steps: int = DEFAULT_STEPS) -> None:
        super().__init__()
        self.steps = check_positive_int("steps", steps)
        self.data = data
        self._recalibrator: BatchNormRecalibrator | None = None
        self._saved: list[np.ndarray] | None = None
        self._iterator: Iterator[Any] | None = None

    def _next_batches(self) -> Iterator[Any]:
        if self._iterator is None:
            self._iterator = _repeat(self.data)
        return self._iterator

    def on_test_begin(self, logs: Any = None) -> None:
        if self._recalibrator is None or self._recalibrator.model is not self.model:
            self._recalibrator = BatchNormRecalibrator(self.model)
        self._saved = self._recalibrator.snapshot()
        # More batches than one pass over the data holds see the same images again.
        length = pass_length(self.data)
        steps = min(self.steps, length) if length and length > 0 else self.steps
        self._recalibrator(self._next_batches(), steps)

    def on_test_end(self, logs: Any = None) -> None:
        if self._saved is not None and self._recalibrator is not None:
            self._recalibrator.restore(self._saved)
            self._saved = None


__all__ = [
    "DEFAULT_STEPS",
    "INFINITE",
    "BatchNormRecalibration",
    "BatchNormRecalibrator",
    "batch_norm_pure",
    "batchnorm_layers",
    "pass_length",
    "recalibrate_batchnorm",
    "update_moving_statistics",
]
