"""The backbone/head split and pretrained weights for a backbone (keras_densenet.pretrained).

Every source is a real file: a PyTorch net of torchvision's layout saved with
``torch.save`` and as ``.safetensors``, a keras.applications model saved in the
legacy HDF5 layout, a keras-hub backbone saved as ``.keras``, and a model of
this package saved as ``.keras`` inside a run directory.
"""

from __future__ import annotations

import h5py
import keras
import numpy as np
import pytest
from conftest import assert_close
from keras.src.legacy.saving import legacy_h5_format

from keras_densenet import build_densenet
from keras_densenet.heads import (
    backbone_of,
    build_classifier,
    freeze_backbone,
    is_multi_label,
    pyramid_outputs,
)
from keras_densenet.models import build_backbone
from keras_densenet.preprocessing import imagenet_normalization
from keras_densenet.pretrained import (
    identify,
    load_backbone_weights,
    source_normalization,
)
from keras_densenet.weights import leaf_layers

try:
    import torch
except ImportError as err:  # a required test dependency: fail, do not skip
    raise ImportError("These tests need PyTorch's CPU build: bash .ci/setup installs it") from err

from benchmarks.torch_densenet import random_torch_densenet  # after the torch check

#: A small torchvision-layout DenseNet: growth 8, blocks (2, 2), 16 stem maps.
ARCH = (8, (2, 2), 16)
SHAPE = (32, 32, 3)


def _small(**kwargs):
    return build_densenet(
        blocks=(2, 2), growth_rate=8, num_init_features=16, input_shape=SHAPE, **kwargs
    )


@pytest.fixture(scope="module")
def net():
    return random_torch_densenet(ARCH, seed=5, classes=7)


@pytest.fixture(scope="module")
def pth(net, tmp_path_factory):
    path = tmp_path_factory.mktemp("torch") / "small.pth"
    torch.save(net.state_dict(), path)
    return str(path)


def _torch_features(net, images):
    with torch.inference_mode():
        out = torch.relu(net.features(torch.from_numpy(images.transpose(0, 3, 1, 2))))
    return out.numpy().transpose(0, 2, 3, 1)


def _images(channels=3, seed=0):
    return np.random.default_rng(seed).normal(size=(2, 32, 32, channels)).astype("float32")


def _head_weights(model):
    return [w.copy() for w in model.get_layer("predictions").get_weights()]


# ---------------------------------------------------------------------------
# The split


def test_build_densenet_is_a_backbone_and_a_classifier_head_on_the_same_layers():
    model = _small(num_classes=5)
    backbone = backbone_of(model)
    assert backbone.output_shape == (None, 4, 4, 32)  # stride 8: the stem 4, one transition
    assert backbone.get_layer("conv1_conv") is model.get_layer("conv1_conv")
    assert [layer.name for layer in model.layers[-2:]] == ["avg_pool", "predictions"]
    assert backbone.name == f"{model.name}_backbone"
    assert backbone_of(backbone) is backbone


def test_a_new_head_shares_every_backbone_weight_and_freezing_reaches_the_classifier():
    model = _small(num_classes=5)
    new = build_classifier(model, 3, multi_label=True, dropout_rate=0.2)
    assert new.output_shape == (None, 3) and is_multi_label(new) and not is_multi_label(model)
    assert new.get_layer("predictions") is not model.get_layer("predictions")
    shared = {id(w) for w in backbone_of(model).weights}
    assert {id(w) for w in backbone_of(new).weights} == shared
    freeze_backbone(new)
    assert {w.path for w in new.trainable_weights} == {"predictions/kernel", "predictions/bias"}
    freeze_backbone(new, False)
    assert len(new.trainable_weights) == len(model.trainable_weights)
    x = _images()
    probabilities = np.asarray(new(x, training=False))
    assert ((probabilities > 0) & (probabilities < 1)).all()
    assert not np.allclose(probabilities.sum(axis=1), 1.0)  # sigmoid, not softmax


def test_build_backbone_refuses_head_arguments_and_names_itself():
    backbone = build_backbone(blocks=(2, 2), growth_rate=8, input_shape=SHAPE)
    assert backbone.name.endswith("_backbone") and len(backbone.output_shape) == 4
    with pytest.raises(TypeError, match=r"no head arguments.*num_classes"):
        build_backbone(blocks=(2, 2), num_classes=3)
    with pytest.raises(ValueError, match="`num_classes`"):
        build_classifier(backbone, 0)
    with pytest.raises(ValueError, match="`pooling`"):
        build_classifier(backbone, 2, pooling=None)
    with pytest.raises(ValueError, match="no layer 'relu'"):
        build_classifier(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]), 2)


def test_pyramid_outputs_are_the_dense_blocks_at_their_strides():
    pyramid = pyramid_outputs(build_densenet("densenet121", input_shape=(64, 64, 3)))
    assert {k: v.shape[1] for k, v in pyramid.items()} == {"P2": 16, "P3": 8, "P4": 4, "P5": 2}
    cifar = pyramid_outputs(build_backbone(depth=40, input_shape=(None, None, 1)))
    assert list(cifar) == ["P0", "P1", "P2"]


# ---------------------------------------------------------------------------
# Sources


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_torch_backbone_loads_exactly_and_the_head_is_left_alone(net, pth, suffix, tmp_path):
    path = pth
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        path = str(tmp_path / "small.safetensors")
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, path)
    model = _small(num_classes=3, bn_epsilon=1e-5)  # a head of another size than the net's 7
    head = _head_weights(model)
    source = load_backbone_weights(model, path)
    assert source.kind == "torch" and source.imagenet
    x = _images()
    assert_close(backbone_of(model)(x, training=False), _torch_features(net, x), 1e-5)
    for a, b in zip(_head_weights(model), head, strict=True):
        np.testing.assert_array_equal(a, b)


def test_one_channel_model_takes_rgb_weights_with_the_stem_summed(net, pth):
    model = build_backbone(
        blocks=(2, 2), growth_rate=8, num_init_features=16, input_shape=(32, 32, 1), bn_epsilon=1e-5
    )
    load_backbone_weights(model, pth)
    grey = _images(channels=1)
    # The grey image and its RGB copy give the same features.
    assert_close(model(grey, training=False), _torch_features(net, np.repeat(grey, 3, -1)), 1e-5)


def test_keras_applications_file_with_a_1000_class_top_loads_into_a_new_head(tmp_path):
    keras.utils.set_random_seed(2)
    reference = keras.applications.DenseNet121(weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "densenet121_weights_tf_dim_ordering_tf_kernels.h5"
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, reference)
    model = build_densenet("densenet121", input_shape=(32, 32, 3), num_classes=4)
    head = _head_weights(model)
    assert load_backbone_weights(model, path).kind == "keras.applications"
    x = _images()
    features = keras.Model(reference.input, reference.get_layer("relu").output)
    assert_close(backbone_of(model)(x, training=False), features(x, training=False), 2e-5)
    np.testing.assert_array_equal(_head_weights(model)[0], head[0])


def test_a_run_directory_and_its_keras_file_load_with_their_normalization(tmp_path):
    source = _small(num_classes=7, normalization=([10.0, 20.0, 30.0], [2.0, 4.0, 8.0]))
    run = tmp_path / "run"
    run.mkdir()
    source.save(run / "best.keras")
    model = _small(num_classes=2)
    for path in (run, run / "best.keras"):
        found = load_backbone_weights(model, path)
        assert found.kind == ("run" if path == run else "keras") and not found.imagenet
        for a, b in zip(backbone_of(model).weights, backbone_of(source).weights, strict=True):
            if "normalization" not in a.path:
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        mean, std = source_normalization(found, 3)
        np.testing.assert_allclose(mean, [10.0, 20.0, 30.0])
        np.testing.assert_allclose(std, [2.0, 4.0, 8.0])
    assert source_normalization(identify(run), 1) == ([20.0], [pytest.approx(14 / 3)])


def test_keras_hub_backbone_file_loads(tmp_path):
    import keras_hub

    keras.utils.set_random_seed(1)
    hub = keras_hub.models.DenseNetBackbone(
        stackwise_num_repeats=[2, 2], growth_rate=8, image_shape=(33, 33, 3)
    )
    path = tmp_path / "hub.keras"
    hub.save(path)
    found = identify(path)
    assert found.kind == "keras-hub" and found.imagenet
    model = build_densenet(blocks=(2, 2), growth_rate=8, input_shape=(33, 33, 3), num_classes=3)
    load_backbone_weights(model, path)
    ours, theirs = leaf_layers(model), leaf_layers(hub)
    for name, hub_name in (("conv2_block1_2_conv", "stack1_block1_2_conv"), ("bn", "bn")):
        for a, b in zip(ours[name].get_weights(), theirs[hub_name].get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)
    # load_keras_hub_weights takes the saved backbone's path too; a preset name is refused.
    from keras_densenet.weights import load_keras_hub_weights

    features = build_densenet(
        blocks=(2, 2), growth_rate=8, input_shape=(33, 33, 3), include_top=False
    )
    load_keras_hub_weights(features, str(path))
    with pytest.raises(ValueError, match=r"'densenet_121_imagenet' not found.*never does"):
        load_keras_hub_weights(features, "densenet_121_imagenet")
    with pytest.raises(TypeError, match="`backbone`"):
        load_keras_hub_weights(features, 3)
    # A preset directory (what keras_hub's save_to_preset writes) loads the same way.
    preset = tmp_path / "preset"
    hub.save_to_preset(str(preset))
    assert identify(preset).kind == "keras-hub"
    other = build_densenet(blocks=(2, 2), growth_rate=8, input_shape=(33, 33, 3), num_classes=2)
    load_backbone_weights(other, preset)
    for a, b in zip(backbone_of(other).weights, backbone_of(model).weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_imagenet_normalization_of_pretrained_weights_per_channel_count(pth):
    source = identify(pth)
    mean, std = imagenet_normalization()
    assert source_normalization(source, 3) == (list(mean), list(std))
    grey_mean, grey_std = source_normalization(source, 1)
    assert grey_mean == [pytest.approx(np.mean(mean))] and grey_std == [pytest.approx(np.mean(std))]


# ---------------------------------------------------------------------------
# Refusals: one message naming the file or tensor; nothing changed


def test_another_architecture_is_refused_naming_the_tensor_and_nothing_changes(pth):
    model = build_densenet(blocks=(2, 2), growth_rate=12, num_init_features=16, input_shape=SHAPE)
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(
        ValueError, match=r"Backbone mismatch at 'features\.denseblock1.*small\.pth"
    ):
        load_backbone_weights(model, pth)
    deeper = build_densenet(blocks=(2, 3), growth_rate=8, num_init_features=16, input_shape=SHAPE)
    with pytest.raises(ValueError, match="no weights for backbone layer 'conv3_block3"):
        load_backbone_weights(deeper, pth)
    shallower = build_densenet(
        blocks=(2, 1), growth_rate=8, num_init_features=16, input_shape=SHAPE
    )
    with pytest.raises(ValueError, match=r"tensor.*the backbone lacks.*denselayer2"):
        load_backbone_weights(shallower, pth)
    for a, b in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_files_of_another_format_than_their_extension_are_refused(tmp_path, pth):
    h5 = tmp_path / "x.h5"
    with h5py.File(h5, "w") as f:
        f.attrs["layer_names"] = []
    cases = {
        "model.pth": (h5.read_bytes(), "ends in .pth but is an HDF5 file"),
        "model.safetensors": (b"not a safetensors file", "ends in .safetensors but is not one"),
        "weights.h5": (b"PK\x03\x04zip", "ends in .h5 but is not an HDF5 file"),
        "model.keras": (b"\x89HDF\r\n\x1a\n", "ends in .keras but is not a .keras"),
        "model.weights.h5": (b"", "holds no layer names"),
        "model.onnx": (b"x", "must be a keras.applications .h5 file"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ValueError, match=message):
            identify(path)
    with pytest.raises(ValueError, match="not found"):
        identify(tmp_path / "missing.pth")
    with pytest.raises(ValueError, match=r"neither a run directory .* nor a keras-hub"):
        identify(tmp_path)
    assert identify(pth).kind == "torch"
