"""The memory-efficient DenseLayer's training pass on TensorFlow, with its own backward pass.

A memory-efficient `DenseLayer` keeps only its ``growth_rate`` new maps from
the forward pass. ``keras.remat`` (``tf.recompute_grad`` on TensorFlow) runs
the layer forward once more in the backward pass and differentiates that:
both training-mode BatchNormalizations again (a pass over each input for its
batch moments, then one to normalize) and both convolutions. `recompute_layer`
runs a layer's BN-ReLU-Conv stages forward, storing only the batch moments
(and, if asked, the bottleneck's maps), and writes out their backward pass:
it concatenates the inputs again, normalizes each stage's input with the
moments the forward pass found (one ``FusedBatchNormV3`` pass in inference
form), recomputes the bottleneck's 1x1 convolution only where its maps were
not stored, never the 3x3 one, and calls each op's gradient kernel itself:
``FusedBatchNormGradV3`` with the forward pass's reserve space, ``ReluGrad``,
``Conv2DBackpropInput`` and ``Conv2DBackpropFilter``. Outputs, gradients and
moving statistics equal the normal layer's within float rounding
(``tests/test_memory.py``); benchmarks/RESULTS.md has its time and memory.

It applies on the TensorFlow backend in training, where every stage's
BatchNormalization is trainable and runs TensorFlow's fused kernel
(`applies`); elsewhere the layer uses ``keras.remat``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from keras_densenet.normalization import (
    apart_from_the_next_op,
    fusable,
    fused_batch_norm,
    update_moving_statistics,
)

#: One stage of a DenseLayer: a BatchNormalization, then ReLU, then this convolution.
Stage = tuple[keras.layers.BatchNormalization, keras.layers.Conv2D]


def applies(stages: Sequence[Stage], x: Any, training: Any) -> bool:
    """Whether `recompute_layer` computes these stages on the input ``x``.

    Args:
        stages: The layer's ``(BatchNormalization, Conv2D)`` pairs, in order.
        x: The layer's (first) input tensor.
        training: The layer's ``training`` argument.

    Returns:
        True on the TensorFlow backend in training, when every BatchNorm is
        trainable and runs the fused kernel, and every convolution is a
        stride-1, bias-free, ``same``-padded NHWC one.
    """
    return bool(training) and all(
        bn.trainable
        and fusable(bn, x)
        and not conv.use_bias
        and conv.padding == "same"
        and tuple(conv.strides) == (1, 1)
        and tuple(conv.dilation_rate) == (1, 1)
        and conv.groups == 1
        and conv.data_format == "channels_last"
        for bn, conv in stages
    )


def train_layer(
    inputs: Any, stages: Sequence[Stage], store_between: bool, training: Any
) -> Any | None:
    """`recompute_layer` with the moving statistics updated, where `applies` holds.

    Args:
        inputs: One NHWC tensor, or the list of them the layer concatenates.
        stages: The layer's ``(BatchNormalization, Conv2D)`` pairs (none: a
            form this module does not compute).
        store_between: As for `recompute_layer`.
        training: The layer's ``training`` argument.

    Returns:
        The last convolution's output, or None where `applies` does not
        hold (the caller then uses ``keras.remat``).
    """
    xs = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    if not stages or not applies(stages, xs[0], training):
        return None
    output, moments = recompute_layer(xs, stages, store_between)
    for (bn, _), mean, variance in zip(stages, moments[0::2], moments[1::2], strict=True):
        update_moving_statistics(bn, mean, variance)
    return output


def _after(xs: Sequence[Any], gradient: Any) -> list[Any]:
    """``xs`` with a zero added to the narrowest, a zero computed from ``gradient``.

    A data dependency on ``gradient`` that costs one copy of the narrowest
    input, as ``tf.recompute_grad`` does for XLA (its zero is NaN only if the
    gradient's first element is, which would make the gradient NaN anyway).
    """
    import tensorflow as tf

    first = tf.reduce_max(tf.reshape(gradient, [-1])[:1])
    zero = tf.where(first == first, 0.0, float("nan"))
    narrowest = min(range(len(xs)), key=lambda i: xs[i].shape[-1] or 0)
    return [x + tf.cast(zero, x.dtype) if i == narrowest else x for i, x in enumerate(xs)]


def recompute_layer(
    inputs: Sequence[Any], stages: Sequence[Stage], store_between: bool
) -> tuple[Any, list[Any]]:
    """Runs BN-ReLU-Conv stages on the concatenated inputs, recomputing them in the backward pass.

    Args:
        inputs: The NHWC tensors the layer concatenates along channels.
        stages: The ``(BatchNormalization, Conv2D)`` pairs, for which
            `applies` holds.
        store_between: Keep each later stage's input (a bottleneck layer's
            1x1 convolution output) from the forward pass instead of
            recomputing it.

    Returns:
        ``(output, moments)``: the last convolution's output, and each
        stage's biased batch mean and variance, in order
        (``[mean_1, variance_1, mean_2, ...]``) for
        `update_moving_statistics`.
    """
    import tensorflow as tf

    inputs = list(inputs)
    epsilons = [bn.epsilon for bn, _ in stages]
    params = []
    for bn, conv in stages:
        params += [
            tf.cast(bn.gamma, tf.float32),
            tf.cast(bn.beta, tf.float32),
            tf.cast(conv.kernel, conv.compute_dtype),
        ]

    def concat(xs: Sequence[Any]) -> Any:
        return tf.concat(list(xs), axis=-1)  # (one input: the tensor itself, not a copy)

    def conv2d(x: Any, kernel: Any) -> Any:
        return tf.nn.conv2d(x, kernel, strides=1, padding="SAME")

    @tf.custom_gradient
    def layer(*args: Any) -> Any:
        xs, weights = args[: len(inputs)], args[len(inputs) :]
        gammas, betas, kernels = weights[0::3], weights[1::3], weights[2::3]
        moments, reserves, kept = [], [], []
        h = concat(xs)
        for i, (gamma, beta, kernel, epsilon) in enumerate(
            zip(gammas, betas, kernels, epsilons, strict=True)
        ):
            if i and store_between:
                kept.append(h)  # a later stage's input (the bottleneck's maps)
            y, mean, variance, reserve = fused_batch_norm(h, gamma, beta, epsilon)
            moments += [mean, variance]
            reserves.append(reserve)
            # Always apart: a remapped BatchNorm+ReLU would hand back another reserve space.
            h = conv2d(tf.nn.relu(apart_from_the_next_op(y)), kernel)

        def gradient(d_out: Any, *unused: Any) -> list[Any]:
            stage_inputs: list[Any] = [None] * len(stages)
            relus: list[Any] = [None] * len(stages)

            def recompute(i: int, after: Any) -> None:
                """Stage i's input and BN-ReLU output, once ``after`` (a gradient) exists.

                The control dependency orders it for TensorFlow's executor; the
                data dependency (`_after`) for XLA, which ignores control
                dependencies. Together they keep Grappler and XLA from merging the
                recomputed concatenation with the forward pass's (which would keep
                the forward maps alive) and from running it before it is needed.
                """
                with tf.control_dependencies([after]):
                    if i == 0:
                        x = concat(_after(xs, after))
                    elif kept:
                        x = kept[i - 1]
                    else:
                        if relus[i - 1] is None:
                            recompute(i - 1, after)
                        x = conv2d(relus[i - 1], kernels[i - 1])
                    mean, variance = moments[2 * i], moments[2 * i + 1]
                    y = fused_batch_norm(x, gammas[i], betas[i], epsilons[i], mean, variance)[0]
                stage_inputs[i], relus[i] = x, tf.nn.relu(y)

            grads: list[Any] = []
            d = d_out
            for i in reversed(range(len(stages))):
                if relus[i] is None:
                    recompute(i, d)
                kernel, relu = kernels[i], relus[i]
                conv_args = {"strides": [1, 1, 1, 1], "padding": "SAME", "out_backprop": d}
                d_kernel = tf.raw_ops.Conv2DBackpropFilter(
                    input=relu, filter_sizes=tf.shape(kernel), **conv_args
                )
                d_relu = tf.raw_ops.Conv2DBackpropInput(
                    input_sizes=tf.shape(relu), filter=kernel, **conv_args
                )
                d, d_gamma, d_beta, *_ = tf.raw_ops.FusedBatchNormGradV3(
                    y_backprop=tf.raw_ops.ReluGrad(gradients=d_relu, features=relu),
                    x=stage_inputs[i],
                    scale=gammas[i],
                    reserve_space_1=reserves[i][0],
                    reserve_space_2=reserves[i][1],
                    reserve_space_3=reserves[i][2],
                    epsilon=epsilons[i],
                    data_format="NHWC",
                    is_training=True,
                )
                grads = [d_gamma, d_beta, d_kernel, *grads]
            if len(xs) == 1:
                return [d, *grads]
            sizes = [x.shape[-1] if x.shape[-1] is not None else tf.shape(x)[-1] for x in xs]
            return [*tf.split(d, sizes, axis=-1), *grads]

        return (h, *moments), gradient

    output, *moments = layer(*inputs, *params)
    return output, moments
