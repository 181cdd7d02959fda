"""Tests for keras_densenet.export: real SavedModels, real subprocesses, real files."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import run_command

from keras_densenet import DenseBlock, build_densenet, export
from keras_densenet.batchnorm import recalibrate_batchnorm
from keras_densenet.data import FASHION_MNIST_CLASSES, read_idx
from keras_densenet.export.tflite import equalize_concatenations

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_IMAGES = FASHION_DIR / "t10k-images-idx3-ubyte.gz"
FASHION_LABELS = FASHION_DIR / "t10k-labels-idx1-ubyte.gz"
CLASS_NAMES = list(FASHION_MNIST_CLASSES)
TOLERANCE = 1e-5


def tiny_model(channels: int = 1, **overrides: object) -> keras.Model:
    args = {
        "blocks": (2, 2),
        "growth_rate": 4,
        "num_init_features": 8,
        "stem": "cifar",
        "input_shape": (28, 28, channels),
        "num_classes": 10,
        "normalization": ([72.9] * channels, [90.0] * channels),
    }
    args.update(overrides)
    return build_densenet(**args)


def keras_probabilities(model: keras.Model, images: np.ndarray) -> np.ndarray:
    """What the exported graph must compute: tf.image.resize, then the model."""
    height, width = model.input_shape[1:3]
    pixels = tf.image.resize(tf.cast(images, tf.float32), (height, width))
    return np.asarray(model(pixels, training=False), np.float32)


def run_python(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def digit_dirs(model_dir: Path) -> list[str]:
    return sorted(p.name for p in model_dir.iterdir() if p.name.isdigit())


def assert_complete_versions_only(model_dir: Path) -> None:
    for name in digit_dirs(model_dir):
        version = model_dir / name
        assert (version / "saved_model.pb").is_file(), f"incomplete version {version}"
        assert (version / "variables" / "variables.index").is_file(), f"no variables in {version}"


def synthetic_images(count: int, seed: int) -> np.ndarray:
    """Blurry random shapes with noise, like small photos, as uint8 pixels."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(count, 7, 7, 1)).astype(np.float32)
    fine = tf.image.resize(coarse, (28, 28), method="bicubic").numpy()
    return np.clip(np.round(fine + rng.normal(0, 20, fine.shape)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def model() -> keras.Model:
    # Briefly trained to tell brightness bands apart: an untrained DenseNet
    # predicts nearly the same probabilities for every input, which would let
    # a wrong preprocessing step pass the comparisons below.
    keras.utils.set_random_seed(0)
    model = tiny_model()
    train = synthetic_images(400, seed=1)
    brightness = train.mean(axis=(1, 2, 3))
    labels = np.digitize(brightness, np.quantile(brightness, np.linspace(0.1, 0.9, 9)))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    model.fit(train.astype(np.float32), labels, batch_size=40, epochs=3, verbose=0)
    recalibrate_batchnorm(model, train, steps=None, batch_size=len(train))
    return model


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return synthetic_images(6, seed=0)


@pytest.fixture(scope="module")
def version_dir(tmp_path_factory: pytest.TempPathFactory, model: keras.Model) -> Path:
    model_dir = tmp_path_factory.mktemp("saved_models") / "fashion"
    return Path(export.export_savedmodel(model, model_dir, class_names=CLASS_NAMES))


@pytest.fixture(scope="module")
def loaded(version_dir: Path) -> object:
    return tf.saved_model.load(str(version_dir))


def test_model_is_discriminating(model: keras.Model, images: np.ndarray) -> None:
    probabilities = keras_probabilities(model, images)
    assert np.abs(keras_probabilities(model, 255 - images) - probabilities).max() > 0.1
    assert np.abs(probabilities - probabilities.mean(axis=0)).max() > 0.05


def test_export_layout(version_dir: Path) -> None:
    assert version_dir.name == "1"
    assert (version_dir / "saved_model.pb").is_file()
    assert (version_dir / "variables" / "variables.index").is_file()
    names = (version_dir / "assets.extra" / export.CLASS_NAMES_FILE).read_text().splitlines()
    assert names == CLASS_NAMES
    assert [p.name for p in version_dir.parent.iterdir()] == ["1"]  # no temp dirs left


def test_fresh_process_without_package_matches_keras(
    tmp_path: Path, version_dir: Path, model: keras.Model, images: np.ndarray
) -> None:
    bigger = tf.image.resize(images, (40, 36), method="nearest").numpy().astype(np.uint8)
    smaller = images[:, 3:20, 5:27]
    np.savez(tmp_path / "inputs.npz", same=images, bigger=bigger, smaller=smaller)
    run_python(
        """
        import importlib.abc, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "keras_densenet":
                    raise ImportError("the SavedModel must load without keras_densenet")

        sys.meta_path.insert(0, Block())
        import numpy as np
        import tensorflow as tf

        loaded = tf.saved_model.load(sys.argv[1])
        serve = loaded.signatures["serving_default"]
        inputs = np.load(sys.argv[2])
        out = {}
        for key in inputs.files:
            result = serve(images=tf.constant(inputs[key]))
            out[key + "_probabilities"] = result["probabilities"].numpy()
            out[key + "_classes"] = result["classes"].numpy()
        meta = loaded.signatures["metadata"]()
        out["class_names"] = np.array([n.decode() for n in meta["class_names"].numpy()])
        out["input_shape"] = meta["input_shape"].numpy()
        out["variable"] = np.array([n.decode() for n in loaded.class_names[0].numpy()])
        assert "keras_densenet" not in sys.modules
        np.savez(sys.argv[3], **out)
        """,
        str(version_dir),
        str(tmp_path / "inputs.npz"),
        str(tmp_path / "outputs.npz"),
    )
    out = np.load(tmp_path / "outputs.npz")
    for key, batch in (("same", images), ("bigger", bigger), ("smaller", smaller)):
        expected = keras_probabilities(model, batch)
        probabilities = out[f"{key}_probabilities"]
        assert probabilities.dtype == np.float32
        assert probabilities.shape == (len(images), 10)
        np.testing.assert_allclose(probabilities, expected, rtol=0, atol=TOLERANCE)
        assert out[f"{key}_classes"].dtype == np.int64
        np.testing.assert_array_equal(out[f"{key}_classes"], expected.argmax(axis=1))
    assert out["class_names"].tolist() == CLASS_NAMES
    assert out["variable"].tolist() == CLASS_NAMES
    assert out["input_shape"].tolist() == [28, 28, 1]
    # The same-size path is not resized differently: raw model on raw pixels.
    raw = np.asarray(model(images.astype(np.float32), training=False))
    np.testing.assert_allclose(out["same_probabilities"], raw, rtol=0, atol=TOLERANCE)


def saved_model_cli() -> str:
    path = Path(sys.executable).parent / "saved_model_cli"
    assert path.exists(), "saved_model_cli comes with tensorflow; it must be next to this Python"
    return str(path)


def test_saved_model_cli_show_and_run(
    tmp_path: Path, version_dir: Path, model: keras.Model, images: np.ndarray
) -> None:
    cli = saved_model_cli()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    show = subprocess.run(
        [cli, "show", "--all", "--dir", str(version_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert show.returncode == 0, show.stderr[-3000:]
    text = show.stdout
    for needle in (
        "signature_def['serving_default']",
        "signature_def['serving_bytes']",
        "signature_def['metadata']",
        "inputs['images']",
        "inputs['image_bytes']",
        "outputs['probabilities']",
        "outputs['classes']",
        "outputs['class_names']",
        "DT_UINT8",
        "shape: (-1, -1, -1, 1)",
    ):
        assert needle in text, f"{needle!r} missing from saved_model_cli show output"

    bigger = tf.image.resize(images, (33, 45), method="nearest").numpy().astype(np.uint8)
    np.save(tmp_path / "batch.npy", bigger)
    run = subprocess.run(
        [
            cli,
            "run",
            "--dir",
            str(version_dir),
            "--tag_set",
            "serve",
            "--signature_def",
            "serving_default",
            "--inputs",
            f"images={tmp_path / 'batch.npy'}",
            "--outdir",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    probabilities = np.load(tmp_path / "out" / "probabilities.npy")
    classes = np.load(tmp_path / "out" / "classes.npy")
    expected = keras_probabilities(model, bigger)
    np.testing.assert_allclose(probabilities, expected, rtol=0, atol=TOLERANCE)
    np.testing.assert_array_equal(classes, expected.argmax(axis=1))


@pytest.mark.parametrize("body_format", export.REQUEST_FORMATS)
def test_rest_body_round_trip(loaded: object, images: np.ndarray, body_format: str) -> None:
    body = json.loads(export.serving_request_body(images, format=body_format))
    assert body["signature_name"] == "serving_default"
    if body_format == "instances":
        assert len(body["instances"]) == len(images)
        tensor = np.asarray(body["instances"], dtype=np.uint8)
    else:
        assert set(body["inputs"]) == {"images"}
        tensor = np.asarray(body["inputs"]["images"], dtype=np.uint8)
    np.testing.assert_array_equal(tensor, images)
    serve = loaded.signatures[body["signature_name"]]
    from_body = serve(images=tf.constant(tensor))
    direct = serve(images=tf.constant(images))
    np.testing.assert_array_equal(from_body["probabilities"], direct["probabilities"])
    np.testing.assert_array_equal(from_body["classes"], direct["classes"])


@pytest.mark.reliability("bad_input")
def test_rest_body_bytes_and_errors(loaded: object, images: np.ndarray) -> None:
    encoded = [tf.io.encode_png(image).numpy() for image in images[:2]]
    for body_format, key in (("instances", None), ("inputs", "image_bytes")):
        body = json.loads(export.serving_request_body(encoded, format=body_format))
        assert body["signature_name"] == "serving_bytes"
        values = body["instances"] if key is None else body["inputs"][key]
        decoded = [base64.b64decode(v["b64"]) for v in values]
        assert decoded == encoded
        out = loaded.signatures["serving_bytes"](image_bytes=tf.constant(decoded))
        direct = loaded.signatures["serving_default"](images=tf.constant(images[:2]))
        np.testing.assert_allclose(out["probabilities"], direct["probabilities"], atol=TOLERANCE)
    with pytest.raises(ValueError, match="format"):
        export.serving_request_body(images, format="columns")
    with pytest.raises(ValueError, match="one size"):
        export.serving_request_body([images[0], images[0, :20]])
    with pytest.raises(ValueError, match="channel axis"):
        export.serving_request_body(images[0, :, :, 0])
    with pytest.raises(ValueError, match=re.escape("0..255")):
        export.serving_request_body(images.astype(np.float32) / 255.0 + 0.5)


def test_bytes_signature_png_and_jpeg(
    tmp_path: Path, loaded: object, model: keras.Model, images: np.ndarray
) -> None:
    big = tf.image.resize(images[:1], (50, 40), method="nearest").numpy().astype(np.uint8)[0]
    rgb = np.repeat(images[2], 3, axis=-1)  # gray stored as RGB: decoded back to 1 channel
    files = {
        "a.png": tf.io.encode_png(images[0]).numpy(),
        "b.jpg": tf.io.encode_jpeg(images[1], quality=90).numpy(),
        "c.png": tf.io.encode_png(big).numpy(),
        "d.png": tf.io.encode_png(rgb).numpy(),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    out = loaded.signatures["serving_bytes"](image_bytes=tf.constant(list(files.values())))
    jpeg_pixels = tf.io.decode_jpeg(files["b.jpg"]).numpy()
    assert not np.array_equal(jpeg_pixels, images[1])  # lossy: compare with what it decodes to
    expected = np.concatenate(
        [
            keras_probabilities(model, batch[None])
            for batch in (images[0], jpeg_pixels, big, images[2])
        ]
    )
    assert out["probabilities"].dtype == tf.float32
    np.testing.assert_allclose(out["probabilities"], expected, rtol=0, atol=TOLERANCE)
    np.testing.assert_array_equal(out["classes"], expected.argmax(axis=1))

    loaded_files = export.load_image_files([tmp_path / n for n in files], channels=1)
    assert [a.shape for a in loaded_files] == [(28, 28, 1), (28, 28, 1), (50, 40, 1), (28, 28, 1)]
    np.testing.assert_array_equal(loaded_files[0], images[0])
    assert loaded_files[0].dtype == np.uint8

    with pytest.raises(tf.errors.InvalidArgumentError, match="Unknown image file format"):
        loaded.signatures["serving_bytes"](image_bytes=tf.constant([b"not an image at all"]))


@pytest.mark.reliability("bad_input")
@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((28, 28, 1), r"batch of shape \[N, height, width, 1\]"),  # rank 3
        ((1, 1, 28, 28, 1), r"batch of shape \[N, height, width, 1\]"),  # rank 5
        ((2, 28, 28, 3), r"batch of shape \[N, height, width, 1\]"),  # channels
        ((1, 0, 28, 1), "at least one image of at least 1x1 pixels"),
        ((0, 28, 28, 1), "at least one image of at least 1x1 pixels"),
    ],
)
def test_in_graph_checks(loaded: object, shape: tuple[int, ...], message: str) -> None:
    # Signatures do not enforce declared shapes; the graph's own checks must.
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        loaded.signatures["serving_default"](images=tf.zeros(shape, tf.uint8))


@pytest.mark.reliability("bad_input")
def test_in_graph_checks_bytes(loaded: object) -> None:
    png = tf.io.encode_png(np.zeros((5, 5, 1), np.uint8))
    serve = loaded.signatures["serving_bytes"]
    for bad in (tf.constant([], tf.string), png, tf.stack([[png]])):
        with pytest.raises(tf.errors.InvalidArgumentError, match="non-empty 1-D batch"):
            serve(image_bytes=bad)
    assert serve(image_bytes=tf.stack([png]))["probabilities"].shape == (1, 10)


@pytest.mark.reliability("bad_input")
def test_load_image_files_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.png"
    with pytest.raises(ValueError, match=re.escape("missing.png")):
        export.load_image_files([missing])
    text = tmp_path / "notes.png"
    text.write_bytes(b"hello, I am not a PNG")
    with pytest.raises(ValueError, match=re.escape("notes.png")):
        export.load_image_files([text])
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(tf.io.encode_png(np.zeros((8, 8, 1), np.uint8)).numpy()[:20])
    with pytest.raises(ValueError, match=re.escape("truncated.png")):
        export.load_image_files([truncated])
    with pytest.raises(ValueError, match="channels"):
        export.load_image_files([text], channels=2)


def test_predict_savedmodel_keras_and_run_dir(
    tmp_path: Path, version_dir: Path, model: keras.Model, images: np.ndarray
) -> None:
    expected = keras_probabilities(model, images)
    top = np.argsort(-expected, axis=1)[:, :3]
    for source in (version_dir, version_dir.parent, model):
        result = export.predict(source, images, top_k=3)
        assert len(result) == len(images)
        for row, pairs in enumerate(result):
            assert len(pairs) == 3
            names = CLASS_NAMES if not isinstance(source, keras.Model) else None
            want = [(names or [str(i) for i in range(10)])[c] for c in top[row]]
            assert [name for name, _ in pairs] == want
            np.testing.assert_allclose([p for _, p in pairs], expected[row, top[row]], atol=1e-5)

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    model.save(run_dir / "best.keras")
    (run_dir / "summary.json").write_text(
        json.dumps({"class_names": CLASS_NAMES, "input_shape": [28, 28, 1]})
    )
    mixed_sizes = [images[0], images[1, :20, :25]]
    result = export.predict(run_dir, mixed_sizes, top_k=1)
    assert result[0][0][0] == CLASS_NAMES[int(expected[0].argmax())]
    resized = keras_probabilities(model, images[1:2, :20, :25])[0]
    assert result[1][0] == pytest.approx((CLASS_NAMES[int(resized.argmax())], resized.max()))
    # A run directory exports with its summary's class names.
    exported = export.export_savedmodel(run_dir, tmp_path / "from_run")
    meta = tf.saved_model.load(exported).signatures["metadata"]()
    assert [n.decode() for n in meta["class_names"].numpy()] == CLASS_NAMES
    # Explicit names win; top_k larger than the class count is clipped.
    result = export.predict(version_dir, images[:1], top_k=50, class_names=list("abcdefghij"))
    assert len(result[0]) == 10
    assert result[0][0][0] == "abcdefghij"[int(expected[0].argmax())]


@pytest.mark.reliability("bad_input")
def test_predict_errors(tmp_path: Path, version_dir: Path, images: np.ndarray) -> None:
    with pytest.raises(ValueError, match=re.escape("nowhere.keras")):
        export.predict(tmp_path / "nowhere.keras", images)
    with pytest.raises(ValueError, match="neither"):
        export.predict(tmp_path, images)
    with pytest.raises(ValueError, match="channel axis"):
        export.predict(version_dir, images[0, :, :, 0])  # rank 2
    with pytest.raises(ValueError, match="3 channels"):
        export.predict(version_dir, np.repeat(images, 3, axis=-1))
    with pytest.raises(ValueError, match="channel axis"):
        export.predict(version_dir, images[..., 0])  # (N, H, W): N read as channels
    with pytest.raises(ValueError, match=r"rank|shape"):
        export.predict(version_dir, images[None])  # rank 5
    bad = tmp_path / "bad.jpg"
    bad.write_text("plain text")
    with pytest.raises(ValueError, match=re.escape("bad.jpg")):
        export.predict(version_dir, [bad])
    with pytest.raises(ValueError, match="top_k"):
        export.predict(version_dir, images, top_k=0)
    with pytest.raises(ValueError, match="class_names"):
        export.predict(version_dir, images, class_names=["a", "b"])
    not_keras = tmp_path / "model.h5"
    not_keras.write_bytes(b"\0" * 10)
    with pytest.raises(ValueError, match=re.escape("model.h5")):
        export.export_savedmodel(not_keras, tmp_path / "x")
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match=re.escape("corrupt.keras")):
        export.predict(corrupt, images)


def test_export_rejects_unsuitable_models(tmp_path: Path, model: keras.Model) -> None:
    with pytest.raises(ValueError, match="include_top"):
        export.export_savedmodel(tiny_model(include_top=False), tmp_path / "a")
    with pytest.raises(ValueError, match="fixed"):
        export.export_savedmodel(tiny_model(input_shape=(None, None, 1)), tmp_path / "b")
    with pytest.raises(ValueError, match="10 non-empty strings"):
        export.export_savedmodel(model, tmp_path / "c", class_names=["only", "two"])
    with pytest.raises(ValueError, match="version"):
        export.export_savedmodel(model, tmp_path / "d", version=0)
    with pytest.raises(TypeError, match="model"):
        export.export_savedmodel(object(), tmp_path / "e")
    assert not any((tmp_path / name).exists() and any((tmp_path / name).iterdir()) for name in "ab")


def metadata_names(version: Path) -> list[str]:
    meta = tf.saved_model.load(str(version)).signatures["metadata"]()
    return [n.decode() for n in meta["class_names"].numpy()]


def test_versioning_and_overwrite(tmp_path: Path, model: keras.Model) -> None:
    model_dir = tmp_path / "fashion"
    first = Path(export.export_savedmodel(model, model_dir))
    second = Path(export.export_savedmodel(model, model_dir, class_names=CLASS_NAMES))
    assert (first.name, second.name) == ("1", "2")
    assert export.list_versions(model_dir) == [1, 2]

    with pytest.raises(FileExistsError, match="overwrite=True"):
        export.export_savedmodel(model, model_dir, version=1, class_names=CLASS_NAMES)
    assert metadata_names(first) == [str(i) for i in range(10)]  # untouched

    replaced = Path(
        export.export_savedmodel(
            model, model_dir, version=1, class_names=CLASS_NAMES, overwrite=True
        )
    )
    assert replaced == first
    assert metadata_names(first) == CLASS_NAMES
    assert (first / "assets.extra" / "class_names.txt").read_text().splitlines() == CLASS_NAMES

    assert Path(export.export_savedmodel(model, model_dir, version="7")).name == "7"
    assert Path(export.export_savedmodel(model, model_dir)).name == "8"  # after the highest
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "2", "7", "8"]
    assert_complete_versions_only(model_dir)


@pytest.mark.reliability("faults")
def test_failed_export_leaves_no_version(
    tmp_path: Path, model: keras.Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_dir = tmp_path / "fashion"
    export.export_savedmodel(model, model_dir)
    original = tf.saved_model.save

    def save_then_fail(*args: object, **kwargs: object) -> None:
        original(*args, **kwargs)
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(tf.saved_model, "save", save_then_fail)
    with pytest.raises(OSError, match="simulated"):
        export.export_savedmodel(model, model_dir)
    with pytest.raises(OSError, match="simulated"):
        export.export_savedmodel(model, model_dir, version=1, overwrite=True)
    assert sorted(p.name for p in model_dir.iterdir()) == ["1"]  # temp dirs removed
    assert_complete_versions_only(model_dir)


KILLED_EXPORT = """
import os, sys, time
from keras_densenet import build_densenet, export

model = build_densenet(blocks=(2, 2), growth_rate=4, num_init_features=8, stem="cifar",
                       input_shape=(28, 28, 1), num_classes=10,
                       normalization=([72.9], [90.0]))

def publish_never(src, dst):
    # Called only to publish the finished export: the worst moment to die.
    print("publishing", flush=True)
    time.sleep(600)

os.rename = publish_never
print("exporting", flush=True)
export.export_savedmodel(model, sys.argv[1])
"""


@pytest.mark.reliability("faults")
@pytest.mark.parametrize("moment", ["while_writing", "before_publishing"])
def test_sigkilled_export_leaves_no_version(
    tmp_path: Path, model: keras.Model, moment: str
) -> None:
    model_dir = tmp_path / "fashion"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_EXPORT, str(model_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert child.stdout.readline().strip() == "exporting", "the child failed to start"
        if moment == "while_writing":
            deadline = time.monotonic() + 60
            while not (model_dir.is_dir() and any(model_dir.iterdir())):
                assert time.monotonic() < deadline and child.poll() is None
                time.sleep(0.002)
        else:
            assert child.stdout.readline().strip() == "publishing"
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=60) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()

    leftovers = list(model_dir.iterdir())
    assert leftovers, "the child should have started writing into a temp dir"
    assert digit_dirs(model_dir) == []
    assert all(p.name.startswith(".tmp-") for p in leftovers)
    if moment == "before_publishing":
        # Killed with a complete SavedModel written: still not published.
        assert any((p / "saved_model.pb").is_file() for p in leftovers)

    # The next export from this host removes the dead process's temp dir.
    version = export.export_savedmodel(model, model_dir)
    assert Path(version).name == "1"
    assert [p.name for p in model_dir.iterdir()] == ["1"]
    assert_complete_versions_only(model_dir)


def test_mixed_float16_serves_float32(tmp_path: Path, images: np.ndarray) -> None:
    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        densenet = tiny_model(channels=3)
        # build_densenet keeps its classifier in float32; a float16 layer on
        # top makes the model's own output float16, as other models' may be.
        top = keras.layers.Activation("linear", name="half")(densenet.output)
        mixed = keras.Model(densenet.input, top)
    finally:
        keras.mixed_precision.set_dtype_policy(previous)
    assert densenet.get_layer("conv1_conv").compute_dtype == "float16"
    rgb = np.repeat(images, 3, axis=-1)
    assert mixed(rgb[:1].astype(np.float32)).dtype == "float16"
    version = export.export_savedmodel(mixed, tmp_path / "mixed")
    loaded = tf.saved_model.load(version)
    for name, kwargs in (
        ("serving_default", {"images": tf.constant(rgb)}),
        ("serving_bytes", {"image_bytes": tf.constant([tf.io.encode_png(i).numpy() for i in rgb])}),
    ):
        signature = loaded.signatures[name]
        assert signature.structured_outputs["probabilities"].dtype == tf.float32
        out = signature(**kwargs)
        assert out["probabilities"].dtype == tf.float32
        assert out["classes"].dtype == tf.int64
        np.testing.assert_allclose(
            out["probabilities"], keras_probabilities(mixed, rgb), rtol=0, atol=1e-3
        )


def test_tensorflow_serving_command(tmp_path: Path) -> None:
    import shlex

    odd = tmp_path / "my models" / "fashion"  # a space must survive the shell
    words = shlex.split(export.tensorflow_serving_command(odd, port=9000))
    assert words == [
        "docker",
        "run",
        "--rm",
        "-p",
        "9000:8501",
        "--mount",
        f"type=bind,source={odd},target=/models/fashion",
        "-e",
        "MODEL_NAME=fashion",
        "-t",
        "tensorflow/serving",
    ]


# ---------------------------------------------------------------------------
# TFLite on real Fashion-MNIST images
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fashion() -> tuple[np.ndarray, np.ndarray]:
    if not (FASHION_IMAGES.is_file() and FASHION_LABELS.is_file()):
        pytest.fail(
            f"Fashion-MNIST not found in {FASHION_DIR}: install Debian's dataset-fashion-mnist "
            "(bash .ci/setup does, as root)"
        )
    images = read_idx(FASHION_IMAGES).reshape(-1, 28, 28, 1)
    labels = read_idx(FASHION_LABELS)
    return images[:1700], labels[:1700]


@pytest.fixture(scope="module")
def trained(fashion: tuple[np.ndarray, np.ndarray]) -> keras.Model:
    images, labels = fashion
    keras.utils.set_random_seed(4)
    train = images[:1000].astype(np.float32)
    model = tiny_model(
        growth_rate=8,
        num_init_features=16,
        bottleneck=False,
        normalization=([float(train.mean())], [float(train.std())]),
    )
    epochs = 10
    schedule = keras.optimizers.schedules.CosineDecay(1e-2, decay_steps=epochs * 20)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss="sparse_categorical_crossentropy")
    model.fit(train, labels[:1000], batch_size=50, epochs=epochs, verbose=0)
    recalibrate_batchnorm(model, images[:1000], steps=None, batch_size=1000)
    return model


def test_equalization_keeps_the_function(
    trained: keras.Model, fashion: tuple[np.ndarray, np.ndarray]
) -> None:
    images = fashion[0][1000:1200].astype(np.float32)
    weights = [w.copy() for w in trained.get_weights()]
    equalized = equalize_concatenations(trained, images)
    assert equalized is not trained
    for before, after in zip(weights, trained.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)  # the caller's model is untouched
    np.testing.assert_allclose(equalized(images), trained(images), rtol=0, atol=1e-5)
    blocks = [layer for layer in equalized.layers if isinstance(layer, DenseBlock)]
    probe = keras.Model(equalized.inputs[0], [block.output for block in blocks])
    for out in probe(images):
        maxima = np.abs(np.asarray(out)).max(axis=(0, 1, 2))
        live = maxima[maxima > 0]
        np.testing.assert_allclose(live, live.max(), rtol=1e-3)


def test_tflite_float32_and_int8(
    tmp_path: Path, trained: keras.Model, fashion: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = fashion
    calibration, evaluation = images[1000:1200], images[1200:1700]
    reference = keras_probabilities(trained, evaluation)
    predicted = reference.argmax(axis=1)
    assert len(np.unique(predicted)) >= 5, "the trained model must not predict one class"
    assert (predicted == labels[1200:1700]).mean() > 0.5

    float_path = export.export_tflite(trained, tmp_path / "model.tflite")
    float_probabilities = export.run_tflite(float_path, evaluation)
    np.testing.assert_allclose(float_probabilities, reference, rtol=0, atol=1e-4)
    assert export.tflite_interpreter(float_path).get_input_details()[0]["dtype"] == np.float32

    int8_path = export.export_tflite(
        trained, tmp_path / "model_int8.tflite", "int8", representative_data=calibration
    )
    interpreter = export.tflite_interpreter(int8_path)
    assert interpreter.get_input_details()[0]["dtype"] == np.uint8
    assert interpreter.get_output_details()[0]["dtype"] == np.uint8
    tensor_types = {d["dtype"] for d in interpreter.get_tensor_details()}
    assert np.int8 in tensor_types and np.float32 not in tensor_types  # full integer
    int8_probabilities = export.run_tflite(int8_path, evaluation)
    agreement = (int8_probabilities.argmax(axis=1) == predicted).mean()
    # Measured over seeds 0-4, with TensorFlow's default threads and with one
    # thread (how xdist workers run): 93.8-98.2% (a weakly trained model has
    # near-ties that rounding flips); plain int8 without the equalization
    # fell to 43% on some configurations.
    assert agreement >= 0.93, f"int8 agrees with float32 on only {agreement:.1%}"
    assert os.path.getsize(int8_path) < os.path.getsize(float_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.tflite", "model_int8.tflite"]


def test_tflite_argument_errors(tmp_path: Path, model: keras.Model) -> None:
    with pytest.raises(ValueError, match="representative_data"):
        export.export_tflite(model, tmp_path / "m.tflite", "int8")
    with pytest.raises(ValueError, match="quantization"):
        export.export_tflite(model, tmp_path / "m.tflite", "float16")
    with pytest.raises(ValueError, match=re.escape("m.tflite")):
        export.run_tflite(tmp_path / "m.tflite", np.zeros((1, 28, 28, 1), np.uint8))
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------
# Runs trained by the package: precision, calibration data, files, bad input
# ---------------------------------------------------------------------------

TINY_TRAIN = {
    "preset": "densenet_bc_100_12",
    "depth": 10,
    "growth_rate": 4,
    "epochs": 1,
    "steps_per_epoch": 3,
    "batch_size": 16,
    "bn_recalibrate_steps": 2,
    "seed": 0,
    "verbose": 0,
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Tiny runs on the embedded sample: RGB float32, and grayscale mixed_float16."""
    from keras_densenet.training import train

    root = tmp_path_factory.mktemp("runs")
    options = {
        "rgb": {"channels": 3},
        "mixed": {"precision": "mixed_float16"},
    }
    for name, extra in options.items():
        train({**TINY_TRAIN, **extra, "out": str(root / name)})
    return {name: str(root / name) for name in options}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "keras_densenet", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_mixed_precision_run_exports_a_float32_graph(tmp_path: Path, runs: dict[str, str]) -> None:
    run = runs["mixed"]
    mixed = export.load_keras_model(run)[0]
    assert mixed.get_layer("conv1_conv").compute_dtype == "float16"
    sample = synthetic_images(8, seed=3)
    version = export.export_savedmodel(run, tmp_path / "served")
    info = export.read_export_info(version)
    assert (info["trained_dtype"], info["serving_dtype"]) == ("float16", "float32")
    loaded = tf.saved_model.load(version)
    assert loaded.signatures["metadata"]()["serving_dtype"].numpy() == b"float32"
    served = loaded.signatures["serving_default"](images=tf.constant(sample))["probabilities"]
    np.testing.assert_allclose(served, keras_probabilities(mixed, sample), atol=5e-3)
    # The graph itself computes in float32: no half-precision op in it.
    graph = loaded.signatures["serving_default"].graph.as_graph_def()
    dtypes = {node.attr["T"].type for node in graph.node if "T" in node.attr}
    dtypes |= {
        f.attr["T"].type for fn in graph.library.function for f in fn.node_def if "T" in f.attr
    }
    assert tf.float16.as_datatype_enum not in dtypes
    # A GPU server can keep the low-precision graph.
    half = export.export_savedmodel(run, tmp_path / "served", serving_dtype="float16")
    assert export.read_export_info(half)["serving_dtype"] == "float16"
    assert tf.saved_model.load(half).signatures["metadata"]()["serving_dtype"] == b"float16"
    for quantization in ("float32", "int8"):
        path = export.export_tflite(
            run,
            tmp_path / f"{quantization}.tflite",
            quantization,
            representative_data=export.calibration_images(run, 50),
        )
        probabilities = export.run_tflite(path, sample)
        assert probabilities.shape == (8, 10) and np.isfinite(probabilities).all()


def test_cli_int8_export_of_an_rgb_run_calibrates_on_its_own_data(
    tmp_path: Path, runs: dict[str, str]
) -> None:
    calibration = export.calibration_images(runs["rgb"], 20)
    assert calibration.shape == (20, 28, 28, 3) and calibration.dtype == np.uint8
    out = tmp_path / "rgb"
    old = os.umask(0o022)
    try:
        proc = cli("export", runs["rgb"], "--out", str(out), "--tflite", "int8")
    finally:
        os.umask(old)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr == ""  # no converter chatter ("fully_quantize: 0, ...")
    tflite = out / "model_int8.tflite"
    assert oct(tflite.stat().st_mode & 0o777) == "0o644"  # like the SavedModel, not 0600
    assert export.run_tflite(tflite, calibration).shape == (20, 10)


def test_int8_from_a_keras_file_outside_a_run_needs_calibration_data(
    tmp_path: Path, model: keras.Model, capsys
) -> None:
    path = tmp_path / "m.keras"
    model.save(path)
    proc = cli("export", str(path), "--out", str(tmp_path / "out"), "--tflite", "int8")
    assert proc.returncode == 2 and "--calibration-dataset" in proc.stderr
    assert not (tmp_path / "out").exists()  # refused before the SavedModel was written
    proc = run_command(
        capsys,
        "export",
        str(path),
        "--out",
        str(tmp_path / "out"),
        "--tflite",
        "int8",
        "--calibration-dataset",
        "fashion_mnist_sample",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "out" / "model_int8.tflite").is_file()


@pytest.mark.reliability("bad_input")
def test_version_that_is_a_file_is_refused_and_nothing_is_left(
    tmp_path: Path, model: keras.Model
) -> None:
    model_dir = tmp_path / "served"
    model_dir.mkdir()
    (model_dir / "1").write_text("not a version")
    for overwrite in (False, True):
        with pytest.raises(ValueError, match="not a version directory"):
            export.export_savedmodel(model, model_dir, version=1, overwrite=overwrite)
    assert sorted(os.listdir(model_dir)) == ["1"]


@pytest.mark.reliability("bad_input")
def test_class_names_with_control_characters_are_refused(
    tmp_path: Path, model: keras.Model
) -> None:
    names = [f"class{i}" for i in range(10)]
    for bad in ("\x1b[31mred", "two\nlines", "bell\x07"):
        with pytest.raises(ValueError, match="control characters"):
            export.export_savedmodel(model, tmp_path / "x", class_names=[bad, *names[1:]])
    assert not (tmp_path / "x").exists() or not digit_dirs(tmp_path / "x")


def _encode(image: np.ndarray, fmt: str) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, fmt)
    return buffer.getvalue()


@pytest.mark.reliability("bad_input")
@pytest.mark.parametrize("fmt", ["GIF", "BMP"])
def test_gif_and_bmp_reach_a_one_channel_model(
    tmp_path: Path, fmt: str, model: keras.Model, version_dir: Path, loaded: object
) -> None:
    image = synthetic_images(1, seed=7)[0]
    rgb = np.repeat(image, 3, axis=-1)
    files = []
    for name, pixels in (("gray", image), ("rgb", rgb)):
        path = tmp_path / f"{name}.{fmt.lower()}"
        path.write_bytes(_encode(pixels, fmt))
        files.append(path)
    expected = keras_probabilities(model, image[None])
    by_file = export.predict(version_dir, files, top_k=10)
    served = loaded.signatures["serving_bytes"](
        image_bytes=tf.constant([p.read_bytes() for p in files])
    )["probabilities"].numpy()
    for i in range(2):
        np.testing.assert_allclose(served[i], expected[0], atol=2e-2)  # GIF's palette rounds
        assert by_file[i][0][0] == CLASS_NAMES[int(served[i].argmax())]


@pytest.mark.reliability("bad_input")
def test_decompression_bombs_are_refused_before_decoding(
    tmp_path: Path, version_dir: Path, loaded: object
) -> None:
    from PIL import Image

    bomb = tmp_path / "bomb.png"
    Image.new("L", (20_000, 20_000)).save(bomb)
    assert bomb.stat().st_size < 1_000_000  # 400 megapixels in a small file
    with pytest.raises(ValueError, match=r"bomb\.png.*over the limit of 50,000,000"):
        export.predict(version_dir, [bomb])
    proc = cli("predict", str(version_dir), str(bomb))
    assert proc.returncode == 2 and "over the limit" in proc.stderr, proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1 and "--max-image-pixels" in proc.stderr
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_image_pixels"):
        loaded.signatures["serving_bytes"](image_bytes=tf.constant([bomb.read_bytes()]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_image_pixels"):
        loaded.signatures["serving_default"](images=tf.zeros((1, 8000, 8000, 1), tf.uint8))


@pytest.mark.reliability("security")
def test_lambda_models_need_allow_unsafe_in_every_command(tmp_path: Path, capsys) -> None:
    inputs = keras.Input((28, 28, 1))
    scaled = keras.layers.Lambda(lambda x: x / 255.0)(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(scaled)
    outputs = keras.layers.Dense(10, activation="softmax")(pooled)
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, outputs).save(path)
    commands = {
        "predict": ["predict", str(path), "--sample", "2"],
        "export": ["export", str(path), "--out", str(tmp_path / "served")],
        "evaluate": ["evaluate", str(path), "--dataset", "fashion_mnist_sample"],
    }
    for name, args in commands.items():
        refused = cli(*args)  # a real process: refused before TensorFlow is imported
        assert refused.returncode == 2 and "pass --allow-unsafe" in refused.stderr, name
        allowed = run_command(capsys, *args, "--allow-unsafe")
        assert allowed.returncode == 0, (name, allowed.stderr[-2000:])
    # Allowing one load allowed no other: Keras' safe mode is still on.
    with pytest.raises(ValueError, match="safe_mode"):
        keras.saving.load_model(path)


def test_onnx_export_runs_in_onnxruntime_with_any_batch(
    tmp_path: Path, runs: dict[str, str]
) -> None:
    try:
        import onnxruntime
    except ImportError as err:  # a required test dependency
        raise ImportError(
            "This test needs onnxruntime: pip install 'keras-densenet[onnx]'"
        ) from err
    proc = cli("export", runs["mixed"], "--out", str(tmp_path / "served"), "--format", "onnx")
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = tmp_path / "served" / "model.onnx"
    assert sorted(os.listdir(tmp_path / "served")) == ["model.onnx"]
    session = onnxruntime.InferenceSession(str(path))
    (given,) = session.get_inputs()
    assert given.name == "images" and given.shape[1:] == [28, 28, 1]
    assert [o.name for o in session.get_outputs()] == ["probabilities"]
    model = export.load_keras_model(runs["mixed"])[0]
    for batch in (1, 7):
        pixels = synthetic_images(batch, seed=batch).astype(np.float32)
        (probabilities,) = session.run(None, {"images": pixels})
        assert probabilities.shape == (batch, 10)
        # The mixed model computes in float16; the ONNX graph in float32.
        np.testing.assert_allclose(
            probabilities, np.asarray(model(pixels, training=False)), atol=5e-3
        )
    float_model = export.with_serving_dtype(model, "float32")
    pixels = synthetic_images(3, seed=9).astype(np.float32)
    np.testing.assert_allclose(
        session.run(None, {"images": pixels})[0],
        np.asarray(float_model(pixels, training=False)),
        atol=1e-4,
    )
    with pytest.raises(ValueError, match=r"\.onnx"):
        export.export_onnx(model, tmp_path / "model.bin")
    # Replaced only with --overwrite; SavedModel-only flags are refused, not ignored.
    before = path.read_bytes()
    again = cli("export", runs["mixed"], "--out", str(tmp_path / "served"), "--format", "onnx")
    assert again.returncode == 2 and "already exists: pass --overwrite" in again.stderr
    assert path.read_bytes() == before
    for flags in (["--version", "3"], ["--serving-dtype", "float16"], ["--tflite", "float32"]):
        refused = cli(
            "export", runs["mixed"], "--out", str(tmp_path / "o"), "--format", "onnx", *flags
        )
        assert refused.returncode == 2 and "not to --format onnx" in refused.stderr, flags
    assert not (tmp_path / "o").exists()
