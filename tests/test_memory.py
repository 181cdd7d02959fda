"""build_densenet(memory_efficient=True) computes exactly what the normal mode does.

Recomputing each dense layer in the backward pass must change memory only:
outputs, losses, gradients, BatchNormalization moving statistics and the
weights after ``fit`` all match the normal mode with the same weights, in
float32 and in graph mode. Every test runs on both of the mode's paths:
TensorFlow's hand-written backward pass (`keras_densenet.recompute`) and
``keras.remat``, which the JAX and PyTorch backends (and TensorFlow, where
the first does not apply) use. Memory and speed are measured in
``benchmarks/memory_scaling.py``, never asserted here.
"""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import TINY, same_package_env

from keras_densenet import DenseBlock, DenseLayer, build_densenet, recompute

CONFIG = {**TINY, "input_shape": (16, 16, 3), "num_classes": 3}
RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(autouse=True, params=["recompute", "remat"])
def path(request, monkeypatch):
    """Which path the memory-efficient mode takes on TensorFlow."""
    if request.param == "remat":
        monkeypatch.setattr(recompute, "applies", lambda *args: False)
    return request.param


@pytest.fixture
def recomputed(monkeypatch):
    """Each call of `recompute.recompute_layer`: its stages' convolutions, store_between."""
    calls = []
    real = recompute.recompute_layer

    def recompute_layer(inputs, stages, *args):
        calls.append(([conv.name.rsplit("_", 2)[-2] for _, conv in stages], *args))
        return real(inputs, stages, *args)

    monkeypatch.setattr(recompute, "recompute_layer", recompute_layer)
    return calls


def _pair(**overrides):
    """A normal and a memory-efficient model with the same weights."""
    normal = build_densenet(**{**CONFIG, **overrides})
    efficient = build_densenet(**{**CONFIG, **overrides}, memory_efficient=True)
    efficient.set_weights(normal.get_weights())
    return normal, efficient


def _data(batch: int = 8):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, *CONFIG["input_shape"])).astype("float32")
    y = rng.integers(0, CONFIG["num_classes"], size=(batch,)).astype("int32")
    return x, y


def _assert_same_weights(a, b, what):
    assert len(a) == len(b)
    for w_a, w_b in zip(a, b, strict=True):
        np.testing.assert_allclose(
            np.asarray(w_a), np.asarray(w_b), rtol=1e-4, atol=1e-5, err_msg=f"{what}: {w_b.path}"
        )


def test_efficient_flag_reaches_every_dense_layer():
    _, efficient = _pair()
    blocks = [layer for layer in efficient.layers if isinstance(layer, DenseBlock)]
    assert blocks and all(block.memory_efficient for block in blocks)
    assert all(
        isinstance(dense, DenseLayer) and dense.memory_efficient
        for block in blocks
        for dense in block.dense_layers
    )


@pytest.mark.parametrize("bottleneck", [True, False])
@pytest.mark.parametrize(
    ("training", "dropout_rate"),
    # (dropout in training draws masks: test_dropout_in_training_gives_the_normal_gradients)
    [(False, 0.0), (True, 0.0), (False, 0.3)],
)
def test_forward_outputs_match(bottleneck, training, dropout_rate):
    normal, efficient = _pair(bottleneck=bottleneck, dropout_rate=dropout_rate)
    x, _ = _data()
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(efficient(x, training=training)),
        keras.ops.convert_to_numpy(normal(x, training=training)),
        rtol=RTOL,
        atol=ATOL,
    )


#: Bottleneck 2 channels, so layers with 8 input channels or more store its maps:
#: in block 1 the second layer (6 + 2 channels), in block 2 none (5, 7).
SOME_STORED = {"growth_rate": 2, "bottleneck_width": 1, "num_init_features": 6}


def test_layers_store_the_bottleneck_where_its_input_is_4x_wider():
    _, efficient = _pair(**SOME_STORED)
    stored = [
        dense._stores_bottleneck
        for block in efficient.layers
        if isinstance(block, DenseBlock)
        for dense in block.dense_layers
    ]
    assert stored == [False, True, False, False]
    _, plain = _pair(bottleneck=False, num_init_features=64)
    blocks = [b for b in plain.layers if isinstance(b, DenseBlock)]
    assert not any(d._stores_bottleneck for b in blocks for d in b.dense_layers)


@pytest.mark.parametrize(
    ("overrides", "graph", "expected"),
    [
        ({}, True, [(["1", "2"], False)] * 4),
        ({}, False, [(["1", "2"], False)] * 4),
        ({"bottleneck": False}, True, [(["2"], False)] * 4),
        (SOME_STORED, True, [(["1", "2"], stored) for stored in (False, True, False, False)]),
    ],
    ids=["bottleneck", "bottleneck, eager", "no bottleneck", "some bottlenecks stored"],
)
def test_loss_gradients_and_bn_statistics_match(overrides, graph, expected, path, recomputed):
    normal, efficient = _pair(**overrides)
    x, y = _data()
    loss_fn = keras.losses.SparseCategoricalCrossentropy()

    def make_step(model):
        def step(images, labels):
            with tf.GradientTape() as tape:
                loss = loss_fn(labels, model(images, training=True))
            return loss, tape.gradient(loss, model.trainable_weights)

        return tf.function(step) if graph else step

    loss_n, grads_n = make_step(normal)(x, y)
    loss_e, grads_e = make_step(efficient)(x, y)
    # Each dense layer took the path under test: its stages (1x1 and 3x3, or 3x3 alone)
    # and whether its bottleneck's maps were stored.
    assert recomputed == (expected if path == "recompute" else [])
    np.testing.assert_allclose(loss_e.numpy(), loss_n.numpy(), rtol=RTOL)
    assert len(grads_e) == len(grads_n) == len(normal.trainable_weights)
    for g_e, g_n, w in zip(grads_e, grads_n, normal.trainable_weights, strict=True):
        assert g_e is not None, w.path
        np.testing.assert_allclose(g_e.numpy(), g_n.numpy(), rtol=1e-4, atol=1e-6, err_msg=w.path)
    # One forward pass in training mode updates every moving statistic once.
    _assert_same_weights(normal.non_trainable_weights, efficient.non_trainable_weights, "BN")
    moving = [w for w in normal.non_trainable_weights if "moving_mean" in w.path]
    assert moving and not any(np.allclose(w.numpy(), 0.0) for w in moving)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_outputs_gradients_and_bn_statistics_match(policy):
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        normal, efficient = _pair()
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    x, y = _data()
    results = []
    for model in (normal, efficient):

        @tf.function
        def step(images, labels, model=model):
            with tf.GradientTape() as tape:
                loss = keras.losses.sparse_categorical_crossentropy(
                    labels, model(images, training=True)
                )
            return tf.reduce_mean(loss), tape.gradient(loss, model.trainable_weights)

        results.append(step(x, y))
    (loss_n, grads_n), (loss_e, grads_e) = results
    np.testing.assert_allclose(loss_e.numpy(), loss_n.numpy(), rtol=1e-2)
    for a, b in zip(normal.non_trainable_weights, efficient.non_trainable_weights, strict=True):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-2, atol=1e-3, err_msg=a.path)
    outputs_n = keras.ops.convert_to_numpy(normal(x, training=True)).astype("float32")
    outputs_e = keras.ops.convert_to_numpy(efficient(x, training=True)).astype("float32")
    np.testing.assert_allclose(outputs_e, outputs_n, rtol=1e-2, atol=1e-2)
    for g_e, g_n, w in zip(grads_e, grads_n, normal.trainable_weights, strict=True):
        assert g_e.dtype == g_n.dtype == tf.float32, w.path
        # Half-precision rounding: the same gradient within 3% of its size.
        difference = np.linalg.norm(g_e.numpy() - g_n.numpy())
        assert difference <= 0.03 * np.linalg.norm(g_n.numpy()) + 1e-6, w.path


@pytest.mark.parametrize("jit_compile", [False, True])
def test_fit_gives_the_same_losses_and_weights(jit_compile):
    normal, efficient = _pair()
    initial = normal.get_weights()
    x, y = _data(16)
    histories = []
    for model in (normal, efficient):
        model.compile(
            optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
            loss="sparse_categorical_crossentropy",
            jit_compile=jit_compile,
        )
        history = model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        histories.append(history.history["loss"])
    np.testing.assert_allclose(histories[1], histories[0], rtol=1e-4)
    _assert_same_weights(normal.trainable_weights, efficient.trainable_weights, "trainable")
    _assert_same_weights(
        normal.non_trainable_weights, efficient.non_trainable_weights, "non-trainable"
    )
    # The weights moved: the comparison above is not between two untouched models.
    assert not np.allclose(initial[0], normal.get_weights()[0])


@pytest.mark.parametrize("frozen", ["bn1", "bn2"])
def test_frozen_batch_norm_uses_moving_statistics(frozen):
    normal, efficient = _pair()
    for model in (normal, efficient):
        for layer in model.layers:
            if isinstance(layer, DenseBlock):
                for dense in layer.dense_layers:
                    getattr(dense, frozen).trainable = False
    x, _ = _data()
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(efficient(x, training=True)),
        keras.ops.convert_to_numpy(normal(x, training=True)),
        rtol=RTOL,
        atol=ATOL,
    )
    _assert_same_weights(normal.non_trainable_weights, efficient.non_trainable_weights, "BN")


@pytest.mark.parametrize("bottleneck", [True, False])
@pytest.mark.parametrize("frozen", [False, True])
def test_dropout_in_training_gives_the_normal_gradients(bottleneck, frozen):
    # Dropout would draw new masks if it were recomputed in the backward pass,
    # so a layer with dropout keeps it outside the recomputed function. The
    # same global seed gives both models the same dropout masks.
    models = []
    for efficient in (False, True):
        keras.utils.set_random_seed(0)
        model = build_densenet(
            **CONFIG, bottleneck=bottleneck, dropout_rate=0.3, memory_efficient=efficient
        )
        for layer in model._flatten_layers():
            if frozen and isinstance(layer, DenseLayer):
                layer.input_batchnorm.trainable = False
        models.append(model)
    normal, efficient = models
    efficient.set_weights(normal.get_weights())
    x, y = _data()
    results = []
    for model in (normal, efficient):
        keras.utils.set_random_seed(1)
        with tf.GradientTape() as tape:
            loss = keras.losses.sparse_categorical_crossentropy(y, model(x, training=True))
        results.append((loss.numpy(), tape.gradient(loss, model.trainable_weights)))
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=RTOL)
    for g_e, g_n, w in zip(results[1][1], results[0][1], normal.trainable_weights, strict=True):
        np.testing.assert_allclose(g_e.numpy(), g_n.numpy(), rtol=1e-4, atol=1e-6, err_msg=w.path)
    _assert_same_weights(normal.non_trainable_weights, efficient.non_trainable_weights, "BN")


def test_memory_efficient_model_saves_and_reloads(tmp_path):
    _, efficient = _pair()
    x, y = _data()
    efficient.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    efficient.fit(x, y, epochs=1, verbose=0)
    path = tmp_path / "efficient.keras"
    efficient.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    assert all(layer.memory_efficient for layer in reloaded.layers if isinstance(layer, DenseBlock))
    np.testing.assert_allclose(
        reloaded.predict(x, verbose=0), efficient.predict(x, verbose=0), rtol=RTOL, atol=ATOL
    )
    # The reloaded model (optimizer state included) keeps training like the original.
    loss_a = efficient.train_on_batch(x, y)
    loss_b = reloaded.train_on_batch(x, y)
    np.testing.assert_allclose(loss_b, loss_a, rtol=1e-4)


@pytest.mark.parametrize("bottleneck", [True, False])
def test_with_dropout_in_training_each_layer_is_still_recomputed(monkeypatch, bottleneck, path):
    """Only a bottleneck's inner dropout keeps a layer from the whole-layer recomputation."""
    recomputed = []
    real_remat, real_recompute = keras.remat, recompute.recompute_layer

    def remat(function):
        recomputed.append(function.__name__)
        return real_remat(function)

    def recompute_layer(inputs, stages, *args):
        recomputed.append([conv.name for _, conv in stages])
        return real_recompute(inputs, stages, *args)

    monkeypatch.setattr(keras, "remat", remat)
    monkeypatch.setattr(recompute, "recompute_layer", recompute_layer)
    layer = DenseLayer(
        4, bottleneck=bottleneck, dropout_rate=0.3, memory_efficient=True, name="layer"
    )
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 6)).astype("float32")
    assert layer(x, training=True).shape == (2, 8, 8, 4)  # a single tensor, not a list
    if path == "remat":
        assert recomputed == (["bottleneck"] if bottleneck else ["layer"])
    else:
        assert recomputed == [["layer_1_conv"] if bottleneck else ["layer_2_conv"]]


_MEMORY_PROBE = """
import json, sys

import numpy as np
import tensorflow as tf
import keras

from keras_densenet import DenseBlock, recompute

if sys.argv[1] == "remat":
    recompute.applies = lambda *args: False
peaks = {}
for efficient in (False, True):
    keras.utils.set_random_seed(0)
    block = DenseBlock(16, 8, memory_efficient=efficient)
    x = tf.random.normal((16, 16, 16, 8))
    block.build(x.shape)

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(block(x, training=True) ** 2)
        return tape.gradient(loss, block.trainable_variables)

    step(x)
    tf.config.experimental.reset_memory_stats("CPU:0")
    before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    step(x)
    peaks[efficient] = tf.config.experimental.get_memory_info("CPU:0")["peak"] - before
print(json.dumps([peaks[False], peaks[True]]))
"""


def test_the_recomputation_does_not_keep_the_forward_maps(path):
    """Grappler must not merge the recomputation with the forward pass (nor run it early).

    A tensor-memory count (TensorFlow's BFC allocator on the CPU, in a child
    process) of one training step of a 16-layer block: the concatenations of
    the normal mode grow with the square of the depth, the memory-efficient
    mode's maps with the depth. A recomputation merged with the forward pass
    keeps the forward pass's maps and holds more than the normal mode.
    """
    done = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, path],
        env=same_package_env(recompute, TF_CPU_ALLOCATOR_USE_BFC="true", CUDA_VISIBLE_DEVICES=""),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    normal, efficient = json.loads(done.stdout.strip().splitlines()[-1])
    assert normal > 0
    assert efficient < 0.6 * normal, (normal, efficient)


_XLA_PROBE = """
import sys

import keras
import tensorflow as tf

from keras_densenet import DenseBlock, recompute

if sys.argv[1] == "remat":
    recompute.applies = lambda *args: False
keras.utils.set_random_seed(0)
block = DenseBlock(16, 8, memory_efficient=sys.argv[2] == "efficient")
x = tf.random.normal((16, 16, 16, 8))
block.build(x.shape)


@tf.function(jit_compile=True)
def step(x):
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(block(x, training=True) ** 2)
    return tape.gradient(loss, block.trainable_variables)


step(x)
"""


def _xla_bytes(path: str, mode: str, dump: pathlib.Path) -> int:
    """The bytes XLA's buffer assignment gives one compiled training step of a 16-layer block."""
    done = subprocess.run(
        [sys.executable, "-c", _XLA_PROBE, path, mode],
        env=same_package_env(recompute, XLA_FLAGS=f"--xla_dump_to={dump}", CUDA_VISIBLE_DEVICES=""),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    totals = [
        int(re.search(r"Total bytes used: (\d+)", f.read_text()).group(1))
        for f in dump.glob("*buffer-assignment.txt")
    ]
    assert totals, f"XLA wrote no buffer assignment to {dump}"
    return max(totals)  # the training step's module (the others are tiny)


@pytest.mark.parametrize("path", ["recompute"], indirect=True)
def test_after_adds_a_zero_from_the_gradient_to_the_narrowest_input(path):
    xs = [tf.fill((1, 2, 2, 3), 1.0), tf.fill((1, 2, 2, 1), 2.0), tf.fill((1, 2, 2, 2), 3.0)]
    out = recompute._after(xs, tf.constant([[5.0, float("nan")]]))
    assert out[0] is xs[0] and out[2] is xs[2] and out[1] is not xs[1]
    for got, x in zip(out, xs, strict=True):
        np.testing.assert_array_equal(got.numpy(), x.numpy())
    # The zero is computed from the gradient's first element (NaN only if that is).
    out = recompute._after(xs, tf.constant([[float("nan"), 1.0]]))
    assert np.isnan(out[1].numpy()).all() and out[0] is xs[0]
    half = [tf.ones((1, 1, 1, 2), "float16"), tf.ones((1, 1, 1, 1), "float16")]
    assert recompute._after(half, tf.ones((3,), "float16"))[1].dtype == tf.float16


@pytest.mark.parametrize("path", ["recompute"], indirect=True)  # (keras.remat: TensorFlow's own)
def test_under_xla_the_recomputation_does_not_keep_the_forward_maps(path, tmp_path):
    """XLA ignores control dependencies: a data dependency keeps it from merging the passes."""
    # In-process too, so that mutation testing maps this test to the code it checks.
    recompute._after([tf.zeros((1, 1, 1, 1))], tf.zeros((1,)))
    normal = _xla_bytes(path, "normal", tmp_path / "normal")
    efficient = _xla_bytes(path, "efficient", tmp_path / "efficient")
    assert efficient < 0.8 * normal, (normal, efficient)
