"""BatchNormalization on TensorFlow's fused kernel, and its pure training form.

A DenseNet spends much of a CPU training step in BatchNormalization: every
layer normalizes the whole concatenation of the maps before it. Keras 3's
``BatchNormalization`` computes it from separate ops (``tf.nn.moments``, then
scale and shift), each a pass over the tensor, and differentiates through all
of them. On the TensorFlow backend `BatchNormalization` here calls the fused
kernel instead (``FusedBatchNormV3``: oneDNN on the CPU, cuDNN on a GPU), one
op forward and one backward, as ``tf.keras`` 2 and PyTorch do. It is the same
layer otherwise: the same weights, names and moving-average rule (biased batch
variance, Keras momentum), so keras.applications weights, `.keras` files and
`recalibrate_batchnorm` see no difference; outputs and gradients equal the
plain layer's within float rounding (tested). Where the fused kernel does not
apply (the JAX and PyTorch backends, ``synchronized``, ``renorm``, a mask,
``scale=False`` or ``center=False``, an axis other than the last of a 4D
input, an input dtype other than float16/bfloat16/float32, epsilon below
cuDNN's 1e-5) the layer runs Keras's own code.

`batch_norm_pure` and `update_moving_statistics` split a training-mode
BatchNormalization into its pure forward pass and its state update, the form
a rematerialized (``keras.remat``) function needs: the memory-efficient
`DenseLayer` uses them.

Example:
    >>> bn = BatchNormalization(epsilon=1.001e-5)
    >>> y = bn(keras.random.normal((8, 14, 14, 64)), training=True)
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

_PACKAGE = "keras_densenet"

#: The smallest epsilon cuDNN accepts; below it the layer runs Keras's own ops.
_MIN_FUSED_EPSILON = 1e-5
_FUSED_DTYPES = ("float16", "bfloat16", "float32")


def fusable(bn: keras.layers.BatchNormalization, x: Any) -> bool:
    """Whether TensorFlow's fused kernel computes exactly what ``bn`` does on ``x``."""
    shape = x.shape
    return (
        keras.backend.backend() == "tensorflow"
        and len(shape) == 4
        and bn.axis in (-1, 3)
        and bn.scale
        and bn.center
        and not bn.synchronized
        and not bn.renorm
        and bn.epsilon >= _MIN_FUSED_EPSILON
        and keras.backend.standardize_dtype(x.dtype) in _FUSED_DTYPES
    )


def _fused(bn: keras.layers.BatchNormalization, x: Any, training: bool) -> tuple[Any, Any, Any]:
    import tensorflow as tf

    moving = {}
    if not training:
        moving = {
            "mean": tf.cast(bn.moving_mean, tf.float32),
            "variance": tf.cast(bn.moving_variance, tf.float32),
        }
    scale, offset = tf.cast(bn.gamma, tf.float32), tf.cast(bn.beta, tf.float32)
    y, mean, variance, _ = fused_batch_norm(x, scale, offset, bn.epsilon, **moving)
    if training and not tf.config.list_logical_devices("GPU"):
        y = apart_from_the_next_op(y)
    return y, mean, variance


def fused_batch_norm(
    x: Any, scale: Any, offset: Any, epsilon: float, mean: Any = None, variance: Any = None
) -> tuple[Any, Any, Any, list[Any]]:
    """One NHWC ``FusedBatchNormV3``, with the batch moments unless ``mean``/``variance`` are given.

    Returns ``(y, mean, variance, reserve)``: in training form the biased
    batch moments, and the three reserve spaces that ``FusedBatchNormGradV3``
    takes with the same input.
    """
    import tensorflow as tf

    training = mean is None
    empty = tf.constant([], tf.float32)
    y, mean, variance, *reserve = tf.raw_ops.FusedBatchNormV3(
        x=x,
        scale=scale,
        offset=offset,
        mean=empty if training else mean,
        variance=empty if training else variance,
        epsilon=epsilon,
        data_format="NHWC",
        is_training=training,
    )
    if training:
        # The kernel returns the unbiased (n - 1) batch variance; Keras keeps
        # the biased one in its moving average, as tf.nn.moments gives it.
        shape = tf.shape(x)
        count = tf.cast(shape[0] * shape[1] * shape[2], tf.float32)
        variance = tf.where(count > 1.0, variance * (count - 1.0) / count, 0.0)
    return y, mean, variance, reserve


def apart_from_the_next_op(y: Any) -> Any:
    """Keeps Grappler from fusing a training-mode BatchNorm with its ReLU on the CPU.

    With oneDNN, TensorFlow's remapper turns ``FusedBatchNormV3`` + ``Relu``
    into one ``_FusedBatchNormEx``; in training that op keeps more for its
    gradient: a DenseNet-BC-100-12 step at batch 64 held 2,716 MiB of tensors
    against 2,151 MiB unfused, and stepped in 1.67 s against 1.55 s
    (benchmarks/RESULTS.md, section 0). The remapper fuses only a ReLU whose
    input is the BatchNorm itself; ``EnsureShape`` between them passes the
    same buffer on, costs nothing and survives Grappler's pruning. `_fused`
    applies it when the step is traced and TensorFlow sees no GPU: a GPU
    keeps cuDNN's fused op (not measured here), and so does a CPU op placed
    explicitly on a machine that has a GPU. `keras_densenet.recompute`
    applies it on every device: its backward pass takes the reserve space of
    the unfused op.
    """
    import tensorflow as tf

    return tf.ensure_shape(y, y.shape)


def batch_norm_pure(bn: keras.layers.BatchNormalization, x: Any) -> tuple[Any, Any, Any]:
    """Training-mode BatchNormalization without its state update.

    The pure form that a rematerialized (``keras.remat``) function needs:
    ``jax.checkpoint`` refuses state updates inside it and TensorFlow's
    ``recompute_grad`` would apply them twice. Pair it with
    `update_moving_statistics` outside the recomputed function. On the
    TensorFlow backend it runs the fused kernel where that applies.

    Args:
        bn: A built BatchNormalization over the last axis.
        x: Its input (NHWC).

    Returns:
        ``(y, mean, variance)``: the normalized output in ``bn``'s compute
        dtype, and the biased batch moments (float32 or wider).
    """
    if fusable(bn, x):
        y, mean, variance = _fused(bn, x, training=True)
        return ops.cast(y, bn.compute_dtype), mean, variance
    # BatchNormalization upcasts half-precision inputs the same way.
    x = ops.cast(x, keras.backend.result_type(x.dtype, "float32"))
    mean, variance = bn._moments(x, None)
    y = ops.batch_normalization(
        x,
        mean,
        variance,
        axis=-1,
        offset=ops.cast(bn.beta, x.dtype),
        scale=ops.cast(bn.gamma, x.dtype),
        epsilon=bn.epsilon,
    )
    return ops.cast(y, bn.compute_dtype), mean, variance


def update_moving_statistics(bn: keras.layers.BatchNormalization, mean: Any, variance: Any) -> None:
    """Folds batch moments into ``bn``'s moving averages, as BatchNormalization does.

    Args:
        bn: The BatchNormalization whose ``moving_mean``/``moving_variance``
            are updated with its ``momentum``.
        mean: Batch mean from `batch_norm_pure`.
        variance: Batch variance from `batch_norm_pure`.
    """
    mean, variance = ops.stop_gradient(mean), ops.stop_gradient(variance)
    for moving, batch in ((bn.moving_mean, mean), (bn.moving_variance, variance)):
        current = ops.cast(moving, batch.dtype)
        moving.assign(current * bn.momentum + batch * (1.0 - bn.momentum))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` that runs TensorFlow's fused kernel.

    The same arguments, weights and moving-average rule as the Keras layer;
    on the TensorFlow backend, for a 4D NHWC input normalized over its last
    axis, training and inference each run one fused op (and its fused
    gradient) instead of Keras's separate moments, scale and shift. Elsewhere
    it is the Keras layer.

    Args:
        **kwargs: The arguments of ``keras.layers.BatchNormalization``.

    Example:
        >>> bn = BatchNormalization(epsilon=1.001e-5, momentum=0.9)
        >>> bn(keras.random.normal((2, 4, 4, 8)), training=True).shape
        (2, 4, 4, 8)
    """

    def call(self, inputs: Any, training: Any = None, mask: Any = None) -> Any:
        if mask is not None or not fusable(self, inputs):
            return super().call(inputs, training=training, mask=mask)
        if training and self.trainable:
            y, mean, variance = _fused(self, inputs, training=True)
            update_moving_statistics(self, mean, variance)
        else:
            y = _fused(self, inputs, training=False)[0]
        return ops.cast(y, self.compute_dtype)


__all__ = ["BatchNormalization", "batch_norm_pure", "update_moving_statistics"]
