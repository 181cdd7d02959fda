"""Loading keras.applications DenseNet weights (legacy HDF5 layout and models)."""

from __future__ import annotations

import re

import h5py
import keras
import numpy as np
import pytest
from conftest import assert_close
from keras.src.legacy.saving import legacy_h5_format

from keras_densenet import build_densenet, densenet121, load_keras_applications_weights

#: The input size of every model here.
SHAPE = (64, 64, 3)


@pytest.fixture(scope="module")
def reference():
    """A keras.applications DenseNet121 with random (seeded) weights.

    At 64x64 (any size from 32 up builds the same weights): a 224x224 forward pass
    costs twelve times as much and checks nothing more.
    """
    keras.utils.set_random_seed(3)
    model = keras.applications.DenseNet121(weights=None, input_shape=SHAPE)
    # Non-trivial BN statistics, so a wrong mapping shows in the outputs.
    rng = np.random.default_rng(3)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            mean, var = layer.moving_mean, layer.moving_variance
            mean.assign(rng.normal(0, 0.1, mean.shape).astype("float32"))
            var.assign(rng.uniform(0.5, 1.5, var.shape).astype("float32"))
    return model


@pytest.fixture(scope="module")
def legacy_file(reference, tmp_path_factory):
    """The published file layout: one HDF5 group per layer name."""
    path = tmp_path_factory.mktemp("w") / "densenet121_weights_tf_dim_ordering_tf_kernels.h5"
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, reference)
    return str(path)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(4).uniform(-1, 1, (2, *SHAPE)).astype("float32")


def _outputs(model, images):
    """The pooled features and the probabilities, called eagerly (no graph to trace).

    The features the classifier reads are compared with rtol, unlike saturated softmaxes
    (and an atol far below any weight mix-up for the features near 0: the fused
    BatchNormalization kernel rounds differently from keras.applications' separate ops).
    """
    both = keras.Model(model.input, [model.get_layer("avg_pool").output, model.output])
    return [np.asarray(t) for t in both(images, training=False)]


@pytest.fixture(scope="module")
def expected(reference, images):
    return _outputs(reference, images)


def assert_same_model(model, expected, images):
    pooled, probabilities = _outputs(model, images)
    assert_close(pooled, expected[0], 2e-5)
    np.testing.assert_allclose(probabilities, expected[1], atol=1e-6)


def test_legacy_file_gives_same_predictions(expected, legacy_file, images):
    model = densenet121(input_shape=SHAPE)
    load_keras_applications_weights(model, legacy_file)
    assert_same_model(model, expected, images)


def test_weights_argument_accepts_legacy_file(expected, legacy_file, images):
    model = build_densenet("densenet121", weights=legacy_file, input_shape=SHAPE)
    assert_same_model(model, expected, images)


def test_model_instance_source(reference, expected, images):
    model = densenet121(input_shape=SHAPE)
    load_keras_applications_weights(model, reference)
    assert_same_model(model, expected, images)


def test_notop_model_instance(images):
    reference = keras.applications.DenseNet121(
        weights=None, include_top=False, pooling="avg", input_shape=SHAPE
    )
    model = densenet121(include_top=False, pooling="avg", input_shape=SHAPE)
    load_keras_applications_weights(model, reference)
    assert_close(model(images, training=False), reference(images, training=False), 2e-5)


def test_mismatched_architecture_is_refused(legacy_file):
    model = build_densenet("densenet169", input_shape=SHAPE)
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError, match="Architecture mismatch"):
        load_keras_applications_weights(model, legacy_file)
    for a, b in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(a, b)  # nothing was changed


def test_keras_hub_backbone_weights_load_and_odd_sizes_match():
    """keras-hub's DenseNetBackbone: all weights map; its 'same' stem padding shifts even sizes."""
    try:
        import keras_hub
    except ImportError as err:  # a required test dependency: bash .ci/setup installs it
        raise ImportError("This test needs keras-hub: bash .ci/setup installs it") from err
    from keras_densenet.weights import load_keras_hub_weights

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    for size, identical in ((65, True), (64, False)):
        hub = keras_hub.models.DenseNetBackbone(
            stackwise_num_repeats=[2, 2, 2, 2], image_shape=(size, size, 3)
        )
        for layer in hub.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.set_weights([rng.uniform(0.5, 1.5, w.shape) for w in layer.get_weights()])
        ours = build_densenet(blocks=(2, 2, 2, 2), include_top=False, input_shape=(size, size, 3))
        load_keras_hub_weights(ours, hub)
        images = rng.uniform(0, 1, (2, size, size, 3)).astype("float32")
        expected = np.asarray(hub(images, training=False))
        got = np.asarray(ours(images, training=False))
        if identical:
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
        else:
            assert np.abs(got - expected).max() > 1e-3
    fewer = build_densenet(blocks=(2, 2, 2), include_top=False, input_shape=(64, 64, 3))
    with pytest.raises(ValueError) as caught:
        load_keras_hub_weights(fewer, hub)
    assert str(caught.value) == (
        f"keras-hub layer 'transition3_bn' has no counterpart in model {fewer.name!r}: "
        "build it with the backbone's blocks, growth rate and include_top=False."
    )
    wider = build_densenet(
        blocks=(2, 2, 2, 2), growth_rate=16, include_top=False, input_shape=(64, 64, 3)
    )
    before = [w.copy() for w in wider.get_weights()]
    with pytest.raises(ValueError) as caught:
        load_keras_hub_weights(wider, hub)
    assert str(caught.value) == (
        "Architecture mismatch at keras-hub layer 'stack1_block1_1_conv': shapes "
        "[(1, 1, 64, 128)], model layer 'conv2_block1_1_conv' expects [(1, 1, 64, 64)]."
    )
    for a, b in zip(wider.get_weights(), before, strict=True):
        np.testing.assert_array_equal(a, b)
    with_top = build_densenet(blocks=(2, 2, 2, 2), num_classes=5, input_shape=(64, 64, 3))
    with pytest.raises(ValueError) as caught:
        load_keras_hub_weights(with_top, hub)
    assert str(caught.value) == (
        "The keras-hub backbone has no weights for model layers ['predictions']."
    )
    # A model's own input normalization is not the backbone's to fill.
    normalized = build_densenet(
        blocks=(2, 2, 2, 2), include_top=False, input_shape=(64, 64, 3), normalization="imagenet"
    )
    load_keras_hub_weights(normalized, hub)


# A keras.applications DenseNet with 1-2 layers per block (its DenseNet121 is
# DenseNet([6, 12, 24, 16])): the same layer names and weight layout, built in
# a second, so every mapping and refusal below is checked without DenseNet-121.
SMALL_BLOCKS = (1, 2, 1, 1)
SMALL_SHAPE = (32, 32, 3)


def _small_reference(include_top=True):
    from keras.src.applications.densenet import DenseNet

    keras.utils.set_random_seed(5)
    model = DenseNet(
        list(SMALL_BLOCKS),
        include_top=include_top,
        weights=None,
        input_shape=SMALL_SHAPE,
        pooling=None if include_top else "avg",
        classes=10,
    )
    rng = np.random.default_rng(5)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(0, 0.1, layer.moving_mean.shape))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, layer.moving_variance.shape))
    return model


def _small(**kwargs):
    return build_densenet(blocks=SMALL_BLOCKS, input_shape=SMALL_SHAPE, num_classes=10, **kwargs)


def _logits_equal(model, reference):
    x = np.random.default_rng(6).normal(size=(2, *SMALL_SHAPE)).astype("float32")
    features = [
        keras.Model(m.input, m.get_layer("relu").output)(x, training=False)
        for m in (model, reference)
    ]
    assert_close(features[0], features[1], 2e-5)
    np.testing.assert_allclose(
        np.asarray(model(x, training=False)), np.asarray(reference(x, training=False)), atol=1e-6
    )


def _write_legacy(path, model, *, group=None, strings="keras"):
    """keras.applications' layout; `group` nests it as a whole-model file does.

    ``strings``: "keras" as Keras 3 writes the name attributes; "str" as
    variable-length strings; "bytes" as fixed-length byte strings (``S``), the
    way the published keras.applications files (h5py 2) hold them, with a
    weightless layer's ``weight_names`` left out (as some writers do).
    """
    with h5py.File(path, "w") as f:
        target = f.create_group(group) if group else f
        legacy_h5_format.save_weights_to_hdf5_group(target, model)
        if strings == "keras":
            return str(path)
        names = [
            n.decode() if isinstance(n, bytes) else str(n) for n in target.attrs["layer_names"]
        ]
        convert = (lambda xs: np.array(xs, dtype="S")) if strings == "bytes" else list
        target.attrs["layer_names"] = convert(names)
        for name in names:
            weights = [
                w.decode() if isinstance(w, bytes) else str(w)
                for w in target[name].attrs["weight_names"]
            ]
            if weights:
                target[name].attrs["weight_names"] = convert(weights)
            elif strings == "bytes":
                del target[name].attrs["weight_names"]
    return str(path)


@pytest.mark.parametrize(
    ("group", "strings"),
    [(None, "keras"), (None, "str"), (None, "bytes"), ("model_weights", "keras")],
)
def test_small_legacy_files_in_every_layout_load_exactly(tmp_path, group, strings):
    reference = _small_reference()
    path = _write_legacy(tmp_path / "small.h5", reference, group=group, strings=strings)
    if strings == "bytes":
        with h5py.File(path) as f:
            assert isinstance(f.attrs["layer_names"][0], bytes)
            assert "weight_names" not in f["relu"].attrs
    model = _small(dropout_rate=0.2)  # dropout layers own no weights: still a match
    load_keras_applications_weights(model, path)
    _logits_equal(model, reference)


def test_small_instance_and_notop_load_exactly():
    reference = _small_reference()
    model = _small()
    load_keras_applications_weights(model, reference)
    _logits_equal(model, reference)
    notop_ref = _small_reference(include_top=False)
    notop = build_densenet(
        blocks=SMALL_BLOCKS, input_shape=SMALL_SHAPE, include_top=False, pooling="avg"
    )
    load_keras_applications_weights(notop, notop_ref)
    x = np.random.default_rng(7).normal(size=(2, *SMALL_SHAPE)).astype("float32")
    assert_close(notop(x, training=False), notop_ref(x, training=False), 2e-5)


def test_refusals_name_the_source_and_what_differs(tmp_path):
    reference = _small_reference()
    path = _write_legacy(tmp_path / "small.h5", reference)
    other = build_densenet(blocks=(1, 2, 2, 1), input_shape=SMALL_SHAPE, num_classes=10)
    before = [w.copy() for w in other.get_weights()]
    with pytest.raises(ValueError) as caught:
        load_keras_applications_weights(other, path)
    assert str(caught.value) == (
        f"Architecture mismatch between file {path!r} and model {other.name!r}: "
        "4 layers have no weights in the source (e.g. ['conv4_block2_0_bn', "
        "'conv4_block2_1_bn', 'conv4_block2_1_conv']), 0 source layers are not in the "
        "model (e.g. [])."
    )
    for a, b in zip(other.get_weights(), before, strict=True):
        np.testing.assert_array_equal(a, b)
    smaller = build_densenet(blocks=(1, 1, 1, 1), input_shape=SMALL_SHAPE, num_classes=10)
    with pytest.raises(ValueError) as caught:
        load_keras_applications_weights(smaller, reference)
    assert str(caught.value) == (
        f"Architecture mismatch between model {reference.name!r} and model {smaller.name!r}: "
        "0 layers have no weights in the source (e.g. []), 4 source layers are not in the "
        "model (e.g. ['conv3_block2_0_bn', 'conv3_block2_1_bn', 'conv3_block2_1_conv'])."
    )
    wider = _small(growth_rate=16)
    with pytest.raises(ValueError) as caught:
        load_keras_applications_weights(wider, path)
    message = str(caught.value)
    assert message.startswith(
        f"Architecture mismatch between file {path!r} and model {wider.name!r} at layer "
    )
    assert re.search(
        r"at layer 'conv\d_block\d_\d_(conv|bn)': source weight shapes \[\(.*\)\], "
        r"model expects \[\(.*\)\]\.$",
        message,
    )
    with pytest.raises(TypeError) as caught:
        load_keras_applications_weights(wider, 42)
    assert str(caught.value) == "`source` must be a path or a keras.Model, got int."
    missing = str(tmp_path / "missing.h5")
    with pytest.raises(ValueError) as caught:
        load_keras_applications_weights(wider, missing)
    assert str(caught.value) == f"Weights file not found: {missing!r}."
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(ValueError) as caught:
        load_keras_applications_weights(wider, plain)
    assert str(caught.value) == (
        f"Weights file {str(plain)!r} is not a keras.applications (legacy HDF5) weights "
        "file: it has no `layer_names` attribute."
    )
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"\x89HDF\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(ValueError) as caught:
        load_keras_applications_weights(wider, corrupt)
    assert str(caught.value).startswith(f"Cannot read weights file {str(corrupt)!r}: ")


def test_load_weights_picks_the_reader_by_file_name(tmp_path):
    from keras_densenet.weights import load_weights

    reference = _small_reference()
    legacy = _write_legacy(tmp_path / "small.h5", reference)
    model = _small()
    load_weights(model, legacy)
    _logits_equal(model, reference)
    keras_file = str(tmp_path / "ours.weights.h5")
    model.save_weights(keras_file)
    again = _small()
    load_weights(again, tmp_path / "ours.weights.h5")
    _logits_equal(again, reference)
    missing = str(tmp_path / "none.weights.h5")
    with pytest.raises(ValueError) as caught:
        load_weights(again, missing)
    assert str(caught.value) == f"`weights` file not found: {missing!r}."
    other = build_densenet(blocks=(1, 1, 1, 1), input_shape=SMALL_SHAPE, num_classes=10)
    with pytest.raises(ValueError) as caught:
        load_weights(other, keras_file)
    assert str(caught.value).startswith(
        f"Cannot load weights file {keras_file!r} into {other.name!r}: "
    )
    broken = tmp_path / "broken.weights.h5"
    broken.write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match=re.escape(f"Cannot load weights file {str(broken)!r}")):
        load_weights(again, broken)
    # PyTorch endings go to the PyTorch reader (its own refusal for a bad file).
    for ending in (".pth", ".pt", ".bin", ".safetensors"):
        bad = tmp_path / f"w{ending}"
        bad.write_bytes(b"not a checkpoint")
        with pytest.raises(ValueError) as caught:
            load_weights(again, bad)
        kind = ".safetensors file" if ending == ".safetensors" else "PyTorch state dict"
        assert str(caught.value).startswith(f"{str(bad)!r} is not a readable {kind} ")
