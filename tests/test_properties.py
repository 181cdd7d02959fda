"""Property-based: every build_densenet draw matches a closed-form DenseNet or is refused."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from keras_densenet import build_densenet


def expected_params(c, f0, blocks, k, theta, bottleneck, width, stem, include_top, classes):
    """(total, trainable) parameters of a DenseNet, from the paper's definition."""
    total = (49 if stem == "imagenet" else 9) * c * f0  # stem conv, no bias
    trainable = total
    if stem == "imagenet":
        total += 4 * f0  # BN: gamma, beta, moving mean, moving variance
        trainable += 2 * f0
    channels = f0
    for b, layers in enumerate(blocks):
        for _ in range(layers):
            if bottleneck:
                convs = channels * width * k + 9 * width * k * k
                bn = channels + width * k
            else:
                convs = 9 * channels * k
                bn = channels
            total += convs + 4 * bn
            trainable += convs + 2 * bn
            channels += k
        if b < len(blocks) - 1:
            out = math.floor(channels * theta + 1e-9)
            total += 4 * channels + channels * out
            trainable += 2 * channels + channels * out
            channels = out
    total += 4 * channels
    trainable += 2 * channels
    if include_top:
        total += channels * classes + classes
        trainable += channels * classes + classes
    return total, trainable, channels


def expected_spatial(size, stem, num_blocks):
    if stem == "imagenet":
        size = math.ceil(size / 2)  # 3-pixel pad + 7x7/2 conv
        size = math.ceil(size / 2)  # 1-pixel pad + 3x3/2 max pool
    for _ in range(num_blocks - 1):
        size //= 2
    return size


def valid(args) -> bool:
    """Whether the paper's definition allows the draw, decided independently of the package."""
    blocks, k, theta = args["blocks"], args["growth_rate"], args["compression"]
    if not blocks or min(blocks) < 1 or k < 1 or not 0 < theta <= 1:
        return False
    if args["bottleneck_width"] < 1 or args["num_init_features"] < 1:
        return False
    if args["stem"] not in ("cifar", "imagenet") or not 0 <= args["dropout_rate"] < 1:
        return False
    if args["pooling"] not in (None, "avg", "max"):
        return False
    if args["include_top"] and args["num_classes"] < 1:
        return False
    if expected_spatial(args["height"], args["stem"], len(blocks)) < 1:
        return False
    channels = args["num_init_features"]
    for layers in blocks[:-1]:  # every transition keeps at least one channel
        channels = math.floor((channels + layers * k) * theta + 1e-9)
        if channels < 1:
            return False
    return True


#: Anything, mostly out of range.
anything = st.fixed_dictionaries(
    {
        "blocks": st.lists(st.integers(-1, 3), min_size=0, max_size=4),
        "growth_rate": st.integers(-2, 8),
        "compression": st.one_of(st.floats(-0.5, 1.5, allow_nan=False), st.just(1.0)),
        "bottleneck": st.booleans(),
        "bottleneck_width": st.integers(0, 4),
        "num_init_features": st.integers(-1, 12),
        "stem": st.sampled_from(["cifar", "imagenet", "resnet"]),
        "dropout_rate": st.one_of(st.just(0.0), st.floats(-0.3, 1.2, allow_nan=False)),
        "height": st.integers(1, 72),
        "channels": st.integers(1, 4),
        "include_top": st.booleans(),
        "pooling": st.sampled_from([None, "avg", "max", "mean"]),
        "num_classes": st.integers(-1, 12),
    }
)
#: In range, so that most draws build (edge cases such as a compression that
#: leaves no channel or an input too small for the downsamplings remain).
plausible = st.fixed_dictionaries(
    {
        "blocks": st.lists(st.integers(1, 3), min_size=1, max_size=4),
        "growth_rate": st.integers(1, 8),
        "compression": st.floats(0.2, 1.0, allow_nan=False),
        "bottleneck": st.booleans(),
        "bottleneck_width": st.integers(1, 4),
        "num_init_features": st.integers(1, 12),
        "stem": st.sampled_from(["cifar", "imagenet"]),
        "dropout_rate": st.floats(0.0, 0.9, allow_nan=False),
        "height": st.integers(16, 72),
        "channels": st.integers(1, 4),
        "include_top": st.booleans(),
        "pooling": st.sampled_from([None, "avg", "max"]),
        "num_classes": st.integers(1, 12),
    }
)
arguments = st.one_of(plausible, plausible, plausible, anything)


@pytest.mark.reliability("bad_input")
# 50 draws, each building a real Keras model (test_architecture.py checks the
# closed forms themselves against hand-computed counts).
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arguments)
def test_build_matches_closed_form_or_raises(args):
    kwargs = {
        "blocks": tuple(args["blocks"]),
        "growth_rate": args["growth_rate"],
        "compression": args["compression"],
        "bottleneck": args["bottleneck"],
        "bottleneck_width": args["bottleneck_width"],
        "num_init_features": args["num_init_features"],
        "stem": args["stem"],
        "dropout_rate": args["dropout_rate"],
        "input_shape": (args["height"], args["height"], args["channels"]),
        "include_top": args["include_top"],
        "pooling": args["pooling"],
        "num_classes": args["num_classes"],
    }
    if not valid(args):
        # An invalid draw is refused, naming an argument, before anything is built.
        with pytest.raises((ValueError, TypeError), match="`"):
            build_densenet(**kwargs)
        event("refused")
        return
    model = build_densenet(**kwargs)  # a valid draw always builds
    event("built")
    blocks = kwargs["blocks"]
    total, trainable, channels = expected_params(
        args["channels"],
        args["num_init_features"],
        blocks,
        args["growth_rate"],
        args["compression"],
        args["bottleneck"],
        args["bottleneck_width"],
        args["stem"],
        args["include_top"],
        args["num_classes"],
    )
    assert model.count_params() == total
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == trainable
    size = expected_spatial(args["height"], args["stem"], len(blocks))
    assert size >= 1
    if args["include_top"]:
        assert model.output_shape == (None, args["num_classes"])
    elif args["pooling"] in ("avg", "max"):
        assert model.output_shape == (None, channels)
    else:
        assert model.output_shape == (None, size, size, channels)
    keras.backend.clear_session()
