"""ONNX export (keras_densenet.export.onnx), run in ONNX Runtime.

Tiny conversions (a second or two each) of the hand-set "levels" classifier,
whose probabilities are known in numpy. tests/test_export.py exports a
trained mixed-precision run through the CLI.
"""

from __future__ import annotations

import logging
import os
import sys

import keras
import numpy as np
import pytest
from conftest import levels_lambda_file, levels_model, levels_probabilities

from keras_densenet.export.onnx import OPSET, export_onnx

# onnx and onnxruntime (the `onnx` extra, installed by .ci/setup) are imported in
# the tests: onnxruntime starts a thread when imported, and a mutation run forks
# its workers after collecting this file.


def _onnx():
    import onnx

    return onnx


def _session(path):
    import onnxruntime

    return onnxruntime.InferenceSession(str(path))


def _newest_opset() -> int:
    import tf2onnx

    return max(tf2onnx.constants.OPSET_TO_IR_VERSION)


def _levels(levels, size: int = 4) -> np.ndarray:
    return np.stack([np.full((size, size, 1), v, np.float32) for v in levels])


def test_the_onnx_model_takes_raw_pixels_in_any_batch(tmp_path) -> None:
    path = tmp_path / "levels.onnx"
    assert export_onnx(levels_model(), path) == str(path)
    assert os.listdir(tmp_path) == ["levels.onnx"]  # written whole, by rename
    session = _session(path)
    (given,) = session.get_inputs()
    assert given.name == "images" and given.type == "tensor(float)"
    assert given.shape[1:] == [4, 4, 1] and not isinstance(given.shape[0], int)
    (output,) = session.get_outputs()
    assert output.name == "probabilities" and output.type == "tensor(float)"
    for levels in ([0], [0, 60, 128, 200, 255]):
        (probabilities,) = session.run(None, {"images": _levels(levels)})
        np.testing.assert_allclose(
            probabilities, [levels_probabilities(v) for v in levels], rtol=1e-5
        )
    opsets = {o.domain: o.version for o in _onnx().load(str(path)).opset_import}
    assert opsets[""] == OPSET == 17


def test_the_operator_set_and_a_keras_file_source(tmp_path) -> None:
    levels_model().save(tmp_path / "levels.keras")
    for opset in (13, _newest_opset()):
        path = export_onnx(str(tmp_path / "levels.keras"), tmp_path / f"o{opset}.onnx", opset=opset)
        assert {o.domain: o.version for o in _onnx().load(path).opset_import}[""] == opset
        session = _session(path)
        (probabilities,) = session.run(None, {"images": _levels([30])})
        np.testing.assert_allclose(probabilities, [levels_probabilities(30)], rtol=1e-5)


def test_a_mixed_precision_model_becomes_a_float32_graph(tmp_path) -> None:
    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        inputs = keras.Input((4, 4, 1))
        x = keras.layers.Rescaling(1 / 255)(inputs)
        x = keras.layers.Conv2D(2, 1, name="conv")(x)
        x = keras.layers.BatchNormalization()(x)  # its statistics are frozen at export
        x = keras.layers.GlobalAveragePooling2D()(x)
        outputs = keras.layers.Dense(3, activation="softmax", dtype="float32", name="predictions")(
            x
        )
        model = keras.Model(inputs, outputs)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    path = export_onnx(model, tmp_path / "m.onnx")
    graph = _onnx().load(path).graph
    float16 = _onnx().TensorProto.FLOAT16
    assert not [t.name for t in graph.initializer if t.data_type == float16]
    pixels = np.random.default_rng(0).uniform(0, 255, (3, 4, 4, 1)).astype(np.float32)
    (got,) = _session(path).run(None, {"images": pixels})
    np.testing.assert_allclose(got, np.asarray(model(pixels), np.float32), atol=5e-3)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.levels: list[int] = []

    def emit(self, record) -> None:
        self.levels.append(record.levelno)


def test_the_converters_loggers_are_quiet_then_restored(tmp_path) -> None:
    import tensorflow as tf

    converter = logging.getLogger("tf2onnx")
    records = _Records()
    converter.addHandler(records)
    converter.setLevel(logging.DEBUG)
    tf.get_logger().setLevel(logging.INFO)
    try:
        export_onnx(levels_model(), tmp_path / "m.onnx")
        assert converter.level == logging.DEBUG
        assert tf.get_logger().level == logging.INFO
        # tf2onnx logs its versions and progress at INFO: none of it got through.
        assert all(level >= logging.ERROR for level in records.levels), records.levels
        converter.info("after the export")
        assert records.levels[-1] == logging.INFO  # and its own level is back
    finally:
        converter.removeHandler(records)
        converter.setLevel(logging.NOTSET)
        tf.get_logger().setLevel(logging.WARNING)


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("model.bin", {}, "`path` must be an .onnx file, got {path!r}."),
        ("model.onnx", {"opset": 12}, "`opset` must be an integer in [13, {newest}], got 12."),
        ("model.onnx", {"opset": "newest+1"}, "`opset` must be an integer in [13, {newest}], got "),
    ],
)
def test_bad_paths_and_operator_sets_are_refused_first(tmp_path, name, kwargs, message) -> None:
    path = str(tmp_path / name)
    newest = _newest_opset()
    if kwargs.get("opset") == "newest+1":
        kwargs = {"opset": newest + 1}  # an operator set the installed tf2onnx cannot write
        message += f"{newest + 1}."
    with pytest.raises(ValueError) as err:
        export_onnx(levels_model(), path, **kwargs)
    assert str(err.value) == message.format(path=path, newest=newest)
    assert not os.listdir(tmp_path)


def test_without_tf2onnx_the_error_names_the_extra(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # as if it were not installed
    with pytest.raises(ImportError) as err:
        export_onnx(levels_model(), tmp_path / "m.onnx")
    assert str(err.value) == (
        "ONNX export needs tf2onnx and onnx: pip install 'keras-densenet[onnx]'."
    )
    assert isinstance(err.value.__cause__, ImportError)


def test_files_with_code_need_allow_unsafe(tmp_path) -> None:
    lambda_file = levels_lambda_file(tmp_path)
    with pytest.raises(ValueError, match="allow_unsafe"):
        export_onnx(lambda_file, tmp_path / "m.onnx")
    path = export_onnx(lambda_file, tmp_path / "m.onnx", allow_unsafe=True)
    (probabilities,) = _session(path).run(None, {"images": _levels([90])})
    np.testing.assert_allclose(probabilities, [levels_probabilities(90)], rtol=1e-5)


def test_models_that_are_not_image_classifiers_are_refused(tmp_path) -> None:
    inputs = keras.Input((4, 4, 1))
    features = keras.Model(inputs, keras.layers.Conv2D(2, 1)(inputs))
    with pytest.raises(ValueError, match="classifier with output"):
        export_onnx(features, tmp_path / "m.onnx")
    assert not os.listdir(tmp_path)
