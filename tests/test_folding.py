"""BatchNormalization folded into the convolution before it (the serving graph)."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from conftest import assert_close

from keras_densenet import DenseBlock, DenseLayer, build_densenet
from keras_densenet.export import export_savedmodel, fold_batchnorm, read_export_info
from keras_densenet.export.folding import batchnorm_count


def _trained_looking(model: keras.Model, seed: int = 0) -> keras.Model:
    """BatchNorm parameters and statistics far from their initial 1/0 values."""
    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, n))
            layer.beta.assign(rng.uniform(-0.2, 0.2, n))
            layer.moving_mean.assign(rng.uniform(-0.3, 0.3, n))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, n))
    return model


def _logits(model: keras.Model, images: np.ndarray) -> np.ndarray:
    # The pre-softmax features: probabilities of an untrained head saturate.
    features = keras.Model(model.input, model.get_layer("avg_pool").output)
    return np.asarray(features(images, training=False))


def _imagenet_stem_model(**overrides: object) -> keras.Model:
    args = {
        "blocks": (2, 3),
        "growth_rate": 8,
        "num_init_features": 16,
        "stem": "imagenet",
        "input_shape": (64, 64, 3),
        "num_classes": 5,
        "normalization": "imagenet",
    }
    return _trained_looking(build_densenet(**{**args, **overrides}))


@pytest.mark.parametrize("memory_efficient", [False, True])
def test_folded_model_computes_the_same_function(memory_efficient: bool) -> None:
    model = _imagenet_stem_model(memory_efficient=memory_efficient)
    before = [w.copy() for w in model.get_weights()]
    images = np.random.default_rng(1).uniform(0, 255, (3, 64, 64, 3)).astype("float32")
    folded = fold_batchnorm(model)
    expected = _logits(model, images)
    np.testing.assert_allclose(
        _logits(folded, images), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max()
    )
    np.testing.assert_allclose(
        folded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6
    )
    # The stem's BN and each of the 5 bottleneck BNs are gone; the model is untouched.
    assert batchnorm_count(model) - batchnorm_count(folded) == 1 + 5
    assert folded.get_layer("conv1_conv").use_bias
    assert not model.get_layer("conv1_conv").use_bias
    assert isinstance(folded.get_layer("conv1_bn"), keras.layers.Identity)
    block = folded.get_layer("conv2")
    assert isinstance(block, DenseBlock) and block.folded
    assert all(layer.bn2 is None and layer.conv1.use_bias for layer in block.dense_layers)
    for a, b in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_folded_model_saves_and_reloads(tmp_path) -> None:
    folded = fold_batchnorm(_imagenet_stem_model())
    images = np.random.default_rng(2).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    path = tmp_path / "folded.keras"
    folded.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    assert_close(_logits(reloaded, images), _logits(folded, images), 1e-6)
    assert reloaded.get_layer("conv2").get_config()["folded"] is True


def test_nothing_to_fold_returns_the_model() -> None:
    # DenseNet (no bottleneck) with the CIFAR stem: every BN reads a concatenation.
    model = build_densenet(
        blocks=(2, 2), growth_rate=4, num_init_features=8, stem="cifar",
        input_shape=(16, 16, 1), bottleneck=False,
    )  # fmt: skip
    assert fold_batchnorm(model) is model
    # Folding twice is folding once.
    folded = fold_batchnorm(_imagenet_stem_model())
    assert fold_batchnorm(folded) is folded


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="functional"):
        fold_batchnorm(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]))
    with pytest.raises(ValueError, match="`model` must be a functional"):
        fold_batchnorm("model.keras")
    with pytest.raises(ValueError, match="bottleneck=True"):
        DenseLayer(4, bottleneck=False, folded=True)
    with pytest.raises(TypeError, match="`folded` must be True or False"):
        DenseBlock(2, 4, folded="yes")


def test_a_conv_read_by_two_layers_is_not_folded() -> None:
    inputs = keras.Input((8, 8, 3))
    conv = keras.layers.Conv2D(4, 3, use_bias=False, name="conv")(inputs)
    bn = keras.layers.BatchNormalization(name="conv_bn")(conv)
    model = keras.Model(inputs, keras.layers.Add()([bn, conv]))
    assert fold_batchnorm(model) is model


def test_export_folds_by_default_and_records_it(tmp_path) -> None:
    model = _imagenet_stem_model()
    images = np.random.default_rng(3).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    folded_dir = export_savedmodel(model, tmp_path / "m", version=1)
    plain_dir = export_savedmodel(model, tmp_path / "m", version=2, fold_batchnorm=False)
    assert read_export_info(folded_dir)["batchnorm_folded"] == 6
    assert read_export_info(plain_dir)["batchnorm_folded"] == 0
    import tensorflow as tf

    outputs = [
        tf.saved_model.load(str(path)).signatures["serving_default"](images=tf.constant(images))
        for path in (folded_dir, plain_dir)
    ]
    np.testing.assert_allclose(
        outputs[0]["probabilities"].numpy(), outputs[1]["probabilities"].numpy(), atol=1e-6
    )
    np.testing.assert_array_equal(outputs[0]["classes"].numpy(), outputs[1]["classes"].numpy())
    with pytest.raises(TypeError, match="fold_batchnorm"):
        export_savedmodel(model, tmp_path / "m", fold_batchnorm="no")
    assert json.loads((tmp_path / "m" / "1" / "assets.extra" / "export.json").read_text())


def test_cli_export_folds_unless_told_not_to(tmp_path, capsys) -> None:
    from keras_densenet.cli import main

    path = tmp_path / "tiny.keras"
    build_densenet(
        blocks=(1, 2), growth_rate=4, num_init_features=8, stem="cifar", input_shape=(16, 16, 1)
    ).save(path)
    assert main(["export", str(path), "--out", str(tmp_path / "m")]) == 0
    assert "3 BatchNormalizations folded" in capsys.readouterr().out
    assert main(["export", str(path), "--out", str(tmp_path / "m"), "--no-fold-batchnorm"]) == 0
    assert "0 BatchNormalizations folded" in capsys.readouterr().out
    assert read_export_info(tmp_path / "m" / "2")["batchnorm_folded"] == 0


# The folding rules on one convolution and its BatchNormalization (milliseconds each).


def _randomized(model: keras.Model, seed: int = 0) -> keras.Model:
    """Every weight random, variances positive: no folded term can hide behind 0 or 1."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        low = 0.5 if "variance" in variable.path else -1.0
        variable.assign(rng.uniform(low, 1.5, variable.shape))
    return model


def _conv_bn(conv=None, bn=None, *, seed=0):
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv", **(conv or {}))(inputs)
    x = keras.layers.BatchNormalization(name="conv_bn", **(bn or {}))(x)
    return _randomized(keras.Model(inputs, keras.layers.ReLU(name="relu")(x), name="pair"), seed)


IMAGES = np.random.default_rng(4).normal(0.0, 1.0, (2, 6, 6, 3)).astype("float32")


@pytest.mark.parametrize(
    ("conv", "bn"),
    [
        ({"use_bias": False}, {}),
        ({"use_bias": True}, {}),  # the conv's own bias goes through the BN too
        ({}, {"scale": False}),
        ({}, {"center": False}),
        ({}, {"epsilon": 0.3}),
        ({}, {"axis": 3}),
    ],
)
def test_a_conv_and_its_batchnorm_fold_exactly(conv, bn):
    model = _conv_bn(conv, bn)
    folded = fold_batchnorm(model)
    assert folded is not model and folded.name == "pair"
    np.testing.assert_allclose(folded(IMAGES), model(IMAGES, training=False), atol=1e-5)
    assert isinstance(folded.get_layer("conv_bn"), keras.layers.Identity)
    assert folded.get_layer("conv_bn").trainable is False
    assert folded.get_layer("conv").use_bias and batchnorm_count(folded) == 0
    # The folded kernel and bias: the float64 products, rounded to float32 once.
    layer = model.get_layer("conv_bn")
    mean, variance = (np.asarray(v, np.float64) for v in (layer.moving_mean, layer.moving_variance))
    gamma = np.asarray(layer.gamma, np.float64) if layer.scale else 1.0
    beta = np.asarray(layer.beta, np.float64) if layer.center else 0.0
    scale = gamma / np.sqrt(variance + layer.epsilon)
    source = model.get_layer("conv")
    bias = np.asarray(source.bias, np.float64) if source.use_bias else 0.0
    target = folded.get_layer("conv")
    want_kernel = (np.asarray(source.kernel, np.float64) * scale).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(target.kernel), want_kernel)
    want_bias = (bias * scale + (beta - mean * scale)).astype(np.float32)  # (the same sum)
    np.testing.assert_array_equal(np.asarray(target.bias), want_bias)


@keras.saving.register_keras_serializable(package="test_folding")
class Conv(keras.layers.Conv2D):
    """A subclass may compute anything: not folded."""


@keras.saving.register_keras_serializable(package="test_folding")
class Norm(keras.layers.BatchNormalization):
    """Nor is a BatchNormalization subclass."""


def test_only_pairs_the_rewrite_can_keep_equal_are_folded():
    bn = keras.layers.BatchNormalization
    conv = keras.layers.Conv2D
    shared_bn = bn(name="shared_bn")
    shared_conv = conv(3, 1, name="shared_conv")
    cases = {
        "activation": lambda x, m: bn()(conv(4, 3, activation="relu")(x)),
        "subclass": lambda x, m: bn()(Conv(4, 3)(x)),
        "batchnorm subclass": lambda x, m: Norm()(conv(4, 3)(x)),
        "dense": lambda x, m: bn()(keras.layers.Dense(4)(x)),
        "not channels": lambda x, m: bn(axis=1)(conv(4, 3)(x)),
        "masked": lambda x, m: bn()(conv(4, 1)(x), mask=m),  # Identity takes no mask
        "shared batchnorm": lambda x, m: keras.layers.Add()(
            [shared_bn(conv(3, 1)(x)), shared_bn(conv(3, 1)(x))]
        ),
        "shared conv": lambda x, m: bn()(shared_conv(shared_conv(x))),
    }
    for name, build in cases.items():
        inputs, mask = keras.Input((6, 6, 3)), keras.Input((6, 6), dtype="bool")
        unfoldable = build(inputs, mask)
        alone = keras.Model([inputs, mask], unfoldable)
        assert fold_batchnorm(alone) is alone, name
        # Beside a foldable pair that comes after it, the pair is still folded.
        pair = keras.layers.BatchNormalization(name="last_bn")(
            keras.layers.Conv2D(2, 1, name="last")(inputs)
        )
        both = fold_batchnorm(keras.Model([inputs, mask], [unfoldable, pair]))
        assert isinstance(both.get_layer("last_bn"), keras.layers.Identity), name
        assert batchnorm_count(both) == batchnorm_count(alone), name


def test_a_dense_layer_outside_a_block_folds_too():
    inputs = keras.Input((6, 6, 8))
    outputs = DenseLayer(4, bottleneck=True, name="layer")(inputs)
    model = _randomized(keras.Model(inputs, outputs))
    folded = fold_batchnorm(model)
    layer = folded.get_layer("layer")
    assert layer.folded and layer.bn2 is None and layer.conv1.use_bias
    x = np.random.default_rng(5).normal(size=(2, 6, 6, 8)).astype("float32")
    # Outputs reach ~70: float32 rounding of the two graphs differs by a few 1e-7 of that.
    np.testing.assert_allclose(folded(x), model(x, training=False), rtol=1e-6, atol=1e-5)


def test_a_foldable_pair_beside_one_that_is_not():
    inputs = keras.Input((6, 6, 3))
    a = keras.layers.BatchNormalization(name="a_bn")(keras.layers.Conv2D(4, 3, name="a")(inputs))
    relu = keras.layers.Conv2D(4, 3, activation="relu", name="b")(inputs)
    b = keras.layers.BatchNormalization(name="b_bn")(relu)
    model = _randomized(keras.Model(inputs, keras.layers.Concatenate()([a, b])))
    folded = fold_batchnorm(model)
    np.testing.assert_allclose(folded(IMAGES), model(IMAGES, training=False), atol=1e-5)
    assert isinstance(folded.get_layer("a_bn"), keras.layers.Identity)
    assert isinstance(folded.get_layer("b_bn"), keras.layers.BatchNormalization)
    for name in ("b", "b_bn"):  # copied as they were
        assert folded.get_layer(name).get_config() == model.get_layer(name).get_config()
        for got, want in zip(
            folded.get_layer(name).get_weights(), model.get_layer(name).get_weights(), strict=True
        ):
            np.testing.assert_array_equal(got, want)


def test_a_mixed_precision_model_folds_under_its_policy():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = _conv_bn()
    finally:
        keras.config.set_dtype_policy("float32")
    folded = fold_batchnorm(model)
    identity = folded.get_layer("conv_bn")
    assert identity.dtype_policy.name == "mixed_float16"
    got, want = folded(IMAGES), model(IMAGES, training=False)
    assert keras.backend.standardize_dtype(got.dtype) == "float16"
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), atol=2e-2)


def test_models_without_a_graph_and_models_that_cannot_be_rebuilt_are_refused():
    sequential = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError) as caught:
        fold_batchnorm(sequential)
    assert str(caught.value) == f"`model` must be a functional keras.Model, got {sequential!r}."

    class Subclassed(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError) as caught:
        fold_batchnorm(Subclassed(name="sub"))
    assert str(caught.value) == (
        "`model` must be a functional keras.Model (it needs a layer graph to rewrite), got "
        "Subclassed 'sub'."
    )

    class Unregistered(keras.layers.Layer):
        """Not registered with Keras, so from_config cannot find it."""

        def call(self, x):
            return x

    inputs = keras.Input((6, 6, 3))
    x = keras.layers.BatchNormalization()(keras.layers.Conv2D(4, 3)(inputs))
    model = keras.Model(inputs, Unregistered()(x), name="custom")
    with pytest.raises(ValueError) as caught:
        fold_batchnorm(model)
    assert str(caught.value).startswith(
        "Cannot rebuild model 'custom' with BatchNormalization folded: TypeError: "
    )
    assert "Unregistered" in str(caught.value)


def test_batchnorm_count_includes_nested_models():
    inner = _conv_bn()
    inputs = keras.Input((6, 6, 3))
    outer = keras.Model(inputs, keras.layers.BatchNormalization()(inner(inputs)))
    assert batchnorm_count(inner) == 1
    assert batchnorm_count(outer) == 2
    assert batchnorm_count(keras.Model(inputs, keras.layers.ReLU()(inputs))) == 0
