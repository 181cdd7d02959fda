"""`predict` (keras_densenet.export.predict) on a hand-set model and its export.

The model says which class an image is from its mean grey level alone, with
probabilities computed here in numpy, so every ranking, name and value is
checked against numbers known in advance. One tiny SavedModel is exported per
module (seconds); tests/test_export.py covers the export itself.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import tensorflow as tf
from conftest import LEVELS_NAMES, levels_lambda_file, levels_model, levels_probabilities

from keras_densenet import rundir
from keras_densenet.export import export_savedmodel, predict

NAMES = LEVELS_NAMES
_model = levels_model
_expected = levels_probabilities


def _image(level: int, size: int = 4, channels: int = 1) -> np.ndarray:
    return np.full((size, size, channels), level, np.uint8)


def _ranked(level: float, names=NAMES, k: int = 3) -> list[tuple[str, float]]:
    p = _expected(level)
    order = np.argsort(-p, kind="stable")[:k]
    return [(names[c], float(p[c])) for c in order]


def _assert_results(got, wanted) -> None:
    assert len(got) == len(wanted)
    for g, w in zip(got, wanted, strict=True):
        assert [name for name, _ in g] == [name for name, _ in w]
        np.testing.assert_allclose([p for _, p in g], [p for _, p in w], rtol=1e-5)
        assert all(type(p) is float for _, p in g)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> pathlib.Path:
    model_dir = tmp_path_factory.mktemp("export") / "levels"
    export_savedmodel(_model(), model_dir, version=1, class_names=NAMES)
    export_savedmodel(_model(), model_dir, version=3, class_names=["a", "b", "c"])
    return model_dir


# --- a Keras model --------------------------------------------------------------------


def test_top_k_names_and_probabilities_most_likely_first() -> None:
    images = np.stack([_image(0), _image(255), _image(128)])
    got = predict(_model(), images, top_k=2, class_names=NAMES)
    _assert_results(got, [_ranked(0, k=2), _ranked(255, k=2), _ranked(128, k=2)])
    assert [r[0][0] for r in got] == ["dark", "light", "grey"]


def test_top_k_is_capped_at_the_number_of_classes_and_names_default_to_indices() -> None:
    got = predict(_model(), _image(0), top_k=10)
    _assert_results(got, [_ranked(0, names=["0", "1", "2"])])
    assert len(predict(_model(), _image(0))[0]) == 3  # default top 5, 3 classes
    assert len(predict(_model(), _image(0), top_k=1)[0]) == 1


#: 40 classes in tied groups: numpy's default (unstable) sort reorders ties this many.
TIED = np.tile(np.array([0.1, 0.3, 0.2, 0.3], np.float32), 10) / 9.0


class _Tied(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 1], tf.uint8, "images")])
    def serve(self, images):
        return {"probabilities": tf.tile(tf.constant(TIED)[None], [tf.shape(images)[0], 1])}


def test_ties_keep_the_class_order_among_many_classes(tmp_path) -> None:
    module = _Tied()
    tf.saved_model.save(module, str(tmp_path / "u"), signatures={"serving_default": module.serve})
    (got,) = predict(tmp_path / "u", _image(0), top_k=40)
    by_class = sorted(range(40), key=lambda c: (-TIED[c], c))  # most likely first, ties by index
    assert [name for name, _ in got] == [str(c) for c in by_class]


def test_the_pixel_limit_applies_to_keras_models_too() -> None:
    assert len(predict(_model(), _image(0), max_image_pixels=16)) == 1
    with pytest.raises(ValueError, match="over the limit of 15"):
        predict(_model(), _image(0), max_image_pixels=15)


def test_ties_keep_the_class_order() -> None:
    model = _model()
    model.get_layer("predictions").set_weights([np.zeros((1, 3)), np.zeros(3)])
    (got,) = predict(model, _image(9), class_names=NAMES)
    assert [name for name, _ in got] == NAMES
    np.testing.assert_allclose([p for _, p in got], 1 / 3, rtol=1e-6)


def test_images_of_any_size_are_resized_and_answered_in_their_order() -> None:
    images = [_image(250, 6), _image(5, 4), _image(130, 3), _image(6, 6)]
    got = predict(_model(), images, top_k=3, class_names=NAMES)
    _assert_results(got, [_ranked(250), _ranked(5), _ranked(130), _ranked(6)])


def test_many_images_span_several_batches() -> None:
    levels = [int(v) for v in np.linspace(0, 255, 70)]
    got = predict(_model(), np.stack([_image(v) for v in levels]), top_k=1, class_names=NAMES)
    _assert_results(got, [_ranked(v, k=1) for v in levels])


def test_image_files_are_read_and_converted_to_the_models_channels(tmp_path) -> None:
    gray = tmp_path / "gray.png"
    gray.write_bytes(tf.io.encode_png(_image(240)).numpy())
    rgb = tmp_path / "rgb.png"
    rgb.write_bytes(tf.io.encode_png(_image(20, channels=3)).numpy())
    got = predict(_model(channels=3), [str(gray), rgb], class_names=NAMES)
    _assert_results(got, [_ranked(240), _ranked(20)])


def test_a_run_directory_and_a_keras_file_answer_with_the_runs_class_names(tmp_path) -> None:
    _model().save(tmp_path / rundir.BEST)
    (tmp_path / rundir.SUMMARY).write_text(json.dumps({"class_names": NAMES}))
    for source in (tmp_path, str(tmp_path / rundir.BEST)):
        _assert_results(predict(source, _image(0)), [_ranked(0)])
    other = ["x", "y", "z"]
    _assert_results(predict(tmp_path, _image(0), class_names=other), [_ranked(0, names=other)])


def test_files_with_code_need_allow_unsafe(tmp_path) -> None:
    lambda_file = levels_lambda_file(tmp_path)
    with pytest.raises(ValueError, match="allow_unsafe"):
        predict(lambda_file, _image(0))
    got = predict(lambda_file, _image(0), class_names=NAMES, allow_unsafe=True)
    _assert_results(got, [_ranked(0)])


# --- an export --------------------------------------------------------------------------


def test_a_savedmodel_version_answers_as_the_keras_model_with_its_class_names(exported) -> None:
    images = [_image(0), _image(200, 5)]
    _assert_results(predict(exported / "1", images), [_ranked(0), _ranked(200)])
    # A model directory stands for its highest version.
    abc = ["a", "b", "c"]
    _assert_results(predict(exported, images), [_ranked(0, names=abc), _ranked(200, names=abc)])
    _assert_results(
        predict(str(exported / "1"), images, class_names=abc),
        [_ranked(0, names=abc), _ranked(200, names=abc)],
    )


def test_a_savedmodel_converts_files_to_its_channels_and_checks_arrays(exported, tmp_path) -> None:
    rgb = tmp_path / "rgb.png"
    rgb.write_bytes(tf.io.encode_png(_image(250, channels=3)).numpy())
    _assert_results(predict(exported / "1", [rgb]), [_ranked(250)])
    with pytest.raises(ValueError) as err:
        predict(exported / "1", _image(1, channels=3))
    assert str(err.value) == ("`images[0]` has 3 channels (shape (4, 4, 3)) but the model takes 1.")
    with pytest.raises(ValueError, match="over the limit of 15"):
        predict(exported / "1", _image(1), max_image_pixels=15)


class _Other(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32)])
    def double(self, x):
        return {"y": x * 2}


class _SevenClasses(tf.Module):
    """A SavedModel with export_savedmodel's serving signature but no metadata."""

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 1], tf.uint8, "images")])
    def serve(self, images):
        batch = tf.shape(images)[0]
        logits = tf.tile(tf.range(7, dtype=tf.float32)[None], [batch, 1])
        return {"probabilities": tf.nn.softmax(logits)}


def test_a_savedmodel_without_metadata_names_classes_by_index_top_five(tmp_path) -> None:
    module = _SevenClasses()
    tf.saved_model.save(
        module, str(tmp_path / "seven"), signatures={"serving_default": module.serve}
    )
    (got,) = predict(tmp_path / "seven", _image(0))
    assert [name for name, _ in got] == ["6", "5", "4", "3", "2"]  # the default top 5
    wanted = np.exp(np.arange(7.0)) / np.exp(np.arange(7.0)).sum()
    np.testing.assert_allclose([p for _, p in got], wanted[::-1][:5], rtol=1e-5)


def test_savedmodels_not_written_by_export_savedmodel_are_refused(tmp_path) -> None:
    module = _Other()
    unnamed = tmp_path / "unnamed"
    tf.saved_model.save(module, str(unnamed), signatures={"double": module.double})
    with pytest.raises(ValueError) as err:
        predict(unnamed, _image(0))
    assert str(err.value) == f"SavedModel {str(unnamed)!r} has no 'serving_default' signature."
    other = tmp_path / "other"
    tf.saved_model.save(module, str(other), signatures={"serving_default": module.double})
    with pytest.raises(ValueError) as err:
        predict(other, _image(0))
    assert str(err.value) == (
        f"SavedModel {str(other)!r} was not exported by export_savedmodel: its "
        "'serving_default' signature has no 'images' input."
    )
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"not a protocol buffer")
    with pytest.raises(ValueError) as err:
        predict(broken, _image(0))
    assert str(err.value).startswith(f"Could not load SavedModel {str(broken)!r}: ")


# --- bad arguments ------------------------------------------------------------------------


def test_missing_paths_and_directories_without_a_model_are_refused(tmp_path) -> None:
    with pytest.raises(ValueError) as err:
        predict(tmp_path / "nothing", _image(0))
    assert str(err.value) == f"Model file or directory not found: {str(tmp_path / 'nothing')!r}."
    (tmp_path / "notes.txt").write_text("no model here")
    with pytest.raises(ValueError) as err:
        predict(tmp_path, _image(0))
    assert str(err.value) == (
        f"Directory {str(tmp_path)!r} is neither an exported SavedModel (version or model "
        "directory) nor a training run directory with best.keras or last.keras."
    )
    (tmp_path / rundir.LAST).write_bytes(b"")  # a run directory: its model is then read
    with pytest.raises(ValueError, match=r"last\.keras"):
        predict(tmp_path, _image(0))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"top_k": 0}, "`top_k` must be an integer in [1, 1000000], got 0"),
        ({"top_k": 1_000_001}, "`top_k` must be an integer in [1, 1000000], got 1000001"),
        ({"max_image_pixels": 0}, "`max_image_pixels` must be an integer in [1, "),
        ({"max_image_pixels": 2**62 + 1}, f"`max_image_pixels` must be an integer in [1, {2**62}]"),
    ],
)
def test_bad_top_k_and_pixel_limits_are_refused_first(tmp_path, kwargs, message) -> None:
    with pytest.raises(ValueError) as err:
        predict(tmp_path / "missing", _image(0), **kwargs)  # checked before the path
    assert str(err.value).startswith(message)


def test_one_million_classes_may_be_asked_for_and_wrong_names_are_refused() -> None:
    assert len(predict(_model(), _image(0), top_k=1_000_000)[0]) == 3
    with pytest.raises(ValueError, match="`class_names` must be 3 non-empty strings"):
        predict(_model(), _image(0), class_names=["a", "b"])
    with pytest.raises(TypeError):
        predict(42, _image(0))
