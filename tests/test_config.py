"""`TrainConfig`: every option checked, combinations refused, dict round trips.

Pure Python (no TensorFlow op runs when a config is built), so these run in a
second and own `keras_densenet/training/config.py` in tests/mutation.sh.
"""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from keras_densenet.presets import PRESETS
from keras_densenet.training import TrainConfig
from keras_densenet.training.config import LEGACY_OPTIONS, OPTIONS

KNOWN = sorted(f.name for f in dataclasses.fields(TrainConfig))


def test_short_run_defaults_are_the_measured_ones():
    config = TrainConfig()
    assert (config.schedule, config.warmup_epochs, config.label_smoothing) == ("cosine", 1.0, 0.1)
    assert (config.momentum, config.weight_decay, config.bn_momentum) == (0.9, 1e-4, 0.9)
    assert (config.preset, config.dataset, config.epochs, config.batch_size) == (
        "densenet_bc_100_12",
        "fashion_mnist_sample",
        30,
        64,
    )


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": -1}, "batch_size"),
        ({"precision": "float8"}, "precision"),
        ({"jit_compile": "maybe"}, "jit_compile"),
        ({"schedule": "linear"}, "schedule"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"validation_fraction": 1.5}, "validation_fraction"),
        ({"preset": "densenet7"}, "preset"),
        ({"growth_rate": 0}, "growth_rate"),
        ({"distribute": "tpu"}, "distribute"),
        ({"bn_momentum": 1.0}, "bn_momentum"),
        ({"bn_recalibrate_steps": -1}, "bn_recalibrate_steps"),
        ({"warmup_epochs": -1.0}, "warmup_epochs"),
        ({"bad_images": "ignore"}, "bad_images"),
        ({"channels": 2}, "channels"),
        ({"image_size": [32]}, "image_size"),
        ({"verbose": 3}, "verbose"),
        ({"seed": -1}, "seed"),
    ],
)
def test_every_option_is_checked_by_its_rule(options, match):
    with pytest.raises(ValueError, match=rf"`{match}`") as caught:
        TrainConfig.from_dict(options)
    # The refusal is the rule's own message for that option.
    name, value = next(iter(options.items()))
    with pytest.raises(ValueError) as direct:
        OPTIONS[name].check(name, value)
    assert str(caught.value) == str(direct.value)


def test_wrong_types_are_type_errors_naming_the_option():
    with pytest.raises(TypeError, match="`epochs`"):
        TrainConfig(epochs="3")
    with pytest.raises(TypeError, match="`resume`"):
        TrainConfig(resume="yes")


def test_sequences_become_tuples_and_dicts_get_lists():
    config = TrainConfig(preset=None, blocks=[2, 3, 4], image_size=[40, 48], channels=3)
    assert config.blocks == (2, 3, 4) and isinstance(config.blocks, tuple)
    assert config.image_size == (40, 48) and isinstance(config.image_size, tuple)
    out = config.to_dict()
    assert out["blocks"] == [2, 3, 4] and out["image_size"] == [40, 48]
    assert set(out) == set(KNOWN)
    # JSON round trip: a run's config.json gives back the same config.
    again = TrainConfig.from_dict(json.loads(json.dumps(out)))
    assert again == config
    assert TrainConfig().to_dict()["blocks"] is None
    assert TrainConfig().to_dict()["image_size"] is None


def test_architecture_is_the_build_densenet_overrides():
    config = TrainConfig(
        preset=None,
        blocks=[2, 2],
        growth_rate=6,
        compression=0.25,
        bottleneck=False,
        dropout_rate=0.2,
    )
    assert config.architecture() == {
        "depth": None,
        "blocks": (2, 2),
        "growth_rate": 6,
        "compression": 0.25,
        "bottleneck": False,
        "dropout_rate": 0.2,
    }
    assert TrainConfig(depth=40).architecture() == {
        "depth": 40,
        "blocks": None,
        "growth_rate": None,
        "compression": None,
        "bottleneck": None,
        "dropout_rate": None,
    }


def test_architecture_is_checked_without_building():
    with pytest.raises(ValueError, match=re.escape("Pass either `blocks` or `depth`, not both.")):
        TrainConfig(depth=40, blocks=[2, 2, 2])
    with pytest.raises(ValueError, match="`depth`"):
        TrainConfig(depth=41)  # (41 - 4) is not a multiple of 6
    with pytest.raises(ValueError, match="Give a `preset`"):
        TrainConfig(preset=None)


def test_image_size_is_checked_against_the_architecture():
    # The ImageNet stem and 4 blocks need at least 29 pixels a side.
    message = (
        "`input_shape`=(28, 64, 3) is too small for the imagenet stem and 4 blocks: "
        "height and width must be at least 29."
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainConfig(preset="densenet121", image_size=(28, 64))
    with pytest.raises(ValueError, match=re.escape("(64, 28, 3) is too small")):
        TrainConfig(preset="densenet121", image_size=(64, 28))
    TrainConfig(preset="densenet121", image_size=(29, 29))
    # The probe uses the converted channel count: 1 where asked, else 3.
    with pytest.raises(ValueError, match=re.escape("`input_shape`=(28, 64, 1) is too small")):
        TrainConfig(preset="densenet121", image_size=(28, 64), channels=1)
    assert TrainConfig(preset="densenet121", image_size=(32, 32), channels=1).channels == 1


def test_warmup_may_last_the_whole_run_but_no_longer():
    assert TrainConfig(epochs=3, warmup_epochs=3.0).warmup_epochs == 3.0
    message = "`warmup_epochs` must be at most `epochs`=3, got 3.5."
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainConfig(epochs=3, warmup_epochs=3.5)


@pytest.mark.parametrize("precision", ["mixed_float16", "auto"])
def test_xla_with_float16_under_mirrored_is_refused(precision):
    with pytest.raises(ValueError, match=re.escape("keras-team/keras#18666")) as caught:
        TrainConfig(precision=precision, distribute="mirrored", jit_compile="on")
    assert str(caught.value).startswith(
        "`jit_compile='on'` with `precision='mixed_float16'` (or 'auto') and "
        "`distribute='mirrored'` crashes in Keras 3"
    )
    assert str(caught.value).endswith(
        ": use jit_compile 'off'/'auto', mixed_bfloat16, or no strategy."
    )
    # Each of the three alone, or any two, is fine.
    TrainConfig(precision=precision, distribute="mirrored", jit_compile="auto")
    TrainConfig(precision=precision, distribute="mirrored", jit_compile="off")
    TrainConfig(precision=precision, distribute=None, jit_compile="on")
    TrainConfig(precision=precision, distribute="data_parallel", jit_compile="on")


def test_xla_under_mirrored_is_fine_in_float32_and_bfloat16():
    for precision in ("float32", "mixed_bfloat16"):
        config = TrainConfig(precision=precision, distribute="mirrored", jit_compile="on")
        assert (config.precision, config.distribute, config.jit_compile) == (
            precision,
            "mirrored",
            "on",
        )


def test_from_dict_refuses_unknown_keys_and_non_mappings():
    message = f"Unknown training options ['colour', 'size']; known: {KNOWN}."
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainConfig.from_dict({"colour": "red", "size": 3, "epochs": 2})
    with pytest.raises(TypeError, match=re.escape("must be a dict of option names, got list.")):
        TrainConfig.from_dict([("epochs", 2)])
    assert TrainConfig.from_dict({"epochs": 2, "seed": 7}) == TrainConfig(epochs=2, seed=7)


def test_coerce_keeps_a_config_and_builds_one_from_a_dict():
    config = TrainConfig(epochs=4)
    assert TrainConfig.coerce(config) is config
    assert TrainConfig.coerce({"epochs": 4}) == config
    with pytest.raises(ValueError, match="Unknown training options"):
        TrainConfig.coerce({"epoch": 4})


def test_replace_validates_and_refuses_unknown_names():
    config = TrainConfig(epochs=4)
    changed = config.replace(epochs=6, blocks=None)
    assert changed.epochs == 6 and config.epochs == 4
    with pytest.raises(ValueError, match="`epochs`"):
        config.replace(epochs=0)
    with pytest.raises(ValueError, match=re.escape("Unknown training options ['epoch']")):
        config.replace(epoch=6)


def test_options_table_and_legacy_values():
    assert list(OPTIONS) == [f.name for f in dataclasses.fields(TrainConfig)]
    assert OPTIONS["preset"].choices == tuple(PRESETS)
    # What runs written before these options existed were trained with.
    assert dict(LEGACY_OPTIONS) == {
        "bn_momentum": 0.99,
        "warmup_epochs": 0.0,
        "bad_images": "error",
        # Runs from scratch, normalized with their data's statistics.
        "weights": None,
        "freeze_epochs": 0,
        "backbone_lr_scale": 1.0,
        "normalization": "auto",
        "labels": None,
        "class_weight": None,
    }
    for name, value in LEGACY_OPTIONS.items():
        assert OPTIONS[name].check(name, value) == value


def test_fine_tuning_options_are_checked_together():
    TrainConfig(weights="runs/x", epochs=3, freeze_epochs=3, backbone_lr_scale=0.1)
    with pytest.raises(ValueError, match=r"`freeze_epochs` must be at most `epochs`=3, got 4"):
        TrainConfig(weights="runs/x", epochs=3, freeze_epochs=4)
    for option in ({"freeze_epochs": 1}, {"backbone_lr_scale": 0.5}):
        with pytest.raises(ValueError, match="it needs `weights`"):
            TrainConfig(epochs=3, **option)
    for scale in (0.0, 1.01, float("nan")):
        with pytest.raises(ValueError, match="`backbone_lr_scale`"):
            TrainConfig(weights="runs/x", backbone_lr_scale=scale)
    with pytest.raises(ValueError, match="`normalization`"):
        TrainConfig(normalization="torch")


def test_deterministic_needs_a_seed():
    TrainConfig(deterministic=True, seed=3)
    with pytest.raises(ValueError, match=r"`deterministic` .* needs a `seed`"):
        TrainConfig(deterministic=True)
