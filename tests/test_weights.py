"""Loading keras.applications DenseNet weights (legacy HDF5 layout and models)."""

from __future__ import annotations

import h5py
import keras
import numpy as np
import pytest
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

    The features the classifier reads are compared with rtol, unlike saturated softmaxes.
    """
    both = keras.Model(model.input, [model.get_layer("avg_pool").output, model.output])
    return [np.asarray(t) for t in both(images, training=False)]


@pytest.fixture(scope="module")
def expected(reference, images):
    return _outputs(reference, images)


def assert_same_model(model, expected, images):
    pooled, probabilities = _outputs(model, images)
    np.testing.assert_allclose(pooled, expected[0], rtol=2e-5)
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
    np.testing.assert_allclose(
        np.asarray(model(images, training=False)),
        np.asarray(reference(images, training=False)),
        rtol=2e-5,
    )


def test_mismatched_architecture_is_refused(legacy_file):
    model = build_densenet("densenet169", input_shape=SHAPE)
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError, match="Architecture mismatch"):
        load_keras_applications_weights(model, legacy_file)
    for a, b in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(a, b)  # nothing was changed


def test_mismatched_shapes_are_refused(legacy_file):
    model = build_densenet("densenet121", growth_rate=16, input_shape=SHAPE)
    with pytest.raises(ValueError, match=r"at layer .conv\d_block\d+_\d_(conv|bn).*model expects"):
        load_keras_applications_weights(model, legacy_file)


def test_bad_sources(tmp_path):
    model = build_densenet(blocks=(1, 1), growth_rate=4, stem="cifar", input_shape=(8, 8, 1))
    with pytest.raises(ValueError, match="not found"):
        load_keras_applications_weights(model, tmp_path / "missing.h5")
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"\x89HDF\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(ValueError, match=r"corrupt\.h5"):
        load_keras_applications_weights(model, corrupt)
    not_legacy = tmp_path / "other.h5"
    with h5py.File(not_legacy, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(ValueError, match="layer_names"):
        load_keras_applications_weights(model, not_legacy)
    with pytest.raises(TypeError, match="source"):
        load_keras_applications_weights(model, 42)


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
    with pytest.raises(ValueError, match="no counterpart"):
        load_keras_hub_weights(build_densenet(blocks=(2, 2, 2), include_top=False), hub)
