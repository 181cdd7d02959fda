"""The fused BatchNormalization computes what Keras's own layer computes.

Every comparison is against ``keras.layers.BatchNormalization`` itself, with
the same weights and input: outputs, gradients (input, gamma, beta), the
moving statistics after a training step, and the inference output. A whole
DenseNet is also compared with the same network whose layers are all Keras's
(the fused path switched off), loss and every gradient.
"""

from __future__ import annotations

import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import TINY, assert_close, same_package_env

from keras_densenet import build_densenet, normalization
from keras_densenet.layers import DenseLayer
from keras_densenet.normalization import BatchNormalization, batch_norm_pure


def _pair(shape, epsilon=1.001e-5, dtype="float32", seed=0, **kwargs):
    rng = np.random.default_rng(seed)
    ours = BatchNormalization(epsilon=epsilon, momentum=0.9, dtype=dtype, **kwargs)
    plain = keras.layers.BatchNormalization(epsilon=epsilon, momentum=0.9, dtype=dtype, **kwargs)
    for bn in (ours, plain):
        bn.build(shape)
    channels = shape[-1]
    gamma = rng.uniform(0.5, 1.5, channels).astype("float32")
    beta = rng.standard_normal(channels).astype("float32")
    mean = rng.standard_normal(channels).astype("float32")
    var = rng.uniform(0.5, 2.0, channels).astype("float32")
    for bn in (ours, plain):
        for variable, value in zip(
            (bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance),
            (gamma, beta, mean, var),
            strict=True,
        ):
            variable.assign(value)
    return ours, plain


def _run(bn, x, upstream):
    """Training output, gradients, moving statistics, then the inference output."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = bn(x, training=True)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * upstream)
    grads = tape.gradient(loss, [x, bn.gamma, bn.beta])
    inference = bn(x, training=False)
    values = [y, *grads, bn.moving_mean, bn.moving_variance, inference]
    return [np.asarray(tf.cast(v, tf.float32)) for v in values]


def _compare(ours, plain, x, rtol, atol):
    upstream = tf.constant(np.random.default_rng(1).standard_normal(x.shape).astype("float32"))
    names = ["output", "d input", "d gamma", "d beta", "moving mean", "moving var", "inference"]
    for name, a, b in zip(names, _run(ours, x, upstream), _run(plain, x, upstream), strict=True):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=name)


def _ops(bn, x, training):
    graph = tf.function(lambda t: bn(t, training=training)).get_concrete_function(x).graph
    return {op.type for op in graph.get_operations()}


@pytest.mark.parametrize(
    ("shape", "epsilon"),
    [((8, 9, 9, 16), 1.001e-5), ((3, 5, 5, 7), 1e-5), ((2, 4, 4, 3), 1e-3), ((1, 1, 1, 6), 1e-3)],
)
def test_fused_layer_equals_keras_batchnormalization(shape, epsilon):
    ours, plain = _pair(shape, epsilon)
    x = tf.constant(np.random.default_rng(2).standard_normal(shape).astype("float32") * 3 + 1)
    _compare(ours, plain, x, rtol=2e-5, atol=2e-5)
    assert "FusedBatchNormV3" in _ops(ours, x, True)
    assert "FusedBatchNormV3" in _ops(ours, x, False)


@pytest.mark.parametrize("frozen", ["trainable=False", "training=False"])
def test_gradients_through_the_fused_inference_kernel(frozen):
    # Fine-tuning with frozen BatchNorm differentiates through the inference form.
    shape = (3, 5, 5, 7)
    ours, plain = _pair(shape)
    for bn in (ours, plain):
        bn.trainable = frozen != "trainable=False"
    x = tf.constant(np.random.default_rng(9).standard_normal(shape).astype("float32"))
    upstream = tf.constant(np.random.default_rng(10).standard_normal(shape).astype("float32"))
    grads = []
    for bn in (ours, plain):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = bn(x, training=frozen == "trainable=False")
            loss = tf.reduce_sum(y * upstream)
        grads.append([g.numpy() for g in tape.gradient(loss, [x, bn.gamma, bn.beta])])
    for a, b in zip(*grads, strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)
    assert "FusedBatchNormV3" in _ops(ours, x, frozen == "trainable=False")


def test_moving_variance_is_the_biased_batch_variance():
    # The fused kernel reports the (n - 1) variance; Keras averages the biased one.
    bn = BatchNormalization(momentum=0.0)
    x = np.random.default_rng(3).standard_normal((4, 3, 3, 5)).astype("float32")
    bn(x, training=True)
    np.testing.assert_allclose(bn.moving_variance.numpy(), x.var(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(bn.moving_mean.numpy(), x.mean(axis=(0, 1, 2)), atol=1e-6)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_fused_layer_under_mixed_precision(policy):
    shape = (4, 6, 6, 8)
    ours, plain = _pair(shape, dtype=policy)
    x = tf.constant(np.random.default_rng(4).standard_normal(shape).astype("float32"))
    x = tf.cast(x, ours.compute_dtype)
    # Half-precision outputs: both round the same float32 result; one ulp apart at most.
    tolerance = 1e-2 if policy == "mixed_bfloat16" else 2e-3
    _compare(ours, plain, x, rtol=tolerance, atol=tolerance)
    assert ours.compute_dtype == plain.compute_dtype
    assert ours(x, training=True).dtype == plain(x, training=True).dtype


@pytest.mark.parametrize(
    "case", ["epsilon below cuDNN's", "synchronized", "2D input", "renorm", "no scale"]
)
def test_keras_code_runs_where_the_fused_kernel_does_not_apply(case):
    shape = (2, 8) if case == "2D input" else (3, 4, 4, 5)
    kwargs = {
        "synchronized": {"synchronized": True},
        "renorm": {"renorm": True},
        "no scale": {"scale": False},
    }.get(case, {})
    epsilon = 1e-6 if case == "epsilon below cuDNN's" else 1e-3
    if case == "no scale":
        ours = BatchNormalization(epsilon=epsilon, **kwargs)
        plain = keras.layers.BatchNormalization(epsilon=epsilon, **kwargs)
        for bn in (ours, plain):
            bn.build(shape)
    else:
        ours, plain = _pair(shape, epsilon, **kwargs)
    x = tf.constant(np.random.default_rng(5).standard_normal(shape).astype("float32"))
    assert "FusedBatchNormV3" not in _ops(ours, x, True)
    np.testing.assert_allclose(
        ours(x, training=True).numpy(), plain(x, training=True).numpy(), rtol=1e-5, atol=1e-5
    )


def test_batch_norm_pure_leaves_the_moving_statistics_alone():
    ours, plain = _pair((3, 4, 4, 6))
    x = tf.constant(np.random.default_rng(6).standard_normal((3, 4, 4, 6)).astype("float32"))
    before = [w.copy() for w in ours.get_weights()]
    y, mean, variance = batch_norm_pure(ours, x)
    for a, b in zip(ours.get_weights(), before, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(y.numpy(), plain(x, training=True).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mean.numpy(), x.numpy().mean(axis=(0, 1, 2)), atol=1e-6)
    np.testing.assert_allclose(variance.numpy(), x.numpy().var(axis=(0, 1, 2)), rtol=1e-5)


def _loss_and_gradients(model, x, y):
    with tf.GradientTape() as tape:
        logits = model(x, training=True)
        loss = keras.losses.sparse_categorical_crossentropy(y, logits)
    return loss.numpy(), [g.numpy() for g in tape.gradient(loss, model.trainable_weights)]


@pytest.mark.parametrize("memory_efficient", [False, True])
def test_a_densenet_trains_as_with_keras_batchnormalization(monkeypatch, memory_efficient):
    x = np.random.default_rng(7).standard_normal((4, 28, 28, 1)).astype("float32")
    y = np.arange(4) % 10
    config = {**TINY, "stem": "imagenet", "memory_efficient": memory_efficient}
    keras.utils.set_random_seed(0)
    fused = build_densenet(**config)
    monkeypatch.setattr(normalization, "fusable", lambda bn, x: False)
    keras.utils.set_random_seed(0)
    plain = build_densenet(**config)
    plain.set_weights(fused.get_weights())
    loss_plain, grads_plain = _loss_and_gradients(plain, x, y)
    monkeypatch.undo()
    loss_fused, grads_fused = _loss_and_gradients(fused, x, y)
    np.testing.assert_allclose(loss_fused, loss_plain, rtol=1e-5)
    assert len(grads_fused) == len(grads_plain)
    for weight, a, b in zip(fused.trainable_weights, grads_fused, grads_plain, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=weight.path)
    for a, b in zip(fused.non_trainable_weights, plain.non_trainable_weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)


def test_every_batchnormalization_of_a_densenet_is_the_fused_one():
    model = build_densenet(**{**TINY, "stem": "imagenet"})
    kinds = {
        type(layer)
        for layer in model._flatten_layers()
        if isinstance(layer, keras.layers.BatchNormalization)
    }
    assert kinds == {BatchNormalization}
    dense = next(layer for layer in model._flatten_layers() if isinstance(layer, DenseLayer))
    assert isinstance(dense.bn2, BatchNormalization)


def test_xla_training_step_equals_the_plain_one():
    x = np.random.default_rng(8).standard_normal((4, 28, 28, 1)).astype("float32")
    y = np.arange(4) % 10
    losses, statistics = [], []
    for jit in (False, True):
        keras.utils.set_random_seed(0)
        model = build_densenet(**TINY)
        model.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss="sparse_categorical_crossentropy",
            jit_compile=jit,
        )
        losses.append([float(model.train_on_batch(x, y)) for _ in range(3)])
        statistics.append([w.numpy() for w in model.non_trainable_weights])
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4)
    for a, b in zip(*statistics, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert losses[0][2] < losses[0][0]


@pytest.mark.parametrize("shape", [(3, 4, 6, 5), (2, 1, 1, 4)], ids=["non-square", "two values"])
def test_moving_variance_counts_every_value_per_channel(shape):
    # n = batch * height * width: a non-square map and n = 2 check the count.
    bn = BatchNormalization(momentum=0.0)
    x = np.random.default_rng(11).standard_normal(shape).astype("float32")
    bn(x, training=True)
    np.testing.assert_allclose(bn.moving_variance.numpy(), x.var(axis=(0, 1, 2)), rtol=1e-5)


def test_an_explicit_last_axis_uses_the_fused_kernel():
    x = tf.constant(np.random.default_rng(12).standard_normal((2, 3, 3, 4)).astype("float32"))
    bn = BatchNormalization(axis=3)
    bn.build(x.shape)
    assert "FusedBatchNormV3" in _ops(bn, x, True)


def test_float64_runs_keras_code():
    shape = (2, 3, 3, 4)
    ours, plain = _pair(shape, dtype="float64")
    x = tf.constant(np.random.default_rng(13).standard_normal(shape))
    assert "FusedBatchNormV3" not in _ops(ours, x, True)
    np.testing.assert_allclose(ours(x, training=True).numpy(), plain(x, training=True).numpy())


def test_a_mask_runs_keras_code_with_the_mask():
    shape = (2, 3, 3, 4)
    ours, plain = _pair(shape)
    x = tf.constant(np.random.default_rng(14).standard_normal(shape).astype("float32"))
    mask = tf.constant(np.arange(18).reshape(2, 3, 3) % 3 != 0)
    assert_close(ours(x, training=True, mask=mask), plain(x, training=True, mask=mask), 1e-6)
    assert_close(ours.moving_mean.numpy(), plain.moving_mean.numpy(), 1e-6)


@pytest.mark.parametrize(
    ("epsilon", "policy"),
    [(1e-6, "mixed_bfloat16"), (1e-3, "mixed_bfloat16"), (1e-6, "float64")],
    ids=["keras code", "fused", "float64"],
)
def test_batch_norm_pure_keeps_the_compute_dtype(epsilon, policy):
    # epsilon below 1e-5 and float64 run Keras's ops; 1e-3 in bfloat16 the fused kernel.
    shape = (2, 3, 3, 4)
    ours, plain = _pair(shape, epsilon=epsilon, dtype=policy)
    x = tf.cast(np.random.default_rng(15).standard_normal(shape), ours.compute_dtype)
    y, mean, _ = batch_norm_pure(ours, x)
    assert y.dtype == x.dtype
    assert mean.dtype == (tf.float64 if policy == "float64" else tf.float32)
    expected = tf.cast(plain(x, training=True), tf.float32).numpy()
    np.testing.assert_allclose(tf.cast(y, tf.float32).numpy(), expected, rtol=1e-2, atol=1e-2)
    if policy == "float64":  # exactly the layer's computation, its epsilon included
        np.testing.assert_allclose(y.numpy(), plain(x, training=True).numpy(), rtol=1e-9)
    np.testing.assert_allclose(
        tf.cast(y, tf.float32).numpy(),
        tf.cast(plain(x, training=True), tf.float32).numpy(),
        rtol=1e-2,
        atol=1e-2,
    )


_REMAPPER_PROBE = """
import sys

import keras
import numpy as np

from keras_densenet import build_densenet, normalization

if sys.argv[1] == "unblocked":
    normalization.apart_from_the_next_op = lambda y: y
model = build_densenet(**{tiny})
model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
x = np.random.default_rng(0).standard_normal((4, 28, 28, 1)).astype("float32")
model.train_on_batch(x, np.arange(4))
"""


def _remapper_fusions(variant: str) -> int:
    """BN+ReLU pairs Grappler fused in a training step on the CPU, from its log."""
    env = same_package_env(
        normalization,
        TF_ENABLE_ONEDNN_OPTS="1",  # the remapper fuses BN+ReLU on a CPU only with oneDNN
        TF_CPP_MIN_LOG_LEVEL="0",
        TF_CPP_VMODULE="remapper=2",
        CUDA_VISIBLE_DEVICES="",
    )
    probe = _REMAPPER_PROBE.replace("{tiny}", repr(TINY))
    done = subprocess.run(
        [sys.executable, "-c", probe, variant],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr.count("Fuse Relu with FusedBatchNorm")


def test_training_keeps_batchnorm_and_relu_apart_on_the_cpu():
    """oneDNN's fused BN+ReLU holds more for its gradient: training never gets it."""
    # In-process too, so that mutation testing maps this test to the code it checks
    # (the child process inherits the mutant).
    BatchNormalization()(tf.zeros((1, 2, 2, 3)), training=True)
    # If this fails, TensorFlow no longer fuses (or logs) BN+ReLU on the CPU: the guard
    # and this test should be revisited.
    assert _remapper_fusions("unblocked") > 0
    assert _remapper_fusions("ours") == 0


def _relu_input_chain(training: bool) -> list[str]:
    """Op types from the ReLU back to the BatchNorm kernel in a traced function."""
    bn = BatchNormalization()
    bn.build((None, 4, 4, 3))
    traced = tf.function(lambda x: tf.nn.relu(bn(x, training=training)))
    graph = traced.get_concrete_function(tf.TensorSpec((None, 4, 4, 3))).graph
    (op,) = [op for op in graph.get_operations() if op.type == "Relu"]
    chain = []
    while op.type != "FusedBatchNormV3":
        op = op.inputs[0].op
        chain.append(op.type)
    return chain


def test_the_guard_sits_between_batchnorm_and_relu_in_training_without_a_gpu(monkeypatch):
    """Inference keeps the fusion (no backward pass); GPUs keep cuDNN's fused BN+ReLU."""
    real = tf.config.list_logical_devices
    guarded = ["EnsureShape", "FusedBatchNormV3"]
    assert _relu_input_chain(training=True) == (["FusedBatchNormV3"] if real("GPU") else guarded)
    assert _relu_input_chain(training=False) == ["FusedBatchNormV3"]

    def with_a_gpu(device_type=None):
        if device_type == "GPU":
            return [tf.config.LogicalDevice("/device:GPU:0", "GPU")]
        return real(device_type)

    monkeypatch.setattr(tf.config, "list_logical_devices", with_a_gpu)
    assert _relu_input_chain(training=True) == ["FusedBatchNormV3"]
