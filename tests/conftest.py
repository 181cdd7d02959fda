"""Shared fixtures and helpers for the keras_densenet tests."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras
import numpy as np
import pytest

#: The smallest useful DenseNet: two blocks of two layers on 28x28x1.
TINY = {
    "blocks": (2, 2),
    "growth_rate": 4,
    "num_init_features": 8,
    "stem": "cifar",
    "input_shape": (28, 28, 1),
    "num_classes": 10,
}


@pytest.fixture(autouse=True)
def _float32_policy():
    """Every test starts and ends under the float32 policy."""
    keras.mixed_precision.set_dtype_policy("float32")
    yield
    keras.mixed_precision.set_dtype_policy("float32")


def assert_saved_model_round_trip(model: keras.Model, path: str, inputs: np.ndarray) -> keras.Model:
    """Saves ``model`` as ``.keras``, reloads it in safe mode, checks predictions."""
    before = model.predict(inputs, verbose=0)
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(reloaded.predict(inputs, verbose=0), before, rtol=1e-5, atol=1e-6)
    return reloaded
