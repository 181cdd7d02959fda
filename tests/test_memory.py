"""build_densenet(memory_efficient=True) computes exactly what the normal mode does.

Recomputing each dense layer in the backward pass must change memory only:
outputs, losses, gradients, BatchNormalization moving statistics and the
weights after ``fit`` all match the normal mode with the same weights, in
float32 and in graph mode. Memory and speed are measured in
``benchmarks/memory_scaling.py``, never asserted here.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import TINY

from keras_densenet import DenseBlock, DenseLayer, build_densenet

CONFIG = {**TINY, "input_shape": (16, 16, 3), "num_classes": 3}
RTOL, ATOL = 1e-5, 1e-6


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


@pytest.mark.parametrize("bottleneck", [True, False])
def test_loss_gradients_and_bn_statistics_match_in_graph_mode(bottleneck):
    normal, efficient = _pair(bottleneck=bottleneck)
    x, y = _data()
    loss_fn = keras.losses.SparseCategoricalCrossentropy()

    def make_step(model):
        @tf.function
        def step(images, labels):
            with tf.GradientTape() as tape:
                loss = loss_fn(labels, model(images, training=True))
            return loss, tape.gradient(loss, model.trainable_weights)

        return step

    loss_n, grads_n = make_step(normal)(x, y)
    loss_e, grads_e = make_step(efficient)(x, y)
    np.testing.assert_allclose(loss_e.numpy(), loss_n.numpy(), rtol=RTOL)
    assert len(grads_e) == len(grads_n) == len(normal.trainable_weights)
    for g_e, g_n, w in zip(grads_e, grads_n, normal.trainable_weights, strict=True):
        assert g_e is not None, w.path
        np.testing.assert_allclose(g_e.numpy(), g_n.numpy(), rtol=1e-4, atol=1e-6, err_msg=w.path)
    # One forward pass in training mode updates every moving statistic once.
    _assert_same_weights(normal.non_trainable_weights, efficient.non_trainable_weights, "BN")
    moving = [w for w in normal.non_trainable_weights if "moving_mean" in w.path]
    assert moving and not any(np.allclose(w.numpy(), 0.0) for w in moving)


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
def test_with_dropout_in_training_each_layer_is_still_recomputed(monkeypatch, bottleneck):
    """Only a bottleneck's inner dropout keeps a layer from the whole-layer recomputation."""
    recomputed = []
    real_remat = keras.remat

    def remat(function):
        recomputed.append(function.__name__)
        return real_remat(function)

    monkeypatch.setattr(keras, "remat", remat)
    layer = DenseLayer(4, bottleneck=bottleneck, dropout_rate=0.3, memory_efficient=True)
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 6)).astype("float32")
    assert layer(x, training=True).shape == (2, 8, 8, 4)  # a single tensor, not a list
    assert recomputed == (["bottleneck"] if bottleneck else ["layer"])
