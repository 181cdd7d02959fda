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

from keras_densenet.normalization import _apart_from_the_next_op, _fusable, _fused_op

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
        and _fusable(bn, x)
        and not conv.use_bias
        and conv.padding == "same"
        and tuple(conv.strides) == (1, 1)
        and tuple(conv.dilation_rate) == (1, 1)
        and conv.groups == 1
        and conv.data_format == "channels_last"
        for bn, conv in stages
    )


def recompute_layer(
    inputs: Sequence[Any], stages: Sequence[Stage], store_between: bool = False
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
        return tf.concat(list(xs), axis=-1) if len(xs) > 1 else xs[0]

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
            y, mean, variance, reserve = _fused_op(h, gamma, beta, epsilon)
            moments += [mean, variance]
            reserves.append(reserve)
            # Always apart: a remapped BatchNorm+ReLU would hand back another reserve space.
            h = conv2d(tf.nn.relu(_apart_from_the_next_op(y)), kernel)

        def gradient(d_out: Any, *unused: Any) -> list[Any]:
            # Under a control dependency on the incoming gradient, Grappler can
            # neither merge the recomputation with the forward pass (which would
            # keep the forward maps alive) nor run it before it is needed.
            with tf.control_dependencies([d_out]):
                stage_inputs, relus = [concat(xs)], []
                for i, (gamma, beta) in enumerate(zip(gammas, betas, strict=True)):
                    if i and kept:
                        stage_inputs.append(kept[i - 1])
                    elif i:
                        stage_inputs.append(conv2d(relus[-1], kernels[i - 1]))
                    mean, variance = moments[2 * i], moments[2 * i + 1]
                    y = _fused_op(stage_inputs[i], gamma, beta, epsilons[i], mean, variance)[0]
                    relus.append(tf.nn.relu(y))
                grads: list[Any] = []
                d = d_out
                for i in reversed(range(len(stages))):
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
                if len(xs) > 1:
                    d_inputs = tf.split(d, [int(x.shape[-1]) for x in xs], axis=-1)
                else:
                    d_inputs = [d]
                return [*d_inputs, *grads]

        return (h, *moments), gradient

    output, *moments = layer(*inputs, *params)
    return output, moments
