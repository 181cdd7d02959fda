"""DenseLayer, DenseBlock and TransitionLayer: structure, shapes, configs."""

from __future__ import annotations

import json
import re

import keras
import numpy as np
import pytest
from conftest import TINY, assert_close, assert_saved_model_round_trip

from keras_densenet import DenseBlock, DenseLayer, TransitionLayer, build_densenet
from keras_densenet.layers import BN_EPSILON

X = np.random.default_rng(0).normal(size=(2, 8, 8, 16)).astype("float32")


def _sublayers(layer):
    return {s.name: s for s in layer._flatten_layers(include_self=False)}


def test_dense_layer_bottleneck_structure():
    layer = DenseLayer(12, name="conv2_block1")
    out = layer(X)
    assert out.shape == (2, 8, 8, 12)  # only the k new maps
    subs = _sublayers(layer)
    assert subs["conv2_block1_1_conv"].kernel.shape == (1, 1, 16, 48)
    assert subs["conv2_block1_2_conv"].kernel.shape == (3, 3, 48, 12)
    for conv in ("conv2_block1_1_conv", "conv2_block1_2_conv"):
        assert subs[conv].use_bias is False
    for bn in ("conv2_block1_0_bn", "conv2_block1_1_bn"):
        # keras.applications' epsilon, so its weights give identical outputs;
        # PyTorch's momentum (0.1 there, 0.9 in Keras' convention), so the
        # moving statistics of a short run follow the trained weights.
        assert subs[bn].epsilon == 1.001e-5
        assert subs[bn].momentum == 0.9
    assert BN_EPSILON == 1.001e-5


@pytest.mark.parametrize(
    # Factories: a layer built at collection would run TensorFlow ops before any
    # test (and in mutmut's fork server, whose forked test processes then hang).
    "make",
    [
        lambda: DenseLayer(4, bn_momentum=0.5, name="l"),
        lambda: DenseLayer(4, bottleneck=False, bn_momentum=0.5, name="p"),
        lambda: DenseBlock(2, 4, bn_momentum=0.5, name="b"),
        lambda: DenseBlock(2, 4, bn_momentum=0.5, memory_efficient=True, name="e"),
        lambda: TransitionLayer(0.5, bn_momentum=0.5, name="t"),
    ],
    ids=["layer", "plain_layer", "block", "efficient_block", "transition"],
)
def test_bn_momentum_reaches_every_batchnorm_and_the_moving_averages(make):
    layer = make()
    layer.build(X.shape)
    bns = [s for s in layer._flatten_layers() if isinstance(s, keras.layers.BatchNormalization)]
    assert bns and all(bn.momentum == 0.5 for bn in bns)
    assert layer.get_config()["bn_momentum"] == 0.5
    # One training step moves the moving mean of the BN that reads the input
    # exactly half way to the batch mean.
    first = {
        "l": lambda: layer.bn1,
        "p": lambda: layer.bn2,
        "b": lambda: layer.dense_layers[0].bn1,
        "e": lambda: layer.dense_layers[0].bn1,
        "t": lambda: layer.bn,
    }[layer.name]()
    before = keras.ops.convert_to_numpy(first.moving_mean).copy()
    layer(X, training=True)
    after = keras.ops.convert_to_numpy(first.moving_mean)
    np.testing.assert_allclose(after, 0.5 * before + 0.5 * X.mean(axis=(0, 1, 2)), atol=1e-5)


def test_config_saved_before_bn_momentum_keeps_keras_applications_momentum():
    for layer in (DenseLayer(4), DenseBlock(2, 4), TransitionLayer(0.5)):
        config = layer.get_config()
        del config["bn_momentum"]  # as written by keras_densenet 0.1
        revived = type(layer).from_config(config)
        assert revived.bn_momentum == 0.99


def test_dense_layer_without_bottleneck_has_one_conv():
    layer = DenseLayer(12, bottleneck=False, name="d")
    assert layer(X).shape == (2, 8, 8, 12)
    kernels = [w.shape for w in layer.trainable_weights if len(w.shape) == 4]
    assert kernels == [(3, 3, 16, 12)]


def test_dense_layer_bottleneck_width():
    layer = DenseLayer(8, bottleneck_width=2, name="d")
    layer(X)
    assert _sublayers(layer)["d_1_conv"].kernel.shape == (1, 1, 16, 16)


@pytest.mark.parametrize(
    "options",
    [{}, {"bottleneck": False}, {"memory_efficient": True}],
    ids=["bottleneck", "plain", "memory_efficient"],
)
def test_dense_layer_accepts_list_of_features(options):
    # Batch statistics far from the initial moving ones (mean 0, variance 1), so
    # an inference call that used batch statistics would show.
    x = 2.0 * X + 1.0
    reference = DenseLayer(5, bottleneck=options.get("bottleneck", True), name="r")
    expected = keras.ops.convert_to_numpy(reference(x, training=False))
    layer = DenseLayer(5, **options, name="d")
    layer.build([(2, 8, 8, 10), (2, 8, 8, 6)])
    layer.set_weights(reference.get_weights())
    moving = [w.numpy().copy() for w in layer.non_trainable_weights]
    for inputs in ([x[..., :10], x[..., 10:]], x):  # a list is concatenated on channels
        out = keras.ops.convert_to_numpy(layer(inputs, training=False))
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    for before, w in zip(moving, layer.non_trainable_weights, strict=True):
        np.testing.assert_array_equal(w.numpy(), before, err_msg=w.path)  # inference
    assert layer.compute_output_shape([(None, 8, 8, 10), (None, 8, 8, 6)]) == (None, 8, 8, 5)
    assert layer.compute_output_shape([(None, 8, 8, 10)]) == (None, 8, 8, 5)
    assert layer.compute_output_shape((None, 8, 8, 16)) == (None, 8, 8, 5)


def test_dense_layer_dropout_only_in_training():
    layer = DenseLayer(6, dropout_rate=0.5)
    inference = keras.ops.convert_to_numpy(layer(X, training=False))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(X, training=False)), inference)
    trained = keras.ops.convert_to_numpy(layer(X, training=True))
    assert (trained == 0).mean() > 0.2


def test_dense_block_concatenation_order():
    block = DenseBlock(3, 4, name="conv2")
    out = keras.ops.convert_to_numpy(block(X))
    assert out.shape == (2, 8, 8, 16 + 3 * 4)
    np.testing.assert_array_equal(out[..., :16], X)  # the input comes first
    first_new = keras.ops.convert_to_numpy(block.dense_layers[0](X))
    assert_close(out[..., 16:20], first_new, 1e-6)
    second_new = keras.ops.convert_to_numpy(block.dense_layers[1](out[..., :20]))
    assert_close(out[..., 20:24], second_new, 1e-5)
    assert [layer.name for layer in block.dense_layers] == [
        "conv2_block1",
        "conv2_block2",
        "conv2_block3",
    ]


def test_dense_block_input_channels_per_layer():
    block = DenseBlock(4, 8, name="b")
    block.build((None, 8, 8, 16))
    widths = [layer.conv1.kernel.shape[2] for layer in block.dense_layers]
    assert widths == [16, 24, 32, 40]


@pytest.mark.parametrize(
    ("channels", "compression", "expected"),
    # floor, not round or ceil: 10 * 0.35 = 3.5 -> 3, 7 * 0.5 = 3.5 -> 3, 9 * 0.7 = 6.3 -> 6;
    # and 0.29 * 100, 28.999999999999996 in floating point, is 29.
    [
        (16, 0.5, 8),
        (10, 0.3, 3),
        (100, 0.29, 29),
        (7, 1.0, 7),
        (10, 0.35, 3),
        (7, 0.5, 3),
        (9, 0.7, 6),
        (2, 0.5, 1),  # one channel is enough
    ],
)
def test_transition_layer_compression_and_pool(channels, compression, expected):
    layer = TransitionLayer(compression, name="pool2")
    x = np.ones((1, 9, 9, channels), "float32")
    assert layer(x).shape == (1, 4, 4, expected)
    assert layer.conv.kernel.shape == (1, 1, channels, expected)
    assert layer.compute_output_shape((None, 9, 9, channels)) == (None, 4, 4, expected)
    assert layer.compute_output_shape((4, None, None, channels)) == (4, None, None, expected)
    assert layer.conv.use_bias is False
    assert layer.conv.name == "pool2_conv"


def test_transition_layer_refuses_zero_channels():
    with pytest.raises(ValueError, match="compression"):
        TransitionLayer(0.1)(np.ones((1, 4, 4, 5), "float32"))


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: DenseLayer(0), "growth_rate"),
        (lambda: DenseLayer(-3), "growth_rate"),
        (lambda: DenseLayer(12, dropout_rate=1.0), "dropout_rate"),
        (lambda: DenseLayer(12, bottleneck_width=0), "bottleneck_width"),
        (lambda: DenseBlock(0, 12), "num_layers"),
        (lambda: TransitionLayer(0.0), "compression"),
        (lambda: TransitionLayer(1.5), "compression"),
        (lambda: TransitionLayer(0.5, dropout_rate=-0.1), "dropout_rate"),
        (lambda: DenseLayer(4, bn_momentum=1.0), "bn_momentum"),
        (lambda: DenseBlock(2, 4, bn_momentum=-0.1), "bn_momentum"),
        (lambda: TransitionLayer(0.5, bn_momentum=float("nan")), "bn_momentum"),
        (lambda: DenseLayer(2**31), "growth_rate"),
    ],
)
def test_bad_layer_arguments(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: DenseLayer(4.0), "growth_rate"),
        (lambda: DenseLayer(True), "growth_rate"),
        (lambda: DenseBlock(2, 4, bn_momentum="0.9"), "bn_momentum"),
        (lambda: TransitionLayer("half"), "compression"),
    ],
)
def test_wrong_argument_types(factory, match):
    with pytest.raises(TypeError, match=match):
        factory()


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (
            lambda: DenseLayer(
                12,
                bottleneck=False,
                dropout_rate=0.1,
                bn_epsilon=1e-3,
                kernel_initializer="glorot_normal",
                kernel_regularizer="l2",
                name="a",
            ),
            {"growth_rate": 12, "bottleneck": False, "dropout_rate": 0.1, "bn_epsilon": 1e-3},
        ),
        (
            lambda: DenseBlock(3, 6, bottleneck_width=2, memory_efficient=True, name="b"),
            {"num_layers": 3, "growth_rate": 6, "bottleneck_width": 2, "memory_efficient": True},
        ),
        (
            lambda: TransitionLayer(0.7, dropout_rate=0.2, bn_momentum=0.5, name="c"),
            {"compression": 0.7, "dropout_rate": 0.2, "bn_momentum": 0.5},
        ),
        (lambda: DenseLayer(4, folded=True, name="f"), {"folded": True}),
        (lambda: DenseBlock(2, 4, folded=True, name="g"), {"folded": True}),
    ],
    ids=["dense_layer", "dense_block", "transition", "folded_layer", "folded_block"],
)
def test_config_round_trip(make, expected):
    layer = make()
    config = layer.get_config()
    assert {key: config[key] for key in expected} == expected
    clone = type(layer).from_config(config)
    for key, value in expected.items():
        assert getattr(clone, key) == value, key
    for attr in ("dropout_rate", "bn_momentum", "bn_epsilon"):
        assert getattr(clone, attr) == getattr(layer, attr), attr
    for attr in ("kernel_initializer", "kernel_regularizer"):
        mine, theirs = getattr(layer, attr), getattr(clone, attr)
        assert type(theirs) is type(mine), attr
        assert mine is None or theirs.get_config() == mine.get_config(), attr
    assert json.dumps(clone.get_config(), sort_keys=True) == json.dumps(config, sort_keys=True)
    serialized = keras.saving.serialize_keras_object(layer)
    assert serialized["registered_name"].startswith("keras_densenet>")
    revived = keras.saving.deserialize_keras_object(serialized)
    assert type(revived) is type(layer)


def test_layers_in_a_model_reload_safe_mode(tmp_path):
    inputs = keras.Input((8, 8, 16))
    x = DenseBlock(2, 4, name="b1")(inputs)
    x = TransitionLayer(0.5, name="t1")(x)
    x = DenseLayer(4, name="l1")(x)
    model = keras.Model(inputs, x)
    reloaded = assert_saved_model_round_trip(model, str(tmp_path / "m.keras"), X)
    assert isinstance(reloaded.get_layer("b1"), DenseBlock)


@pytest.mark.parametrize(
    ("what", "check"),
    [
        ("DenseLayer", lambda shape: DenseLayer(4).build(shape)),
        ("DenseLayer", lambda shape: DenseLayer(4).compute_output_shape([shape])),
        ("DenseBlock", lambda shape: DenseBlock(2, 4).build(shape)),
        ("DenseBlock", lambda shape: DenseBlock(2, 4).compute_output_shape(shape)),
        ("TransitionLayer", lambda shape: TransitionLayer(0.5).build(shape)),
        ("TransitionLayer", lambda shape: TransitionLayer(0.5).compute_output_shape(shape)),
    ],
)
def test_inputs_without_known_channels_are_refused_naming_the_layer(what, check):
    message = f"{what} needs a known number of channels, got (None, 8, 8, None)."
    with pytest.raises(ValueError, match=re.escape(message)):
        check((None, 8, 8, None))
    with pytest.raises(ValueError, match=re.escape(f"{what} expects a 4D NHWC input")):
        check((None, 8, 16))


@pytest.mark.parametrize(
    "make",
    [
        lambda **kw: DenseLayer(4, **kw),
        lambda **kw: DenseLayer(4, bottleneck=False, **kw),
        lambda **kw: DenseBlock(2, 4, **kw),
        lambda **kw: TransitionLayer(0.5, **kw),
    ],
    ids=["layer", "plain_layer", "block", "transition"],
)
def test_sublayers_get_the_layers_initializer_regularizer_and_dtype_policy(make):
    # An explicit policy that differs from the global float32 one.
    layer = make(
        kernel_initializer="glorot_normal",
        kernel_regularizer=keras.regularizers.L2(0.25),
        dtype="mixed_bfloat16",
    )
    layer.build(X.shape)
    subs = list(layer._flatten_layers(include_self=False))
    convs = [s for s in subs if isinstance(s, keras.layers.Conv2D)]
    bns = [s for s in subs if isinstance(s, keras.layers.BatchNormalization)]
    assert convs and bns
    for conv in convs:
        assert isinstance(conv.kernel_initializer, keras.initializers.GlorotNormal), conv.name
        assert conv.kernel_regularizer.get_config() == {"l2": 0.25}, conv.name
        assert conv.padding == "same"
    # One initializer instance per convolution (a shared unseeded one repeats values).
    assert len({id(conv.kernel_initializer) for conv in convs}) == len(convs)
    for sub in convs + bns:
        assert sub.dtype_policy.name == "mixed_bfloat16", sub.name
    out = layer(X)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    assert len(layer.losses) == len(convs)  # one L2 penalty per kernel


def test_layers_compute_in_policy_dtype():
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    block = DenseBlock(2, 4)
    out = block(X)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    for sub in block._flatten_layers(include_self=True):
        assert sub.compute_dtype == "bfloat16", sub.name
        for w in sub.weights:
            assert keras.backend.standardize_dtype(w.dtype) == "float32", w.path


def _loss_and_grads(block, x):
    import tensorflow as tf

    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(block(x, training=True)))
    return loss, tape.gradient(loss, block.trainable_weights)


def test_memory_efficient_matches_normal_mode():
    normal = DenseBlock(3, 4, name="n")
    efficient = DenseBlock(3, 4, memory_efficient=True, name="e")
    normal.build(X.shape)
    efficient.build(X.shape)
    efficient.set_weights(normal.get_weights())
    loss_n, grads_n = _loss_and_grads(normal, X)
    loss_e, grads_e = _loss_and_grads(efficient, X)
    np.testing.assert_allclose(loss_e.numpy(), loss_n.numpy(), rtol=1e-5)
    assert len(grads_e) == len(grads_n)
    for g_e, g_n, w in zip(grads_e, grads_n, normal.trainable_weights, strict=True):
        assert g_e is not None, w.path
        np.testing.assert_allclose(g_e.numpy(), g_n.numpy(), rtol=1e-4, atol=1e-5, err_msg=w.path)
    # The BN moving statistics are updated once per step, exactly as in the normal mode.
    for m_e, m_n in zip(efficient.non_trainable_weights, normal.non_trainable_weights, strict=True):
        np.testing.assert_allclose(m_e.numpy(), m_n.numpy(), rtol=1e-5, atol=1e-6, err_msg=m_n.path)
    assert not np.allclose(normal.non_trainable_weights[0].numpy(), 0.0)


def test_memory_efficient_fit_in_graph_mode():
    inputs = keras.Input((8, 8, 16))
    outputs = keras.layers.GlobalAveragePooling2D()(DenseBlock(2, 4, memory_efficient=True)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2)(outputs))
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    y = np.array([0, 1])
    losses = model.fit(X, y, epochs=3, verbose=0).history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]


def test_transition_dropout_only_in_training():
    layer = TransitionLayer(0.5, dropout_rate=0.5)
    x = np.abs(X) + 1.0  # positive inputs: a dropped channel shows as an exact 0 after pooling
    inference = keras.ops.convert_to_numpy(layer(x, training=False))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x, training=False)), inference)
    assert not np.any(inference == 0)
    no_dropout = TransitionLayer(0.5)
    no_dropout.build(x.shape)
    no_dropout.set_weights(layer.get_weights())  # inference is the same layer without dropout
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(no_dropout(x, training=False)), inference, rtol=1e-6
    )
    trained = keras.ops.convert_to_numpy(layer(x, training=True))
    assert not np.allclose(trained, inference)


def test_a_frozen_model_reloads_with_every_sublayer_frozen(tmp_path):
    """Keras gives a loaded composite layer trainable=False before its sublayers exist."""
    model = build_densenet(**TINY)
    for layer in model.layers[:-1]:
        layer.trainable = False
    path = tmp_path / "frozen.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    assert [w.path for w in reloaded.trainable_weights] == [
        "predictions/kernel",
        "predictions/bias",
    ]
    inner = [
        layer
        for layer in reloaded._flatten_layers(include_self=False)
        if isinstance(layer, (keras.layers.BatchNormalization, keras.layers.Conv2D))
    ]
    assert len(inner) > 8 and not any(layer.trainable for layer in inner)
