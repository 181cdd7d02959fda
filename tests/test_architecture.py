"""The closed-form architecture: presets resolved, checked, counted and named.

Pure Python, no model is built: parameter counts are compared with the
published and measured figures of ANCHORS.md, and hand-computed cases where
floor and ceil, or one default and another, give different answers.
"""

from __future__ import annotations

import pytest

from keras_densenet.architecture import (
    BN_EPSILON,
    BN_MOMENTUM,
    LEGACY_BN_MOMENTUM,
    MAX_BLOCK_LAYERS,
    MAX_BLOCKS,
    MAX_INPUT_SIDE,
    MAX_WIDTH,
    RECALIBRATION_STEPS,
    TORCH_BN_EPSILON,
    blocks_from_depth,
    check_bn_epsilon,
    check_bn_momentum,
    check_compression,
    compressed_channels,
    count_trainable_params,
    min_input_size,
    model_name,
    resolve_config,
)


def test_constants_are_the_references():
    assert BN_EPSILON == 1.001e-5  # keras.applications
    assert TORCH_BN_EPSILON == 1e-5  # torchvision
    assert BN_MOMENTUM == 0.9  # PyTorch's 0.1, the paper's Torch default
    assert LEGACY_BN_MOMENTUM == 0.99  # keras.applications
    assert RECALIBRATION_STEPS == 30
    assert (MAX_WIDTH, MAX_BLOCK_LAYERS, MAX_BLOCKS, MAX_INPUT_SIDE) == (4096, 1000, 16, 16384)


@pytest.mark.parametrize(
    ("preset", "kwargs", "trainable"),
    [
        ("densenet121", {}, 7_978_856),  # keras.applications, torchvision
        ("densenet121", {"include_top": False}, 7_978_856 - (1024 * 1000 + 1000)),
        ("densenet161", {}, 28_681_000),  # torchvision
        ("densenet169", {}, 14_149_480),  # torchvision
        ("densenet201", {}, 20_013_928),  # torchvision
        ("densenet264", {}, 33_337_704),  # keras.applications' DenseNet(blocks)
        ("densenet_bc_100_12", {}, 769_162),  # paper: 0.8M
        ("densenet_bc_250_24", {}, 15_324_406),  # paper: 15.3M
        ("densenet_bc_190_40", {}, 25_624_430),  # paper: 25.6M
        # one input channel: the 3x3 stem loses 3 x 3 x 2 x 24 weights
        ("densenet_bc_100_12", {"input_shape": (28, 28, 1)}, 769_162 - 9 * 2 * 24),
        # 100 classes: the classifier grows by 90 x (342 + 1)
        ("densenet_bc_100_12", {"num_classes": 100}, 769_162 + 90 * 343),
    ],
)
def test_trainable_parameters_match_the_anchors(preset, kwargs, trainable):
    assert count_trainable_params(preset, **kwargs) == trainable


def test_counts_by_hand_tell_floor_from_ceil_and_each_term():
    small = {
        "blocks": (1, 1),
        "growth_rate": 5,
        "num_init_features": 8,
        "stem": "cifar",
        "input_shape": (16, 16, 3),
    }
    # stem 9*3*8 = 216; layer 1: BN 16 + 1x1 8*20 + BN 40 + 3x3 9*20*5 = 1116
    # (13 channels); transition: BN 26 + 1x1 13*floor(6.5)=78 -> 6 channels;
    # layer 2: BN 12 + 6*20 + 40 + 900 = 1072 (11 channels); final BN 22;
    # classifier 11*10 + 10 = 120.
    assert count_trainable_params(**small) == 2650
    assert count_trainable_params(**small, include_top=False) == 2650 - 120
    # Without bottleneck: layer 1 3x3 9*8*5 = 360, layer 2 9*6*5 = 270.
    assert (
        count_trainable_params(**small, bottleneck=False)
        == 216 + 16 + 360 + 104 + 12 + 270 + 22 + 120
    )
    # Bottleneck width 2 (10 channels): 8*10 + 20 + 9*10*5 = 550, 6*10 + 20 + 450 = 530.
    assert (
        count_trainable_params(**small, bottleneck_width=2)
        == 216 + 16 + 550 + 104 + 12 + 530 + 22 + 120
    )
    # No compression: transition 26 + 13*13; layer 2 sees 13 channels (18 after).
    assert count_trainable_params(**small, compression=1.0) == (
        216 + 16 + 1100 + 26 + 169 + 26 + 13 * 20 + 40 + 900 + 36 + 18 * 10 + 10
    )
    # The ImageNet stem: 7x7 conv 49*3*8 and its BN 16, same blocks (and its
    # default of 1000 classes unless told).
    imagenet = {**small, "stem": "imagenet", "input_shape": (64, 64, 3)}
    assert count_trainable_params(**imagenet, num_classes=10) == 2650 - 216 + 49 * 3 * 8 + 16
    assert (
        count_trainable_params(**imagenet) == 2650 - 216 + 49 * 3 * 8 + 16 - 120 + (11 + 1) * 1000
    )


def test_compressed_channels_floors_and_forgives_float_error():
    assert compressed_channels(13, 0.5) == 6
    assert compressed_channels(100, 0.29) == 29  # 28.999999999999996 in floating point
    assert compressed_channels(10, 1.0) == 10
    assert compressed_channels(7, 0.3) == 2


def test_blocks_from_depth():
    assert blocks_from_depth(100) == (16, 16, 16)
    assert blocks_from_depth(10) == (1, 1, 1)
    assert blocks_from_depth(6004) == (1000, 1000, 1000)
    assert blocks_from_depth(40, bottleneck=False) == (12, 12, 12)
    assert blocks_from_depth(7, bottleneck=False) == (1, 1, 1)
    assert blocks_from_depth(3004, bottleneck=False) == (1000, 1000, 1000)
    with pytest.raises(ValueError) as err:
        blocks_from_depth(41)
    assert str(err.value) == (
        "`depth` must be an int with (depth - 4) divisible by 6, from 10 to 6004 "
        "(with bottleneck), e.g. 100; got 41."
    )
    with pytest.raises(ValueError) as err:
        blocks_from_depth(5, bottleneck=False)
    assert str(err.value) == (
        "`depth` must be an int with (depth - 4) divisible by 3, from 7 to 3004 "
        "(without bottleneck), e.g. 52; got 5."
    )
    for bad in (4, 6010, 3007, True, 40.0, "40"):
        with pytest.raises(ValueError):
            blocks_from_depth(bad, bottleneck=bad != 3007)


def test_min_input_size():
    assert min_input_size("cifar", 1) == 1
    assert min_input_size("cifar", 3) == 4
    assert min_input_size("cifar", 4) == 8
    assert min_input_size("imagenet", 1) == 1
    assert min_input_size("imagenet", 2) == 5
    assert min_input_size("imagenet", 4) == 29


def test_scalar_checks():
    assert check_compression(1) == 1.0 and check_compression(0.5) == 0.5
    for bad in (0, 1.0001, -0.5):
        with pytest.raises(ValueError, match="`compression`"):
            check_compression(bad)
    assert check_bn_momentum(0) == 0.0 and check_bn_momentum(0.99) == 0.99
    with pytest.raises(ValueError, match=r"`bn_momentum` must be a finite number in \[0, 1\)"):
        check_bn_momentum(1)
    assert check_bn_epsilon(1e-5) == 1e-5
    for bad in (0, 1):
        with pytest.raises(ValueError, match=r"`bn_epsilon` must be a finite number in \(0, 1\)"):
            check_bn_epsilon(bad)


def test_resolve_config_defaults_follow_the_stem():
    imagenet = resolve_config(blocks=(2, 2))
    assert imagenet["stem"] == "imagenet" and imagenet["num_init_features"] == 64
    assert imagenet["num_classes"] == 1000 and imagenet["input_shape"] == (224, 224, 3)
    assert (imagenet["growth_rate"], imagenet["compression"], imagenet["bottleneck"]) == (
        32,
        0.5,
        True,
    )
    assert (imagenet["bottleneck_width"], imagenet["dropout_rate"]) == (4, 0.0)
    cifar = resolve_config(depth=40, growth_rate=12)
    assert cifar["stem"] == "cifar" and cifar["blocks"] == (6, 6, 6)
    assert cifar["num_init_features"] == 24 and cifar["num_classes"] == 10
    assert cifar["input_shape"] == (32, 32, 3)
    assert resolve_config(depth=40, bottleneck=False)["blocks"] == (12, 12, 12)
    # An explicit stem wins over the one depth or blocks imply; the ImageNet
    # stem starts with 64 features whatever the growth rate.
    assert resolve_config(depth=10, stem="imagenet", growth_rate=12)["num_init_features"] == 64
    assert resolve_config(blocks=(2, 2), stem="cifar", growth_rate=12)["num_init_features"] == 24
    # Exactly the architecture's keys, each checked value stored (ints become floats).
    resolved = resolve_config(depth=10, compression=1, dropout_rate=0)
    assert sorted(resolved) == [
        "blocks",
        "bottleneck",
        "bottleneck_width",
        "compression",
        "depth",
        "dropout_rate",
        "growth_rate",
        "input_shape",
        "num_classes",
        "num_init_features",
        "stem",
    ]
    assert type(resolved["compression"]) is float and type(resolved["dropout_rate"]) is float
    assert sorted(resolve_config(blocks=(1, 1))) == sorted(set(resolved) - {"depth"})


def test_resolve_config_merges_presets():
    bc = resolve_config("densenet_bc_100_12")
    assert bc["blocks"] == (16, 16, 16) and bc["growth_rate"] == 12
    assert resolve_config("densenet_bc_100_12", depth=40)["blocks"] == (6, 6, 6)
    assert resolve_config("densenet121", blocks=(1, 2, 3, 4))["blocks"] == (1, 2, 3, 4)
    assert resolve_config("densenet121", growth_rate=None)["growth_rate"] == 32  # None: not given
    assert resolve_config("densenet161")["num_init_features"] == 96
    with pytest.raises(ValueError) as err:
        resolve_config("densenet7")
    assert str(err.value).startswith("Unknown `preset` 'densenet7'; known presets: densenet121, ")
    with pytest.raises(ValueError, match=r"^Pass either `blocks` or `depth`, not both\.$"):
        resolve_config(blocks=(1, 1), depth=10)
    with pytest.raises(ValueError) as err:
        resolve_config()
    assert str(err.value) == (
        "Give a `preset`, `blocks` (layers per dense block) or `depth` (3-block CIFAR layout); "
        "known presets: densenet121, densenet161, densenet169, densenet201, densenet264, "
        "densenet_40_12, densenet_bc_100_12, densenet_bc_190_40, densenet_bc_250_24."
    )
    # Explicit blocks replace a depth preset's depth, and a depth a blocks preset's blocks.
    assert resolve_config("densenet_bc_100_12", blocks=(1, 2, 3))["blocks"] == (1, 2, 3)
    assert resolve_config("densenet121", depth=40)["blocks"] == (6, 6, 6)


@pytest.mark.parametrize(
    ("kwargs", "error", "needle"),
    [
        ({"growth_rate": 0}, ValueError, "`growth_rate`"),
        ({"growth_rate": 4097}, ValueError, "`growth_rate` must be an integer in [1, 4096]"),
        ({"bottleneck_width": 65}, ValueError, "`bottleneck_width` must be an integer in [1, 64]"),
        ({"compression": 0}, ValueError, "`compression`"),
        ({"dropout_rate": 1.0}, ValueError, "`dropout_rate`"),
        ({"bottleneck": 1}, TypeError, "`bottleneck` must be a bool, got 1."),
        ({"stem": "resnet"}, ValueError, "`stem` must be one of"),
        ({"num_init_features": 4097}, ValueError, "`num_init_features`"),
        ({"input_shape": (32, 32)}, ValueError, "(height, width, channels) (NHWC)"),
        ({"input_shape": (32, 32, 0)}, ValueError, "ints in [1, 16384] or None"),
        ({"input_shape": (16385, 32, 3)}, ValueError, "ints in [1, 16384] or None"),
        ({"input_shape": (32.0, 32, 3)}, ValueError, "ints in [1, 16384] or None"),
        ({"input_shape": (True, 32, 3)}, ValueError, "ints in [1, 16384] or None"),
        ({"input_shape": (32, 32, None)}, ValueError, "needs a known channel count"),
        ({"input_shape": (3, 32, 32)}, ValueError, "looks channels-first"),
        ({"input_shape": (3, None, 32)}, ValueError, "looks channels-first"),
        ({"input_shape": (3, 3, 3)}, ValueError, "at least 4"),
        ({"input_shape": (32, 3, 3)}, ValueError, "too small for the cifar stem and 3 blocks"),
        ({"input_shape": (4, 32, 5)}, ValueError, "looks channels-first"),
        ({"blocks": [1] * 17}, ValueError, "at most 16 entries, got 17"),
        ({"blocks": (1, 1001)}, ValueError, "[1, 1000]"),
    ],
)
def test_resolve_config_refuses_naming_the_argument(kwargs, error, needle):
    args = {"depth": 10, **kwargs}
    if "blocks" in kwargs:
        del args["depth"]
    with pytest.raises(error) as err:
        resolve_config(**args)
    assert needle in str(err.value)


def test_input_shapes_at_the_edges_are_accepted():
    assert resolve_config(depth=10, input_shape=(4, 4, 3))["input_shape"] == (4, 4, 3)
    assert resolve_config(depth=10, input_shape=(None, None, 1))["input_shape"] == (None, None, 1)
    assert resolve_config(depth=10, input_shape=[8, 8, 64])["input_shape"] == (8, 8, 64)
    assert resolve_config(depth=10, input_shape=(4, 4, 4))["input_shape"] == (4, 4, 4)
    # Small maps with many channels are fine once they are large enough to be NHWC.
    assert resolve_config(blocks=(1,), stem="cifar", input_shape=(5, 5, 64))["input_shape"] == (
        5,
        5,
        64,
    )
    # Four pixels high with 64 channels reads as NCHW only if the width is not
    # also that small.
    assert resolve_config(blocks=(1,), stem="cifar", input_shape=(4, 4, 64))["input_shape"] == (
        4,
        4,
        64,
    )
    with pytest.raises(ValueError) as err:
        resolve_config(blocks=(1,), stem="cifar", input_shape=(4, 5, 64))
    assert str(err.value) == (
        "`input_shape`=(4, 5, 64) looks channels-first (NCHW); keras_densenet models are NHWC: "
        "pass (height, width, channels)."
    )
    # Four channels on a four-pixel-high image is still read as NHWC.
    assert resolve_config(blocks=(1,), stem="cifar", input_shape=(4, 32, 4))["input_shape"][2] == 4
    # The minimum size follows the stem: 5 pixels for the ImageNet stem and 2 blocks.
    with pytest.raises(ValueError, match=r"imagenet stem and 2 blocks: .* at least 5"):
        resolve_config(blocks=(1, 1), input_shape=(4, 4, 3))
    assert resolve_config(blocks=(1, 1), input_shape=(5, 5, 3))["input_shape"] == (5, 5, 3)
    with pytest.raises(ValueError, match="at least 32768"):
        resolve_config(blocks=(1,) * 16, stem="cifar", input_shape=(16384, 16384, 3))


@pytest.mark.parametrize(
    ("preset", "kwargs", "name"),
    [
        ("densenet_bc_100_12", {}, "densenet_bc_100_12"),
        ("densenet_bc_100_12", {"depth": 40}, "densenet_bc_40_12"),
        ("densenet_bc_100_12", {"depth": 40, "growth_rate": 24}, "densenet_bc_40_24"),
        (None, {"depth": 40, "bottleneck": False, "compression": 1.0}, "densenet_40_32"),
        (None, {"depth": 40, "bottleneck": False, "growth_rate": 12}, "densenet_c_40_12"),
        (None, {"depth": 40, "compression": 1.0, "growth_rate": 12}, "densenet_b_40_12"),
        ("densenet121", {}, "densenet121"),
        ("densenet121", {"growth_rate": 12}, "densenet121_k12"),
        (None, {"blocks": (6, 12, 48, 32)}, "densenet201"),
        (None, {"blocks": (6, 12, 24, 16), "bottleneck": False}, "densenet63"),
        ("densenet121", {"compression": 1.0}, "densenet121"),
    ],
)
def test_model_name_says_what_was_built(preset, kwargs, name):
    assert model_name(resolve_config(preset, **kwargs), preset) == name


def test_blocks_are_checked_naming_the_argument():
    with pytest.raises(ValueError) as err:
        resolve_config(blocks=[0])
    assert str(err.value) == (
        "`blocks` must be a non-empty sequence of integers in [1, 1000], got [0]."
    )
    with pytest.raises(TypeError, match=r"^`blocks` must be"):
        resolve_config(blocks="6,12")


def test_model_name_compares_json_lists_with_tuples():
    # DenseNet-161's paper name would be densenet161_k48: a preset read back
    # from JSON (lists) must still be recognised as the preset.
    base = resolve_config("densenet161")
    assert model_name(base) == "densenet161_k48"
    assert model_name({**base, "blocks": list(base["blocks"])}, "densenet161") == "densenet161"
    assert model_name({**base, "growth_rate": 12}, "densenet161") == "densenet161_k12"
    config = resolve_config("densenet_bc_100_12")
    from_json = {**config, "blocks": list(config["blocks"])}
    assert model_name(from_json, "densenet_bc_100_12") == "densenet_bc_100_12"
    assert model_name(config) == "densenet_bc_100_12"
    assert model_name({**config, "growth_rate": 16}, "densenet_bc_100_12") == "densenet_bc_100_16"
