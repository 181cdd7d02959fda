"""PyTorch checkpoints (torchvision, timm layout) load into the matching presets.

The PyTorch side is the torchvision-equivalent DenseNet of
``benchmarks/torch_densenet.py`` (the CPU build of torch has no torchvision),
randomly initialised, running statistics included, saved as ``.pth`` and
``.safetensors``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest
from conftest import run_command

from keras_densenet import build_densenet
from keras_densenet.weights import load_torch_weights, read_torch_state_dict

try:
    import torch
except ImportError as err:  # a required test dependency: fail, do not skip
    raise ImportError(
        "These tests need PyTorch's CPU build: bash .ci/setup installs torch==2.13.0+cpu"
    ) from err

from benchmarks.torch_densenet import (  # after the torch check
    ARCHITECTURES,
    TorchDenseNet,
    random_torch_densenet,
)


def _logits(net: TorchDenseNet, images: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return net(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()


def _same_features(model: object, net: TorchDenseNet, images: np.ndarray) -> None:
    """A features-only model against the PyTorch net's ReLU(features(x)), NHWC."""
    with torch.inference_mode():
        expected = torch.relu(net.features(torch.from_numpy(images.transpose(0, 3, 1, 2))))
    np.testing.assert_allclose(
        np.asarray(model(images, training=False)),
        expected.numpy().transpose(0, 2, 3, 1),
        rtol=1e-4,
        atol=1e-4,
    )


#: densenet169/201 differ from densenet121 only in block lengths: -m slow.
_SLOW_ARCHITECTURES = ("densenet169", "densenet201")


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=pytest.mark.slow) if name in _SLOW_ARCHITECTURES else name
        for name in sorted(ARCHITECTURES)
    ],
)
def test_torchvision_checkpoints_give_the_same_logits(tmp_path, name):
    from safetensors.torch import save_file

    net = random_torch_densenet(name)
    images = np.random.default_rng(1).normal(size=(2, 64, 64, 3)).astype(np.float32)
    expected = _logits(net, images)
    pth = tmp_path / f"{name}.pth"
    torch.save(net.state_dict(), pth)
    safetensors = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, safetensors)
    model = build_densenet(
        name, input_shape=(64, 64, 3), bn_epsilon=1e-5, classifier_activation=None
    )
    untrained = model.get_weights()
    for source in (pth, safetensors, net.state_dict()):
        model.set_weights(untrained)  # a weight a source leaves out keeps its random value
        load_torch_weights(model, source)
        got = np.asarray(model(images, training=False))
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4, err_msg=str(source))
    # weights= on the builder picks PyTorch's BN epsilon itself.
    model = build_densenet(name, input_shape=(64, 64, 3), weights=str(pth))
    assert model.get_layer("bn").epsilon == 1e-5
    probabilities = np.asarray(model(images, training=False))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_old_key_format_and_features_only(tmp_path):
    net = random_torch_densenet("densenet121", seed=3)
    state = net.state_dict()
    old = OrderedDict()
    for key, value in state.items():
        for part in ("norm1", "conv1", "norm2", "conv2"):
            key = (
                key.replace(f".{part}.", f".{part[:-1]}.{part[-1]}.")
                if "denselayer" in key
                else key
            )
        old[key] = value
    assert "features.denseblock1.denselayer1.norm.1.weight" in old
    path = tmp_path / "old.pth"
    torch.save(old, path)
    arrays = read_torch_state_dict(path)
    assert "features.denseblock1.denselayer1.norm1.weight" in arrays
    assert not any(k.endswith("num_batches_tracked") for k in arrays)
    images = np.random.default_rng(2).normal(size=(2, 64, 64, 3)).astype(np.float32)
    full = build_densenet(
        "densenet121", input_shape=(64, 64, 3), bn_epsilon=1e-5, classifier_activation=None
    )
    load_torch_weights(full, path)
    np.testing.assert_allclose(
        np.asarray(full(images, training=False)), _logits(net, images), rtol=1e-4, atol=1e-4
    )
    features = build_densenet(
        "densenet121", input_shape=(64, 64, 3), bn_epsilon=1e-5, include_top=False
    )
    load_torch_weights(features, path)  # the classifier is left out
    _same_features(features, net, images)


@pytest.mark.reliability("bad_input")
def test_mismatched_and_broken_checkpoints_change_nothing(tmp_path):
    model = build_densenet("densenet121", input_shape=(64, 64, 3), bn_epsilon=1e-5)
    before = [w.copy() for w in model.get_weights()]
    other = tmp_path / "densenet169.pth"
    torch.save(random_torch_densenet("densenet169").state_dict(), other)
    good = random_torch_densenet("densenet121").state_dict()
    missing = OrderedDict(good)
    del missing["features.norm5.running_var"]
    extra = OrderedDict(good, **{"features.extra.weight": torch.zeros(3)})
    ten = OrderedDict(good)
    ten["classifier.weight"], ten["classifier.bias"] = torch.zeros(10, 1024), torch.zeros(10)
    truncated = tmp_path / "truncated.pth"
    torch.save(good, truncated)
    truncated.write_bytes(truncated.read_bytes()[:5000])
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    not_a_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], not_a_dict)
    cases = [
        (other, "'features.transition3.norm.weight': the checkpoint has shape (1280,)"),
        (missing, "features.norm5.running_var"),
        (extra, "features.extra.weight"),
        (ten, "(10, 1024)"),
        (truncated, "truncated.pth"),
        (text, "notes.pth"),
        (not_a_dict, "not a state dict"),
        (tmp_path / "absent.safetensors", "not found"),
    ]
    for source, needle in cases:
        with pytest.raises(ValueError, match=None) as err:
            load_torch_weights(model, source)
        assert needle in str(err.value), (source, str(err.value))
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_convert_weights_command(tmp_path, capsys):
    net = random_torch_densenet("densenet121", seed=5)
    source = tmp_path / "tv.pth"
    torch.save(net.state_dict(), source)
    out = tmp_path / "densenet121.weights.h5"

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "keras_densenet", "convert-weights", *args],
            capture_output=True,
            text=True,
            timeout=600,
        )

    proc = cli(str(source), str(out), "--preset", "densenet121")
    assert proc.returncode == 0, proc.stderr[-2000:]
    model = build_densenet(
        "densenet121",
        input_shape=(64, 64, 3),
        bn_epsilon=1e-5,
        weights=str(out),
        classifier_activation=None,
    )
    images = np.random.default_rng(4).normal(size=(1, 64, 64, 3)).astype(np.float32)
    np.testing.assert_allclose(
        np.asarray(model(images, training=False)), _logits(net, images), rtol=1e-4, atol=1e-4
    )
    wrong = run_command(
        capsys,
        "convert-weights",
        str(source),
        str(tmp_path / "x.weights.h5"),
        "--preset",
        "densenet169",
    )
    lines = [line for line in wrong.stderr.splitlines() if line.strip()]
    assert wrong.returncode == 2 and len(lines) == 1 and "Architecture mismatch" in lines[0]
    assert not (tmp_path / "x.weights.h5").exists()
    bad_name = cli(str(source), str(tmp_path / "x.keras"), "--preset", "densenet121")
    assert bad_name.returncode == 2 and ".weights.h5" in bad_name.stderr
    assert sorted(os.listdir(tmp_path)) == ["densenet121.weights.h5", "tv.pth"]
    # An existing output is replaced only when asked, and a directory never.
    before = out.read_bytes()
    again = run_command(capsys, "convert-weights", str(source), str(out), "--preset", "densenet121")
    assert again.returncode == 2 and "already exists: pass --overwrite" in again.stderr
    assert out.read_bytes() == before
    (tmp_path / "d.weights.h5").mkdir()
    onto = run_command(
        capsys,
        "convert-weights",
        str(source),
        str(tmp_path / "d.weights.h5"),
        "--preset",
        "densenet121",
    )
    assert onto.returncode == 2 and "is a directory" in onto.stderr
    replaced = run_command(
        capsys,
        "convert-weights",
        str(source),
        str(out),
        "--preset",
        "densenet121",
        "--num-classes",
        "1000",
        "--overwrite",
    )
    assert replaced.returncode == 0 and "num_classes=1000, weights=" in replaced.stdout


def test_torch_preprocessing_matches_torchvision_conventions():
    from PIL import Image

    from keras_densenet.preprocessing import preprocess_input, resize_and_center_crop

    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    cropped = resize_and_center_crop(photo)
    assert cropped.shape == (224, 224, 3)
    # torchvision on a PIL image: Resize(256) (PIL bilinear) then CenterCrop(224).
    pil = Image.fromarray(photo).resize((341, 256), Image.BILINEAR)
    expected = np.asarray(pil, np.float32)[16:240, 58:282]
    assert np.abs(cropped - expected).mean() < 1.5  # antialiased bilinear, not bit-exact
    normalized = preprocess_input(cropped)
    mean = np.array([0.485, 0.456, 0.406]) * 255
    std = np.array([0.229, 0.224, 0.225]) * 255
    np.testing.assert_allclose(normalized, (cropped - mean) / std, rtol=1e-5, atol=1e-5)
    # A model built with normalization="imagenet" takes the raw pixels instead.
    net = random_torch_densenet("densenet121", seed=6)
    path_images = cropped[None].astype(np.float32)
    model = build_densenet(
        "densenet121", normalization="imagenet", bn_epsilon=1e-5, classifier_activation=None
    )
    load_torch_weights(model, net.state_dict())
    np.testing.assert_allclose(
        np.asarray(model(path_images, training=False)),
        _logits(net, normalized[None].astype(np.float32)),
        rtol=1e-4,
        atol=1e-4,
    )


# A torchvision-layout DenseNet with 1-2 layers per block (growth 8, stem 16,
# 10 classes): every mapping, wrapper and refusal in a second.
SMALL = (8, (1, 2, 1, 1), 16)
SMALL_SHAPE = (32, 32, 3)


def _small_pair(seed=0):
    net = random_torch_densenet(SMALL, seed=seed, classes=10)
    model = build_densenet(
        blocks=SMALL[1],
        growth_rate=SMALL[0],
        num_init_features=SMALL[2],
        input_shape=SMALL_SHAPE,
        num_classes=10,
        bn_epsilon=1e-5,
        classifier_activation=None,
    )
    return net, model


def _same_logits(model, net):
    images = np.random.default_rng(8).normal(size=(2, *SMALL_SHAPE)).astype(np.float32)
    np.testing.assert_allclose(
        np.asarray(model(images, training=False)), _logits(net, images), rtol=1e-4, atol=1e-4
    )


def test_small_checkpoints_in_every_wrapping_load_exactly(tmp_path):
    from safetensors.torch import save_file

    net, model = _small_pair()
    state = net.state_dict()
    untrained = model.get_weights()
    parallel = OrderedDict((f"module.{k}", v) for k, v in state.items())  # DataParallel
    safetensors = tmp_path / "small.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, safetensors)
    pth = tmp_path / "small.pth"
    torch.save({"model_state_dict": state, "epoch": 3}, pth)
    numpy_state = {k: v.numpy() for k, v in state.items()}
    sources = [
        state,
        {"state_dict": state},
        {"model": state, "optimizer": {}},
        parallel,
        numpy_state,
        safetensors,
        str(pth),
    ]
    for source in sources:
        model.set_weights(untrained)
        load_torch_weights(model, source)
        _same_logits(model, net)


def test_reading_a_state_dict_renames_keys_and_widens_floats():
    state = OrderedDict(
        [
            ("features.norm0.num_batches_tracked", torch.tensor(7)),
            ("features.denseblock1.denselayer1.norm.1.weight", torch.ones(2, dtype=torch.float64)),
            ("features.denseblock1.denselayer1.conv.2.weight", torch.ones(1, 1, 1, 1)),
            ("module.head.bias", torch.arange(3.0)),
        ]
    )
    arrays = read_torch_state_dict(state)
    assert list(arrays) == [
        "features.denseblock1.denselayer1.norm1.weight",
        "features.denseblock1.denselayer1.conv2.weight",
        "head.bias",
    ]
    assert {a.dtype for a in arrays.values()} == {np.dtype(np.float32)}
    np.testing.assert_array_equal(arrays["head.bias"], [0, 1, 2])
    for dtype in (torch.float16, torch.bfloat16):
        assert read_torch_state_dict({"w": torch.ones(2, dtype=dtype)})["w"].dtype == np.float32


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"a.running_var": torch.tensor([1.0, float("nan")])}, "'a.running_var' holds NaN"),
        ({"a.weight": torch.tensor([float("inf")])}, "'a.weight' holds NaN or infinite"),
        ({"a.running_var": torch.tensor([1.0, -0.5])}, "'a.running_var' holds negative"),
        ({"a.weight": torch.tensor([1, 2], dtype=torch.int32)}, "holds int32 values"),
        ({"a.weight": torch.tensor([True])}, "holds bool values"),
        ({"a.weight": torch.tensor([1j])}, "holds complex64 values"),
        ({"module.a.weight": torch.ones(1), "a.weight": torch.ones(1)}, "holds both"),
        (
            {
                "features.denseblock1.denselayer1.norm.1.weight": torch.ones(1),
                "features.denseblock1.denselayer1.norm1.weight": torch.ones(1),
            },
            r"holds both 'features\.denseblock1\.denselayer1\.norm\.1\.weight'",
        ),
    ],
)
def test_values_no_densenet_has_are_refused_naming_the_tensor(state, message):
    with pytest.raises(ValueError, match=message):
        read_torch_state_dict(state)


def test_safetensors_in_bfloat16_load_and_a_lying_header_is_refused(tmp_path):
    from safetensors.torch import save_file

    net, model = _small_pair()
    state = {k: v.to(torch.bfloat16) for k, v in net.state_dict().items() if v.is_floating_point()}
    path = tmp_path / "bf16.safetensors"
    save_file(state, path)
    arrays = read_torch_state_dict(str(path))
    for key, value in state.items():
        np.testing.assert_array_equal(arrays[key], value.float().numpy())  # bf16 widens exactly
    load_torch_weights(model, str(path))
    # A header that declares int32 for a float tensor: its bits are not weights.
    raw = path.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    header = raw[8 : 8 + length].replace(b'"BF16"', b'"I16" ', 1)  # the same length
    lying = tmp_path / "lying.safetensors"
    lying.write_bytes(raw[:8] + header + raw[8 + length :])
    with pytest.raises(ValueError, match="holds int16 values"):
        read_torch_state_dict(str(lying))


def test_reading_refuses_what_is_not_a_state_dict(tmp_path):
    for source in ({}, {1: torch.zeros(1)}, {"state_dict": {}}):
        with pytest.raises(ValueError) as caught:
            read_torch_state_dict(source)
        assert str(caught.value) == (
            "the state dict is not a state dict (a mapping of names to tensors)."
        )
    with pytest.raises(ValueError) as caught:
        read_torch_state_dict({"w": torch.zeros(1), "opt": "adam"})
    assert str(caught.value) == "the state dict is not a state dict: 'opt' holds a str."
    with pytest.raises(TypeError) as caught:
        read_torch_state_dict(42)
    assert str(caught.value) == (
        "`source` must be a state dict or a .pth/.safetensors path, got int."
    )
    absent = str(tmp_path / "absent.pth")
    with pytest.raises(ValueError) as caught:
        read_torch_state_dict(absent)
    assert str(caught.value) == f"PyTorch checkpoint not found: {absent!r}."
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], listed)
    with pytest.raises(ValueError) as caught:
        read_torch_state_dict(listed)
    assert str(caught.value) == (
        f"PyTorch checkpoint {str(listed)!r} is not a state dict (a mapping of names to tensors)."
    )
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 20)
    with pytest.raises(ValueError) as caught:
        read_torch_state_dict(garbage)
    assert str(caught.value).startswith(
        f"{str(garbage)!r} is not a readable .safetensors file (truncated or another format): "
    )
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError) as caught:
        read_torch_state_dict(text)
    message = str(caught.value)
    prefix = (
        f"{str(text)!r} is not a readable PyTorch state dict (truncated, another format, or a "
        "pickle of objects other than tensors): UnpicklingError: "
    )
    try:  # PyTorch's own first line follows
        torch.load(text, map_location="cpu", weights_only=True)
    except Exception as err:
        first_line = str(err).splitlines()[0]
    assert message == prefix + first_line
    assert "\n" not in message and first_line
    empty = tmp_path / "download.pth"  # a download that never started: no message at all
    empty.write_bytes(b"")
    with pytest.raises(ValueError) as caught:
        read_torch_state_dict(empty)
    assert str(caught.value) == (
        f"{str(empty)!r} is not a readable PyTorch state dict (truncated, another format, or a "
        "pickle of objects other than tensors): EOFError: "
    )


class _RunsCodeWhenUnpickled:
    """What a malicious checkpoint holds: unpickling it calls a function."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_checkpoint_that_would_run_code_is_refused_unrun(tmp_path):
    marker = str(tmp_path / "ran")
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(2), "payload": _RunsCodeWhenUnpickled(marker)}, path)
    with pytest.raises(ValueError) as caught:
        read_torch_state_dict(path)
    assert str(caught.value).startswith(
        f"{str(path)!r} is not a readable PyTorch state dict (truncated, another format, or a "
        "pickle of objects other than tensors): UnpicklingError: "
    )
    assert not os.path.exists(marker)  # torch.load(weights_only=True) never called it


def test_torch_names_of_every_layer_kind():
    from keras_densenet.weights import _torch_names

    table = {
        "conv1_conv": ("features.conv0", "conv"),
        "conv1_bn": ("features.norm0", "bn"),
        "bn": ("features.norm5", "bn"),
        "predictions": ("classifier", "dense"),
        "conv2_block1_0_bn": ("features.denseblock1.denselayer1.norm1", "bn"),
        "conv3_block12_1_conv": ("features.denseblock2.denselayer12.conv1", "conv"),
        "conv4_block3_1_bn": ("features.denseblock3.denselayer3.norm2", "bn"),
        "conv5_block16_2_conv": ("features.denseblock4.denselayer16.conv2", "conv"),
        "pool2_bn": ("features.transition1.norm", "bn"),
        "pool4_conv": ("features.transition3.conv", "conv"),
    }
    for name, expected in table.items():
        assert _torch_names(name) == expected, name
    for name in ("conv2_block1_2_bn", "conv2_block1_0_conv", "pool2_pool", "dense", "xconv1_bn"):
        assert _torch_names(name) is None, name


def test_load_refusals_name_the_tensor_and_both_shapes(tmp_path):
    net, model = _small_pair()
    before = [w.copy() for w in model.get_weights()]
    state = net.state_dict()
    missing = OrderedDict(state)
    del missing["features.denseblock2.denselayer2.conv1.weight"]
    with pytest.raises(ValueError) as caught:
        load_torch_weights(model, missing)
    assert str(caught.value) == (
        "The PyTorch state dict has no 'features.denseblock2.denselayer2.conv1.weight' for "
        "model layer 'conv3_block2_1_conv': it is not a checkpoint of this architecture."
    )
    wide = random_torch_densenet((12, SMALL[1], SMALL[2]), classes=10).state_dict()
    with pytest.raises(ValueError) as caught:
        load_torch_weights(model, wide)
    # The first mismatch in the checkpoint's own order: the first dense layer's norm1.
    assert str(caught.value) == (
        "Architecture mismatch at 'features.denseblock1.denselayer1.conv1.weight': the "
        "checkpoint has shape (48, 16, 1, 1) (PyTorch layout), model layer "
        "'conv2_block1_1_conv' expects (1, 1, 16, 32) (Keras layout)."
    )
    extra = OrderedDict(state)
    for name in ("features.extra.weight", "features.extra.bias", "aux.weight", "aux.bias"):
        extra[name] = torch.zeros(3)
    with pytest.raises(ValueError) as caught:
        load_torch_weights(model, extra)
    assert str(caught.value) == (
        "The PyTorch state dict has 4 tensor(s) the model lacks, e.g. ['aux.bias', "
        "'aux.weight', 'features.extra.bias']: it is not a checkpoint of this architecture."
    )
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    import keras

    inputs = keras.Input((4,))
    foreign = keras.Model(inputs, keras.layers.Dense(2, name="head")(inputs))
    with pytest.raises(ValueError) as caught:
        load_torch_weights(foreign, state)
    assert str(caught.value) == (
        "Model layer 'head' has no counterpart in a PyTorch DenseNet: build the model with "
        "`build_densenet` (keras.applications layer names)."
    )


def test_features_only_and_normalized_models_take_the_features(tmp_path):
    net, _ = _small_pair()
    kwargs = dict(
        blocks=SMALL[1], growth_rate=SMALL[0], num_init_features=SMALL[2], bn_epsilon=1e-5
    )
    features = build_densenet(**kwargs, input_shape=SMALL_SHAPE, include_top=False)
    load_torch_weights(features, net.state_dict())  # classifier.* ignored
    images = np.random.default_rng(9).normal(size=(2, *SMALL_SHAPE)).astype(np.float32)
    _same_features(features, net, images)
    # A model without a classifier still has the final BN: a missing norm5 is refused.
    no_norm5 = OrderedDict(
        (k, v) for k, v in net.state_dict().items() if not k.startswith("features.norm5.")
    )
    with pytest.raises(ValueError, match=re.escape("no 'features.norm5.weight'")):
        load_torch_weights(features, no_norm5)
    normalized = build_densenet(
        **kwargs,
        input_shape=SMALL_SHAPE,
        num_classes=10,
        classifier_activation=None,
        normalization="imagenet",
    )
    load_torch_weights(normalized, net.state_dict())  # the normalization layer has no tensors


def test_a_missing_reader_package_is_named(tmp_path, monkeypatch):
    """The package works without PyTorch; only reading a .pth needs it."""
    pth, st = tmp_path / "w.pth", tmp_path / "w.safetensors"
    for path in (pth, st):
        path.write_bytes(b"\x00" * 8)
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails
    with pytest.raises(ImportError) as caught:
        read_torch_state_dict(pth)
    assert str(caught.value) == (
        f"Reading {str(pth)!r} needs PyTorch (pip install torch), or convert it to .safetensors."
    )
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    with pytest.raises(ImportError) as caught:
        read_torch_state_dict(st)
    assert str(caught.value) == (
        "Reading .safetensors files needs the safetensors package: pip install safetensors."
    )


@pytest.mark.reliability("crash")
def test_a_file_size_limit_during_convert_weights_is_one_line_and_leaves_no_file(tmp_path):
    import resource

    net = random_torch_densenet("densenet121", seed=1)
    source = tmp_path / "tv.pth"
    torch.save(net.state_dict(), source)
    out = tmp_path / "out.weights.h5"

    def limit() -> None:  # ulimit -f 1024: writes past 1 MiB fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, 2**20))

    command = ["convert-weights", str(source), str(out), "--preset", "densenet121"]
    proc = subprocess.run(
        [sys.executable, "-m", "keras_densenet", *command],
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=limit,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("keras-densenet")]
    assert len(lines) == 1 and "file-size limit" in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["tv.pth"]  # no partial or temporary file
