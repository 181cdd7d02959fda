"""SavedModel export (keras_densenet.export.savedmodel): signatures, records, versions.

Tiny exports (a second each) of the hand-set "levels" classifier, whose
probabilities are known in numpy, loaded back with `tf.saved_model.load` in
this process. tests/test_export.py checks exports in a fresh process without
the package, with saved_model_cli, and under faults.
"""

from __future__ import annotations

import calendar
import json
import locale
import os
import re
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import LEVELS_NAMES, levels_lambda_file, levels_model, levels_probabilities

from keras_densenet import build_densenet
from keras_densenet.export import export_savedmodel, read_export_info
from keras_densenet.export.savedmodel import _publish


def _levels_batch(levels, size: int = 4) -> np.ndarray:
    return np.stack([np.full((size, size, 1), v, np.uint8) for v in levels])


def _wanted(levels) -> np.ndarray:
    return np.stack([levels_probabilities(v) for v in levels])


def _utc_seconds(stamp: str) -> int:
    """Seconds since the epoch of an export record's ``exported_at`` read as UTC."""
    return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))


# Function-scoped on purpose: mutation testing maps each test to the functions it
# calls, and an export built once for the module would be charged to its first test.
@pytest.fixture
def version(tmp_path) -> str:
    model_dir = tmp_path / "levels"
    return export_savedmodel(levels_model(), model_dir, class_names=LEVELS_NAMES)


@pytest.fixture
def loaded(version: str):
    return tf.saved_model.load(version)


# --- the signatures ----------------------------------------------------------------


def test_serving_default_resizes_uint8_images_of_any_size(loaded) -> None:
    serve = loaded.signatures["serving_default"]
    assert list(serve.structured_input_signature[1]) == ["images"]
    spec = serve.structured_input_signature[1]["images"]
    assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, None, None, 1]
    for size in (4, 7, 2):
        levels = [0, 255, 128, 255]  # 4 images of 3 classes: the top class per image
        out = serve(images=tf.constant(_levels_batch(levels, size)))
        assert sorted(out) == ["classes", "probabilities"]
        assert out["probabilities"].dtype == tf.float32 and out["classes"].dtype == tf.int64
        np.testing.assert_allclose(out["probabilities"], _wanted(levels), rtol=1e-5)
        assert out["classes"].numpy().tolist() == [0, 2, 1, 2]


def test_serving_bytes_decodes_png_and_jpeg_to_the_models_channels(loaded) -> None:
    serve = loaded.signatures["serving_bytes"]
    spec = serve.structured_input_signature[1]["image_bytes"]
    assert spec.dtype == tf.string and spec.shape.as_list() == [None]
    rgb = np.full((6, 5, 3), 250, np.uint8)
    files = [
        tf.io.encode_png(np.full((4, 4, 1), 10, np.uint8)),
        tf.io.encode_png(rgb),
        tf.io.encode_jpeg(np.full((4, 4, 1), 128, np.uint8), quality=100),
    ]
    out = serve(image_bytes=tf.stack(files))
    np.testing.assert_allclose(out["probabilities"], _wanted([10, 250, 128]), rtol=1e-4)
    assert out["classes"].numpy().tolist() == [0, 2, 1]


@pytest.mark.parametrize(
    "value",
    [np.array([], object), np.array([["a", "b"]], object)],
    ids=["empty", "2-D"],
)
def test_serving_bytes_needs_a_non_empty_1d_batch(version, value) -> None:
    # A freshly loaded SavedModel, as TF Serving has it: shapes are not enforced.
    serve = tf.saved_model.load(version).signatures["serving_bytes"]
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError)) as err:
        serve(image_bytes=tf.constant(value, tf.string))
    assert "assertion failed: [`image_bytes` must be a non-empty 1-D batch of encoded images" in (
        str(err.value)
    )


def test_metadata_names_the_classes_shape_dtype_and_pixel_limit(loaded) -> None:
    meta = {k: v.numpy() for k, v in loaded.signatures["metadata"]().items()}
    assert sorted(meta) == ["class_names", "input_shape", "max_image_pixels", "serving_dtype"]
    assert [n.decode() for n in meta["class_names"]] == LEVELS_NAMES
    assert meta["input_shape"].tolist() == [4, 4, 1] and meta["input_shape"].dtype == np.int64
    assert meta["serving_dtype"] == b"float32"
    assert meta["max_image_pixels"] == 50_000_000 and meta["max_image_pixels"].dtype == np.int64
    names = loaded.class_names[0]  # the variable collection, restored by TensorFlow alone
    assert [n.decode() for n in names.numpy()] == LEVELS_NAMES
    assert names.name == "class_names:0" and names.trainable is False


def test_the_pixel_limit_is_enforced_in_both_signatures(tmp_path) -> None:
    path = export_savedmodel(levels_model(), tmp_path / "m", max_image_pixels=25)
    loaded = tf.saved_model.load(path)
    assert int(loaded.signatures["metadata"]()["max_image_pixels"]) == 25
    loaded.signatures["serving_default"](images=tf.constant(_levels_batch([1], 5)))
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"failed: \[`images` are over the lim"
    ):
        loaded.signatures["serving_default"](images=tf.constant(_levels_batch([1], 6)))
    big = tf.io.encode_png(np.zeros((6, 6, 1), np.uint8))
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"failed: \[an image in `image_bytes`"
    ):
        loaded.signatures["serving_bytes"](image_bytes=tf.stack([big]))


# --- what is recorded next to the graph ------------------------------------------------


def test_class_names_and_the_export_record_in_assets_extra(version) -> None:
    with open(os.path.join(version, "assets.extra", "class_names.txt"), encoding="utf-8") as f:
        assert f.read() == "dark\ngrey\nlight\n"
    info = read_export_info(version)
    exported_at = info.pop("exported_at")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", exported_at)
    assert abs(_utc_seconds(exported_at) - time.time()) < 600
    assert info == {
        "source": None,
        "pretrained_weights": None,
        "model": "levels",
        "trained_dtype": "float32",
        "serving_dtype": "float32",
        "batchnorm_folded": 0,
        "input_shape": [4, 4, 1],
        "num_classes": 3,
        "multi_label": False,
        "max_image_pixels": 50_000_000,
        "fingerprint": None,  # a model in memory: no file to recognise again
        "version": 1,
    }
    with open(os.path.join(version, "assets.extra", "export.json"), encoding="utf-8") as f:
        assert f.read().startswith('{\n  "source": null,')  # indented for people


@pytest.fixture
def ascii_locale():
    """This process's default text encoding made ASCII (the C locale), then restored."""
    before = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")
    assert locale.getpreferredencoding(False) != "UTF-8"
    try:
        yield
    finally:
        locale.setlocale(locale.LC_CTYPE, before)


@pytest.fixture
def east_of_utc(monkeypatch):
    """A local time zone 14 hours east of UTC (a POSIX TZ rule: no tz database needed)."""
    monkeypatch.setenv("TZ", "XYZ-14")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_the_export_time_is_recorded_in_utc(tmp_path, east_of_utc) -> None:
    assert time.localtime().tm_gmtoff == 14 * 3600
    exported_at = read_export_info(export_savedmodel(levels_model(), tmp_path))["exported_at"]
    assert abs(_utc_seconds(exported_at) - time.time()) < 600


def test_a_keras_file_source_with_unicode_names_is_recorded(tmp_path, ascii_locale) -> None:
    # Whatever the locale: the files are written as UTF-8.
    levels_model().save(tmp_path / "levels.keras")
    path = export_savedmodel(
        str(tmp_path / "levels.keras"), tmp_path / "m", class_names=["dünkel", "grau", "hell"]
    )
    info = read_export_info(path)
    assert info["source"] == str(tmp_path / "levels.keras")
    with open(os.path.join(path, "assets.extra", "class_names.txt"), encoding="utf-8") as f:
        assert f.read() == "dünkel\ngrau\nhell\n"
    names = tf.saved_model.load(path).signatures["metadata"]()["class_names"].numpy()
    assert [n.decode("utf-8") for n in names] == ["dünkel", "grau", "hell"]
    assert read_export_info(export_savedmodel(levels_model(), tmp_path / "n"))["source"] is None


def test_a_run_directory_exports_with_its_class_names(tmp_path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    levels_model().save(run / "best.keras")
    (run / "summary.json").write_text(json.dumps({"class_names": ["n", "m", "l"]}))
    path = export_savedmodel(run, tmp_path / "m")  # a pathlib.Path source is recorded too
    assert read_export_info(path)["source"] == str(run)
    with open(os.path.join(path, "assets.extra", "class_names.txt"), encoding="utf-8") as f:
        assert f.read() == "n\nm\nl\n"
    given = export_savedmodel(str(run), tmp_path / "m", class_names=LEVELS_NAMES)
    assert _names(given) == LEVELS_NAMES


def test_default_class_names_are_the_indices(tmp_path) -> None:
    path = export_savedmodel(levels_model(), tmp_path / "m")
    with open(os.path.join(path, "assets.extra", "class_names.txt"), encoding="utf-8") as f:
        assert f.read() == "0\n1\n2\n"


def _densenet() -> keras.Model:
    model = build_densenet(
        None, blocks=(1,), growth_rate=4, num_init_features=8, stem="imagenet",
        input_shape=(16, 16, 1), num_classes=3,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.moving_mean.assign(rng.uniform(-0.3, 0.3, n))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, n))
    return model


def test_batchnorm_folding_is_counted_and_keeps_the_outputs(tmp_path) -> None:
    model = _densenet()
    images = np.random.default_rng(1).integers(0, 256, (2, 16, 16, 1)).astype(np.uint8)
    wanted = np.asarray(model(images.astype(np.float32), training=False))
    folded = export_savedmodel(model, tmp_path / "m", version=1)
    plain = export_savedmodel(model, tmp_path / "m", version=2, fold_batchnorm=False)
    # The stem BN (after the stem conv) and the bottleneck BN (after the 1x1 conv).
    assert read_export_info(folded)["batchnorm_folded"] == 2
    assert read_export_info(plain)["batchnorm_folded"] == 0
    for path in (folded, plain):
        out = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(images))
        np.testing.assert_allclose(out["probabilities"], wanted, rtol=1e-4, atol=1e-6)


def test_a_bfloat16_serving_graph_is_recorded_as_such(tmp_path) -> None:
    path = export_savedmodel(_densenet(), tmp_path / "m", serving_dtype="bfloat16")
    info = read_export_info(path)
    assert (info["trained_dtype"], info["serving_dtype"]) == ("float32", "bfloat16")
    meta = tf.saved_model.load(path).signatures["metadata"]()
    assert meta["serving_dtype"].numpy() == b"bfloat16"
    out = tf.saved_model.load(path).signatures["serving_default"](
        images=tf.constant(_levels_batch([0], 16))
    )
    assert out["probabilities"].dtype == tf.float32


def test_a_missing_or_broken_record_is_refused_by_name(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"export\.json"):
        read_export_info(tmp_path)
    os.makedirs(tmp_path / "assets.extra")
    (tmp_path / "assets.extra" / "export.json").write_text("{broken")
    with pytest.raises(ValueError) as err:
        read_export_info(str(tmp_path))
    record = str(tmp_path / "assets.extra" / "export.json")
    assert str(err.value).startswith(f"The export record {record!r} is not valid JSON")


# --- versions --------------------------------------------------------------------------


def _names(path: str) -> list[str]:
    with open(os.path.join(path, "assets.extra", "class_names.txt"), encoding="utf-8") as f:
        return f.read().split()


def test_versions_count_up_from_one_and_past_gaps(tmp_path) -> None:
    model_dir = tmp_path / "new" / "m"  # created, parents included
    assert export_savedmodel(levels_model(), model_dir) == str(model_dir / "1")
    assert export_savedmodel(levels_model(), model_dir) == str(model_dir / "2")
    assert export_savedmodel(levels_model(), model_dir, version=7) == str(model_dir / "7")
    assert read_export_info(model_dir / "7")["version"] == 7
    assert export_savedmodel(levels_model(), model_dir) == str(model_dir / "8")
    assert sorted(os.listdir(model_dir)) == ["1", "2", "7", "8"]  # no scratch left


def test_an_existing_version_is_replaced_only_with_overwrite(tmp_path) -> None:
    model_dir = tmp_path / "m"
    first = export_savedmodel(levels_model(), model_dir, version=3, class_names=["a", "b", "c"])
    with pytest.raises(FileExistsError) as err:
        export_savedmodel(levels_model(), model_dir, version=3)
    assert str(err.value) == (
        f"Version 3 already exists at {first!r}; pass `overwrite=True` to replace it, or "
        "`version=None` for the next free version."
    )
    assert _names(first) == ["a", "b", "c"]
    again = export_savedmodel(
        levels_model(), model_dir, version=3, class_names=["x", "y", "z"], overwrite=True
    )
    assert again == first and _names(first) == ["x", "y", "z"]
    assert sorted(os.listdir(model_dir)) == ["3"]
    # overwrite without a version exports the next free one.
    assert export_savedmodel(levels_model(), model_dir, overwrite=True) == str(model_dir / "4")


def test_a_version_that_is_a_file_is_refused(tmp_path) -> None:
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "2").write_text("not a version")
    with pytest.raises(ValueError) as err:
        export_savedmodel(levels_model(), model_dir, version=2, overwrite=True)
    assert str(err.value) == (
        f"{str(model_dir / '2')!r} exists and is not a version directory: remove it or "
        "choose another `version`."
    )
    assert sorted(os.listdir(model_dir)) == ["2"]


def test_a_model_dir_that_cannot_be_created_is_refused(tmp_path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError) as err:
        export_savedmodel(levels_model(), tmp_path / "file" / "m")
    assert str(err.value) == (
        f"`model_dir` {str(tmp_path / 'file' / 'm')!r} cannot be created: Not a directory."
    )


def test_a_model_dir_that_is_not_writable_is_refused(tmp_path, monkeypatch) -> None:
    # Tests may run as root, whom file modes do not stop: the check is what is tested.
    model_dir = str(tmp_path / "m")
    access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: p != model_dir and access(p, mode))
    with pytest.raises(ValueError) as err:
        export_savedmodel(levels_model(), model_dir)
    assert str(err.value) == f"`model_dir` {model_dir!r} is not writable."
    assert os.listdir(model_dir) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"version": 0}, "`version`"),
        ({"overwrite": "yes"}, "`overwrite` must be True or False, got 'yes'."),
        ({"fold_batchnorm": 1}, "`fold_batchnorm` must be True or False, got 1."),
        (
            {"max_image_pixels": 2**62 + 1},
            "`max_image_pixels` must be an integer in [1, 4611686018427387904], got "
            "4611686018427387905.",
        ),
        ({"max_image_pixels": 0}, "`max_image_pixels` must be an integer in [1, "),
        ({"class_names": ["a"]}, "`class_names` must be 3 non-empty strings"),
        ({"serving_dtype": "int8"}, "`serving_dtype`"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_written(tmp_path, kwargs, message) -> None:
    with pytest.raises((ValueError, TypeError)) as err:
        export_savedmodel(levels_model(), tmp_path / "m", **kwargs)
    assert str(err.value).startswith(message)
    assert not (tmp_path / "m").exists()


def test_models_that_are_not_image_classifiers_are_refused(tmp_path) -> None:
    inputs = keras.Input((4, 4, 1))
    features = keras.Model(inputs, keras.layers.Conv2D(2, 1)(inputs))
    with pytest.raises(ValueError, match="classifier with output"):
        export_savedmodel(features, tmp_path / "m")
    with pytest.raises(TypeError):
        export_savedmodel(42, tmp_path / "m")
    assert not (tmp_path / "m").exists()


# --- publishing a finished export ------------------------------------------------------


def _scratch(model_dir, content: str) -> str:
    tmp = os.path.join(model_dir, f".tmp-{content}")
    os.makedirs(tmp)
    with open(os.path.join(tmp, "mark"), "w") as f:
        f.write(content)
    return tmp


def _mark(path) -> str:
    with open(os.path.join(path, "mark")) as f:
        return f.read()


def test_publishing_renames_the_scratch_directory_into_place(tmp_path) -> None:
    tmp = _scratch(tmp_path, "one")
    assert _publish(tmp, str(tmp_path), 1, requested=True, overwrite=False) == str(tmp_path / "1")
    assert _mark(tmp_path / "1") == "one" and not os.path.exists(tmp)


def test_a_next_free_version_taken_meanwhile_moves_on(tmp_path) -> None:
    for v in ("1", "2"):
        os.makedirs(tmp_path / v / "variables")
        (tmp_path / v / "saved_model.pb").write_bytes(b"")
    tmp = _scratch(tmp_path, "three")
    assert _publish(tmp, str(tmp_path), 2, requested=False, overwrite=True) == str(tmp_path / "3")
    assert _mark(tmp_path / "3") == "three"


def test_a_requested_version_taken_meanwhile_is_refused_unless_overwriting(tmp_path) -> None:
    (tmp_path / "5").mkdir()
    tmp = _scratch(tmp_path, "five")
    with pytest.raises(FileExistsError) as err:
        _publish(tmp, str(tmp_path), 5, requested=True, overwrite=False)
    assert str(err.value) == f"Version 5 appeared at {str(tmp_path / '5')!r} during the export."
    assert _publish(tmp, str(tmp_path), 5, requested=True, overwrite=True) == str(tmp_path / "5")
    assert _mark(tmp_path / "5") == "five"


def test_files_with_code_need_allow_unsafe(tmp_path) -> None:
    lambda_file = levels_lambda_file(tmp_path)
    with pytest.raises(ValueError, match="allow_unsafe"):
        export_savedmodel(lambda_file, tmp_path / "m")
    path = export_savedmodel(lambda_file, tmp_path / "m", allow_unsafe=True)
    out = tf.saved_model.load(path).signatures["serving_default"](
        images=tf.constant(_levels_batch([90]))
    )
    np.testing.assert_allclose(out["probabilities"], _wanted([90]), rtol=1e-5)


def test_scratch_left_by_a_killed_export_is_cleared(tmp_path) -> None:
    import subprocess
    import sys

    from keras_densenet.export.versions import scratch_name

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    ours = scratch_name(".tmp-", 1)  # this process's: alive, so kept
    stale = ours.replace(f"-{os.getpid()}-", f"-{dead.pid}-") + "abcd1234"
    (model_dir / stale / "variables").mkdir(parents=True)
    (model_dir / (ours + "live0000")).mkdir()
    export_savedmodel(levels_model(), model_dir)
    assert sorted(os.listdir(model_dir)) == sorted(["1", ours + "live0000"])


def test_the_export_is_written_quietly_to_a_scratch_directory_of_its_own(
    tmp_path, monkeypatch, capsys
) -> None:
    from keras_densenet.export.versions import _SCRATCH_RE

    archive_type = type(keras.export.ExportArchive())
    write_out = archive_type.write_out
    written = []

    def recording(self, path, **kwargs):
        written.append(path)
        return write_out(self, path, **kwargs)

    monkeypatch.setattr(archive_type, "write_out", recording)
    model_dir = tmp_path / "m"
    assert export_savedmodel(levels_model(), model_dir) == str(model_dir / "1")
    (scratch,) = written
    assert os.path.dirname(scratch) == str(model_dir)  # renamed into place, same filesystem
    match = _SCRATCH_RE.match(os.path.basename(scratch))
    assert match and (match["kind"], match["version"], match["pid"]) == (
        "tmp",
        "1",
        str(os.getpid()),
    )
    assert capsys.readouterr().out == ""  # no signature listing from Keras


def test_a_failed_write_leaves_no_scratch_and_no_version(tmp_path, monkeypatch) -> None:
    def disk_full(self, path, **kwargs):
        os.makedirs(os.path.join(path, "variables"), exist_ok=True)
        raise OSError(28, "No space left on device")

    # keras.export.ExportArchive() makes the backend's subclass: the disk fills there.
    monkeypatch.setattr(type(keras.export.ExportArchive()), "write_out", disk_full)
    with pytest.raises(OSError, match="No space left"):
        export_savedmodel(levels_model(), tmp_path / "m")
    assert os.listdir(tmp_path / "m") == []


def test_publishing_passes_on_errors_other_than_a_lost_race(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        _publish(str(tmp_path / "gone"), str(tmp_path), 1, requested=False, overwrite=False)


@pytest.mark.reliability("silent wrong answer")
def test_serving_bytes_refuses_palette_bmps_and_reads_grey_and_24_bit_ones(loaded) -> None:
    import io

    from PIL import Image

    serve = loaded.signatures["serving_bytes"]

    def bmp(image: Image.Image) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, "BMP")
        return buffer.getvalue()

    light = Image.fromarray(np.full((4, 4, 3), 250, np.uint8))
    good = [bmp(light), bmp(light.convert("L"))]  # 24-bit, and 8-bit with the grey palette
    out = serve(image_bytes=tf.constant(good))
    np.testing.assert_allclose(out["probabilities"], _wanted([250, 250]), rtol=1e-4)
    for bad in (light.quantize(8), light.convert("1")):
        with pytest.raises(tf.errors.InvalidArgumentError, match="is a palette BMP"):
            serve(image_bytes=tf.constant([bmp(bad)]))


def test_an_unchanged_model_file_exported_again_reuses_its_version(tmp_path, capsys) -> None:
    from conftest import run_command

    path = tmp_path / "levels.keras"
    levels_model().save(path)
    model_dir = tmp_path / "m"
    first = export_savedmodel(path, model_dir)
    written = os.path.getmtime(os.path.join(first, "saved_model.pb"))
    assert export_savedmodel(path, model_dir) == first  # nothing written
    assert os.path.getmtime(os.path.join(first, "saved_model.pb")) == written
    # Other options, another file, overwrite or a version: a new version.
    assert export_savedmodel(path, model_dir, max_image_pixels=1000) == str(model_dir / "2")
    assert export_savedmodel(path, model_dir, overwrite=True) == str(model_dir / "3")
    result = run_command(capsys, "export", str(path), "--out", str(model_dir))
    assert result.returncode == 0
    assert "version 3 already holds this model" in result.stdout
    levels_model(size=5).save(path)
    assert export_savedmodel(path, model_dir) == str(model_dir / "4")
    assert sorted(os.listdir(model_dir)) == ["1", "2", "3", "4"]
