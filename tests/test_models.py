"""build_densenet: exact preset counts, shapes, arguments, saving."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import TINY, assert_saved_model_round_trip

from keras_densenet import PRESETS, build_densenet, densenet121, densenet_bc_100_12
from keras_densenet.layers import DenseBlock, DenseLayer, TransitionLayer
from keras_densenet.models import (
    _check_weights,
    blocks_from_depth,
    is_torch_weights,
    min_input_size,
)


def _trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


@pytest.mark.parametrize(
    ("preset", "total", "trainable"),
    [
        ("densenet121", 8_062_504, 7_978_856),
        ("densenet169", 14_307_880, None),
        ("densenet201", 20_242_984, None),
        ("densenet264", 33_736_232, 33_337_704),
        ("densenet_bc_100_12", 793_150, 769_162),
        ("densenet_bc_250_24", 15_582_382, 15_324_406),
        ("densenet_bc_190_40", 25_881_390, 25_624_430),
    ],
)
def test_preset_parameter_counts(preset, total, trainable):
    model = build_densenet(preset)
    assert model.count_params() == total
    if trainable is not None:
        assert _trainable(model) == trainable
    meta = PRESETS[preset]
    assert meta.get("params", total) == total
    assert meta.get("trainable_params", trainable) == trainable


@pytest.fixture(scope="module")
def densenet121_and_reference():
    """Ours and keras.applications' DenseNet-121 (random weights), built once."""
    return densenet121(), keras.applications.DenseNet121(weights=None)


def test_preset_counts_match_keras_applications(densenet121_and_reference):
    ours, reference = densenet121_and_reference
    assert ours.count_params() == reference.count_params()
    ours_names = {s.name for s in ours._flatten_layers(include_self=False) if s.weights}
    ref_names = {s.name for s in reference.layers if s.weights}
    assert ref_names <= ours_names


#: The ImageNet stem, layer by layer: keras.applications' layout with its names
#: (its two paddings are unnamed there) and the settings that decide the output.
IMAGENET_STEM = [
    ("ZeroPadding2D", "conv1_pad", {"padding": ((3, 3), (3, 3))}),
    (
        "Conv2D",
        "conv1_conv",
        {"filters": 64, "kernel_size": (7, 7), "strides": (2, 2), "padding": "valid"},
    ),
    ("BatchNormalization", "conv1_bn", {"epsilon": 1.001e-5, "momentum": 0.9}),
    ("Activation", "conv1_relu", {"activation": "relu"}),
    ("ZeroPadding2D", "pool1_pad", {"padding": ((1, 1), (1, 1))}),
    ("MaxPooling2D", "pool1", {"pool_size": (3, 3), "strides": (2, 2), "padding": "valid"}),
]


def test_imagenet_stem_is_keras_applications_layer_by_layer(densenet121_and_reference):
    model, reference_model = densenet121_and_reference
    # The top, as keras.applications names it.
    top = [(type(layer).__name__, layer.name) for layer in model.layers[-4:]]
    assert top == [(type(layer).__name__, layer.name) for layer in reference_model.layers[-4:]]
    ours, reference = model.layers[1:7], reference_model.layers[1:7]
    for (kind, name, settings), mine, theirs in zip(IMAGENET_STEM, ours, reference, strict=True):
        assert (type(mine).__name__, mine.name) == (kind, name)
        assert type(theirs).__name__ == kind
        for key, value in settings.items():
            assert mine.get_config()[key] == value, (name, key)
            if key != "momentum":  # ours trains with 0.9 (the training-trust issue)
                assert theirs.get_config()[key] == value, (name, key)


@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
def test_model_wide_settings_reach_every_layer(stem):
    model = build_densenet(
        blocks=(2, 2),
        growth_rate=4,
        num_init_features=8,
        bottleneck=True,
        stem=stem,
        input_shape=(32, 32, 3),
        num_classes=3,
        dropout_rate=0.2,
        bn_momentum=0.5,
        bn_epsilon=1e-3,
        kernel_regularizer=keras.regularizers.L2(0.25),
    )
    leaves = list(model._flatten_layers(include_self=False))
    convs = [leaf for leaf in leaves if isinstance(leaf, keras.layers.Conv2D)]
    bns = [leaf for leaf in leaves if isinstance(leaf, keras.layers.BatchNormalization)]
    # Stem, two 1x1 + 3x3 per dense layer, one transition.
    assert len(convs) == 1 + 2 * 4 + 1
    for conv in convs:
        assert conv.kernel_regularizer.get_config() == {"l2": 0.25}, conv.name
    assert len(model.losses) == len(convs)
    # Two per dense layer, the transition's, the final one and the ImageNet stem's.
    assert len(bns) == 2 * 4 + 1 + 1 + (stem == "imagenet")
    for bn in bns:
        assert (bn.epsilon, bn.momentum) == (1e-3, 0.5), bn.name
    transitions = [leaf for leaf in leaves if isinstance(leaf, TransitionLayer)]
    assert len(transitions) == 1 and transitions[0].dropout.rate == 0.2
    dense_layers = [leaf for leaf in leaves if isinstance(leaf, DenseLayer)]
    assert len(dense_layers) == 4
    for layer in dense_layers:
        assert layer.dropout1.rate == layer.dropout2.rate == 0.2, layer.name


def test_defaults_build_the_plain_trainable_model():
    model = build_densenet(**TINY)
    blocks = [layer for layer in model.layers if isinstance(layer, DenseBlock)]
    assert blocks and not any(block.memory_efficient for block in blocks)
    assert not any(block.folded for block in blocks)
    assert model.output_shape == (None, 10)  # not the feature pyramid
    assert model.layers[0].name == "image"  # a stable input name, not Keras' numbered default
    efficient = build_densenet(**TINY, memory_efficient=True)
    assert all(
        block.memory_efficient for block in efficient.layers if isinstance(block, DenseBlock)
    )


def test_bottleneck_width_sets_the_1x1_convolutions():
    model = build_densenet(**{**TINY, "bottleneck": True}, bottleneck_width=2)
    block = model.get_layer("conv2")
    widths = [layer.conv1.kernel.shape[-1] for layer in block.dense_layers]
    assert widths == [2 * TINY["growth_rate"]] * 2
    assert block.bottleneck_width == 2


def test_growth_rate_12_on_densenet121_layout():
    model = build_densenet("densenet121", growth_rate=12, include_top=False)
    assert model.output_shape == (None, 7, 7, 389)
    ends = [layer.output.shape[-1] for layer in model.layers if isinstance(layer, DenseBlock)]
    assert ends == [136, 212, 394, 389]


def test_shapes_per_block_densenet121():
    model = densenet121()
    shapes = {
        layer.name: tuple(layer.output.shape)
        for layer in model.layers
        if isinstance(layer, (DenseBlock, TransitionLayer))
    }
    assert shapes == {
        "conv2": (None, 56, 56, 256),
        "pool2": (None, 28, 28, 128),
        "conv3": (None, 28, 28, 512),
        "pool3": (None, 14, 14, 256),
        "conv4": (None, 14, 14, 1024),
        "pool4": (None, 7, 7, 512),
        "conv5": (None, 7, 7, 1024),
    }


def test_shapes_per_block_cifar_bc_100():
    model = densenet_bc_100_12()
    shapes = [tuple(layer.output.shape) for layer in model.layers if isinstance(layer, DenseBlock)]
    assert shapes == [(None, 32, 32, 216), (None, 16, 16, 300), (None, 8, 8, 342)]
    assert model.get_layer("conv1_conv").kernel.shape == (3, 3, 3, 24)


def test_plain_densenet_from_arguments():
    model = build_densenet(
        depth=40, growth_rate=12, bottleneck=False, compression=1.0, num_init_features=16
    )
    assert [b.num_layers for b in model.layers if isinstance(b, DenseBlock)] == [12, 12, 12]
    assert all(not b.bottleneck for b in model.layers if isinstance(b, DenseBlock))
    assert model.output_shape == (None, 10)
    assert _trainable(model) in range(1_000_000, 1_100_000)  # the paper's 1.0M
    assert model.get_layer("conv3").input.shape[-1] == 16 + 12 * 12  # no compression


def test_overrides_replace_preset_values():
    model = build_densenet("densenet_bc_100_12", input_shape=(28, 28, 1), num_classes=7)
    assert model.input_shape == (None, 28, 28, 1)
    assert model.output_shape == (None, 7)
    deeper = build_densenet("densenet_bc_100_12", depth=40)
    assert [b.num_layers for b in deeper.layers if isinstance(b, DenseBlock)] == [6, 6, 6]
    blocks = build_densenet("densenet_bc_100_12", blocks=(2, 3))
    assert [b.num_layers for b in blocks.layers if isinstance(b, DenseBlock)] == [2, 3]


def test_blocks_from_depth():
    assert blocks_from_depth(100) == (16, 16, 16)
    assert blocks_from_depth(40, bottleneck=False) == (12, 12, 12)
    with pytest.raises(ValueError, match="depth"):
        blocks_from_depth(101)


@pytest.mark.parametrize(
    ("include_top", "pooling", "shape", "last"),
    # keras.applications' names for the last layers.
    [
        (True, None, (None, 10), ["bn", "relu", "avg_pool", "predictions"]),
        (False, None, (None, 14, 14, 16), ["bn", "relu"]),
        (False, "avg", (None, 16), ["bn", "relu", "avg_pool"]),
        (False, "max", (None, 16), ["bn", "relu", "max_pool"]),
    ],
)
def test_include_top_and_pooling(include_top, pooling, shape, last):
    model = build_densenet(**TINY, include_top=include_top, pooling=pooling)
    assert model.output_shape == shape
    assert [layer.name for layer in model.layers[-len(last) :]] == last
    assert model.get_layer("relu").get_config()["activation"] == "relu"


def test_classifier_activation_and_float32_output_under_mixed_precision():
    logits = build_densenet(**TINY, classifier_activation=None)
    assert logits.get_layer("predictions").activation is keras.activations.linear
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    model = build_densenet(**TINY)
    out = model(np.ones((2, 28, 28, 1), "float32"))
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    assert model.get_layer("conv2").compute_dtype == "float16"
    np.testing.assert_allclose(np.sum(keras.ops.convert_to_numpy(out), axis=1), 1.0, rtol=1e-3)


def test_variable_input_size():
    model = build_densenet(**{**TINY, "input_shape": (None, None, 1)})
    assert model.predict(np.zeros((1, 40, 36, 1), "float32"), verbose=0).shape == (1, 10)


def test_min_input_size():
    assert min_input_size("cifar", 3) == 4
    assert min_input_size("imagenet", 4) == 29
    build_densenet("densenet121", input_shape=(29, 29, 3))
    with pytest.raises(ValueError, match="at least 29"):
        build_densenet("densenet121", input_shape=(28, 28, 3))


def test_in_model_normalization():
    mean, std = [100.0], [50.0]
    model = build_densenet(**TINY, normalization=(mean, std))
    x = np.full((1, 28, 28, 1), 150.0, "float32")
    normalized = keras.Model(model.input, model.get_layer("normalization").output)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(normalized(x)), 1.0, rtol=1e-5)


def test_weights_files_are_checked_by_kind_before_loading(tmp_path):
    for name in ("w.weights.h5", "legacy.h5", "w.pth", "w.pt", "w.bin", "w.safetensors"):
        path = tmp_path / name
        path.write_bytes(b"")
        _check_weights(str(path))  # accepted (loading is test_weights' business)
        _check_weights(path)
        assert is_torch_weights(path) is (not name.endswith(".h5")), name
    assert is_torch_weights(None) is False and is_torch_weights(7) is False
    (tmp_path / "w.txt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"\.pth, \.pt, \.bin, \.safetensors\), got '.*w\.txt'"):
        _check_weights(str(tmp_path / "w.txt"))
    with pytest.raises(
        TypeError, match="`weights` must be None or a path to a weights file, got 7"
    ):
        _check_weights(7)
    with pytest.raises(ValueError, match=r"`weights` file not found: '.*missing\.pth'"):
        _check_weights(str(tmp_path / "missing.pth"))
    _check_weights(None)


def test_imagenet_normalization_is_keras_applications_preprocessing():
    model = build_densenet(
        blocks=(2, 2), growth_rate=4, input_shape=(16, 16, 3), normalization="imagenet"
    )
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)).astype("float32")
    normalized = keras.Model(model.input, model.get_layer("normalization").output)
    expected = keras.applications.densenet.preprocess_input(pixels.copy())
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(normalized(pixels)), expected, rtol=1e-5, atol=1e-5
    )
    with pytest.raises(ValueError, match="'imagenet', got 'IMAGENET'"):
        build_densenet(blocks=(2, 2), input_shape=(16, 16, 3), normalization="IMAGENET")


@pytest.mark.reliability("bad_input")
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"preset": "densenet99"}, ValueError, "known presets: .*densenet121"),
        ({"blocks": (6, 12), "growth_rate": 0}, ValueError, "growth_rate"),
        ({"blocks": (6, 12), "growth_rate": -4}, ValueError, "growth_rate"),
        ({"blocks": (6, 12), "compression": 0.0}, ValueError, r"compression.*\(0, 1\]"),
        ({"blocks": (6, 12), "compression": 1.2}, ValueError, "compression"),
        ({"blocks": ()}, ValueError, "blocks"),
        ({"blocks": (6, 0, 3)}, ValueError, "blocks"),
        ({"blocks": (6, -1)}, ValueError, "blocks"),
        ({"blocks": (6, 12), "depth": 40}, ValueError, "either `blocks` or `depth`"),
        ({"depth": 41}, ValueError, "depth"),
        ({}, ValueError, "preset"),
        ({"blocks": (2, 2), "input_shape": (3, 224, 224)}, ValueError, "channels-first"),
        ({"blocks": (2, 2), "input_shape": (224, 224)}, ValueError, "input_shape"),
        ({"preset": "densenet121", "input_shape": (16, 16, 3)}, ValueError, "at least 29"),
        ({"blocks": (2, 2), "dropout_rate": 1.0}, ValueError, r"dropout_rate.*\[0, 1\)"),
        ({"blocks": (2, 2), "dropout_rate": -0.2}, ValueError, "dropout_rate"),
        ({"blocks": (2, 2), "pooling": "mean", "include_top": False}, ValueError, "pooling"),
        ({"blocks": (2, 2), "num_classes": 0}, ValueError, "^`num_classes` must be"),
        ({"blocks": (2, 2), "weights": "/no/such/file.h5"}, ValueError, "weights.*not found"),
        ({"blocks": (2, 2), "stem": "resnet"}, ValueError, "stem"),
        ({"blocks": (2, 2), "compression": "half"}, TypeError, "compression"),
        ({"blocks": (2, 2), "normalization": ([1.0, 2.0], [1.0])}, ValueError, "normalization"),
        ({"blocks": (2, 2), "bn_momentum": 1.5}, ValueError, "bn_momentum"),
        ({"blocks": (2, 2), "bn_momentum": None}, TypeError, "bn_momentum"),
        ({"blocks": (2, 2), "include_top": 1}, TypeError, "`include_top` must be a bool, got 1"),
        (
            {"blocks": (2, 2), "include_top": False, "feature_outputs": "yes"},
            TypeError,
            "`feature_outputs` must be True or False, got 'yes'",
        ),
        (
            {"blocks": (2, 2), "feature_outputs": True},
            ValueError,
            r"^`feature_outputs=True` returns the dense blocks' feature maps: it needs "
            r"`include_top=False` and `pooling=None`, got include_top=True, pooling=None\.$",
        ),
        (
            {"blocks": (2, 2), "num_classes": 1_000_001},
            ValueError,
            r"^`num_classes` must be an integer in \[1, 1000000\], got 1000001",
        ),
        (
            {"blocks": (2, 2), "classifier_activation": "nope"},
            ValueError,
            "Keras activation name, callable or None, got 'nope'",
        ),
    ],
)
def test_bad_arguments_fail_before_building(kwargs, error, match, monkeypatch):
    def no_model(*args, **kw):
        raise AssertionError("a model was built before the arguments were checked")

    monkeypatch.setattr(keras, "Input", no_model)
    with pytest.raises(error, match=match):
        build_densenet(**kwargs)


def test_model_save_reload_same_predictions(tmp_path):
    model = build_densenet(**TINY, dropout_rate=0.1, normalization=([10.0], [20.0]))
    x = np.random.default_rng(1).uniform(0, 255, (3, 28, 28, 1)).astype("float32")
    reloaded = assert_saved_model_round_trip(model, str(tmp_path / "tiny.keras"), x)
    assert reloaded.count_params() == model.count_params()


def test_fit_tiny_model_reduces_loss():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 28, 28, 1)).astype("float32")
    y = (x.mean(axis=(1, 2, 3)) > 0).astype("int32")
    model = build_densenet(**{**TINY, "num_classes": 2})
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    history = model.fit(x, y, epochs=4, batch_size=16, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_weights_argument_loads_keras_weights_file(tmp_path):
    source = build_densenet(**TINY)
    path = str(tmp_path / "tiny.weights.h5")
    source.save_weights(path)
    model = build_densenet(**TINY, weights=path)
    for a, b in zip(model.get_weights(), source.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("kwargs", "momentum"),
    [
        ({"preset": "densenet121"}, 0.9),
        ({"preset": "densenet121", "bn_momentum": 0.99}, 0.99),
        ({"preset": "densenet_bc_100_12", "bn_momentum": 0.5}, 0.5),
    ],
)
def test_bn_momentum_reaches_every_batchnorm(kwargs, momentum):
    model = build_densenet(**kwargs)
    bns = [
        layer
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    names = {bn.name for bn in bns}
    assert "bn" in names  # the final BN
    if kwargs["preset"] == "densenet121":
        # two per dense layer, one per transition, the stem's and the final one
        assert "conv1_bn" in names and len(bns) == 2 * (6 + 12 + 24 + 16) + 3 + 2
    assert {bn.momentum for bn in bns} == {momentum}
    assert {bn.epsilon for bn in bns} == {1.001e-5}


def test_old_model_file_without_bn_momentum_loads(tmp_path):
    """A .keras file written before bn_momentum existed loads with its momentum, 0.99."""
    import json
    import zipfile

    model = build_densenet(**TINY)
    path = tmp_path / "new.keras"
    model.save(path)
    old = tmp_path / "old.keras"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(old, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "config.json":
                text = json.dumps(json.loads(data))
                assert '"bn_momentum": 0.9' in text
                text = text.replace('"bn_momentum": 0.9, ', "").replace(', "bn_momentum": 0.9', "")
                assert "bn_momentum" not in text
                data = text.encode()
            dst.writestr(item, data)
    reloaded = keras.saving.load_model(old, safe_mode=True)
    x = np.random.default_rng(2).uniform(0, 255, (2, 28, 28, 1)).astype("float32")
    np.testing.assert_allclose(
        reloaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6
    )
    block = reloaded.get_layer("conv2")
    assert block.bn_momentum == 0.99
    assert block.dense_layers[0].bn1.momentum == 0.99


@pytest.mark.parametrize(
    ("preset", "channels"),
    [
        ("densenet121", (256, 512, 1024, 1024)),
        ("densenet161", (384, 768, 2112, 2208)),
        ("densenet169", (256, 512, 1280, 1664)),
        ("densenet201", (256, 512, 1792, 1920)),
        ("densenet264", (256, 512, 2304, 2688)),
    ],
)
def test_feature_pyramid_of_every_imagenet_preset(preset, channels):
    model = build_densenet(preset, include_top=False, feature_outputs=True)
    shapes = {name: tuple(out.shape) for name, out in model.output.items()}
    assert shapes == {
        f"P{level}": (None, 224 // 2**level, 224 // 2**level, c)
        for level, c in zip((2, 3, 4, 5), channels, strict=True)
    }


def test_feature_pyramid_trains_a_segmentation_head_on_real_images():
    from keras_densenet.data import load_dataset

    dataset, _ = load_dataset(
        "fashion_mnist_sample", "train", batch_size=16, augment=False, normalize=False
    )
    images = next(iter(dataset))[0].numpy()
    mask = (images[..., 0] > 0).astype("int32")  # the garment's silhouette: a real shape
    images = images / 255.0
    keras.utils.set_random_seed(0)
    backbone = build_densenet(
        blocks=(2, 2),
        growth_rate=8,
        num_init_features=16,
        stem="cifar",
        input_shape=(28, 28, 1),
        include_top=False,
        feature_outputs=True,
    )
    assert sorted(backbone.output) == ["P0", "P1"]
    p0, p1 = backbone.output["P0"], backbone.output["P1"]
    up = keras.layers.UpSampling2D(2)(p1)
    logits = keras.layers.Conv2D(2, 1)(keras.layers.Concatenate()([p0, up]))
    segmenter = keras.Model(backbone.input, logits)
    segmenter.compile(
        keras.optimizers.Adam(1e-2),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    history = segmenter.fit(images, mask, epochs=6, batch_size=16, verbose=0).history
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert history["accuracy"][-1] > 0.85


def test_feature_outputs_need_a_headless_model():
    with pytest.raises(ValueError, match="include_top=False"):
        build_densenet(**TINY, feature_outputs=True)
    with pytest.raises(ValueError, match="pooling=None"):
        build_densenet(**TINY, include_top=False, pooling="avg", feature_outputs=True)


def test_normalization_needs_one_mean_and_one_positive_std_per_channel():
    shape = {"blocks": (2, 2), "growth_rate": 4, "input_shape": (8, 8, 3)}
    for mean, std in (
        ([0, 0, 0], [1, 1]),  # a std short
        ([0, 0], [1, 1, 1]),  # a mean short
        ([0, 0, 0], [1, 0, 1]),
        ([0, 0, 0], [1, -2, 1]),
    ):
        with pytest.raises(ValueError) as caught:
            build_densenet(**shape, normalization=(mean, std))
        assert str(caught.value) == (
            "`normalization` needs 3 means and 3 positive stds (one per input channel), got "
            f"mean={[float(v) for v in mean]}, std={[float(v) for v in std]}."
        )
    for bad in ((1, 2), ([0, 0, 0], [1, 1, 1], [2, 2, 2]), ([0, "a", 0], [1, 1, 1])):
        with pytest.raises(ValueError) as caught:
            build_densenet(**shape, normalization=bad)
        assert str(caught.value) == (
            f"`normalization` must be a (mean, std) pair of per-channel sequences, got {bad!r}."
        )
    # Stds below 1 are as good as any positive ones.
    model = build_densenet(**shape, normalization=([1.0, 2.0, 3.0], [0.25, 0.5, 4.0]))
    normalized = keras.Model(model.input, model.get_layer("normalization").output)
    x = np.full((1, 8, 8, 3), 2.0, "float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(normalized(x))[0, 0, 0], [4.0, 0.0, -0.25], rtol=1e-5
    )


def test_default_names_say_what_was_built():
    assert build_densenet(blocks=(2, 2), input_shape=(16, 16, 3)).name == "densenet11"
    assert build_densenet(blocks=(2, 2), name="mine", input_shape=(16, 16, 3)).name == "mine"
    # A preset keeps its own name where the paper's naming would say otherwise.
    assert build_densenet("densenet161", include_top=False, input_shape=(32, 32, 3)).name == (
        "densenet161"
    )
    changed = build_densenet(
        "densenet161", growth_rate=8, include_top=False, input_shape=(32, 32, 3)
    )
    assert changed.name == "densenet161_k8"
