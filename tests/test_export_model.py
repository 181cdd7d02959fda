"""What gets exported and how it is served, without exporting (milliseconds each).

keras_densenet.export.model (the model, its class names, its serving dtype)
and keras_densenet.export.serving (the TF Serving command and REST bodies).
tests/test_export.py exports SavedModels and serves them end to end.
"""

from __future__ import annotations

import base64
import json
import pathlib
import shlex

import keras
import numpy as np
import pytest

from keras_densenet import build_densenet, rundir
from keras_densenet.export.model import (
    check_class_names,
    dtype_of,
    load_keras_model,
    model_spec,
    resolve_model,
    with_serving_dtype,
)
from keras_densenet.export.serving import serving_request_body, tensorflow_serving_command

TINY = {
    "blocks": (1, 1),
    "growth_rate": 4,
    "num_init_features": 8,
    "stem": "cifar",
    "input_shape": (8, 8, 1),
    "num_classes": 3,
}


def _tiny(dtype: str = "float32", **overrides) -> keras.Model:
    """The tiny DenseNet, built under the ``dtype`` policy (as training builds it)."""
    keras.mixed_precision.set_global_policy(dtype)
    try:
        return build_densenet(None, **{**TINY, **overrides})
    finally:
        keras.mixed_precision.set_global_policy("float32")


# --- the TF Serving command --------------------------------------------------------


def test_the_serving_command_mounts_the_directory_under_its_name(tmp_path) -> None:
    odd = tmp_path / "my models" / "fashion"
    words = shlex.split(tensorflow_serving_command(odd))
    assert words == [
        "docker", "run", "--rm", "-p", "8501:8501", "--mount",
        f"type=bind,source={odd},target=/models/fashion",
        "-e", "MODEL_NAME=fashion", "-t", "tensorflow/serving",
    ]  # fmt: skip


def test_the_serving_command_takes_a_name_a_port_and_a_trailing_slash(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    words = shlex.split(tensorflow_serving_command("exports/dense/", "my net", port="9000"))
    assert words[4] == "9000:8501"
    assert words[6] == f"type=bind,source={tmp_path / 'exports' / 'dense'},target=/models/my net"
    assert words[8] == "MODEL_NAME=my net"
    # Only separators are stripped: a name may end in a space.
    spaced = shlex.split(tensorflow_serving_command(tmp_path / "m "))
    assert spaced[8] == "MODEL_NAME=m "
    plain = tensorflow_serving_command(tmp_path / "m", port=8080)
    assert plain == (
        f"docker run --rm -p 8080:8501 --mount type=bind,source={tmp_path / 'm'},"
        "target=/models/m -e MODEL_NAME=m -t tensorflow/serving"
    )


# --- REST request bodies --------------------------------------------------------------


def test_pixel_bodies_in_row_and_columnar_formats() -> None:
    images = np.arange(2 * 2 * 3 * 1, dtype=np.uint8).reshape(2, 2, 3, 1)
    pixels = images.tolist()
    rows = serving_request_body(images)
    assert rows == json.dumps(
        {"signature_name": "serving_default", "instances": pixels}, separators=(",", ":")
    )
    assert " " not in rows
    columns = json.loads(serving_request_body(list(images), format="inputs"))
    assert columns == {"signature_name": "serving_default", "inputs": {"images": pixels}}
    one = json.loads(serving_request_body(images[0], signature_name="other"))
    assert one == {"signature_name": "other", "instances": pixels[:1]}
    floats = json.loads(serving_request_body(images.astype(np.float32)))
    assert floats["instances"] == pixels  # whole numbers become uint8 values


def test_encoded_bytes_become_b64_values_for_serving_bytes() -> None:
    files = [b"\x89PNG first", bytearray(b"\xff\xd8 second")]
    body = json.loads(serving_request_body(files))
    b64 = [{"b64": base64.b64encode(bytes(f)).decode("ascii")} for f in files]
    assert body == {"signature_name": "serving_bytes", "instances": b64}
    columns = json.loads(serving_request_body(files, format="inputs", signature_name="s"))
    assert columns == {"signature_name": "s", "inputs": {"image_bytes": b64}}
    # A list mixing bytes and arrays is not a bytes request.
    with pytest.raises(ValueError, match=r"images\[0\]"):
        serving_request_body([b"png", np.zeros((2, 2, 1), np.uint8)])


def test_bad_bodies_are_refused_with_the_reason() -> None:
    with pytest.raises(ValueError) as err:
        serving_request_body(np.zeros((1, 2, 2, 1), np.uint8), format="columns")
    assert str(err.value) == "`format` must be one of ('instances', 'inputs'), got 'columns'."
    with pytest.raises(ValueError) as err:
        serving_request_body([np.zeros((2, 2, 1), np.uint8), np.zeros((3, 2, 1), np.uint8)])
    assert str(err.value) == (
        "A request body needs images of one size (TF Serving takes one tensor), got shapes "
        "[(2, 2, 1), (3, 2, 1)]; resize them or send one request per size."
    )
    with pytest.raises(ValueError, match="`images` is empty"):
        serving_request_body([])
    with pytest.raises(ValueError, match=r"whole numbers in 0\.\.255"):
        serving_request_body(np.full((1, 2, 2, 1), 0.5))


# --- class names ---------------------------------------------------------------------


def test_class_names_default_to_the_output_indices() -> None:
    assert check_class_names(None, 3) == ["0", "1", "2"]
    assert check_class_names(("cat", "dög", "x y"), 3) == ["cat", "dög", "x y"]
    assert check_class_names(iter(["a"]), 1) == ["a"]


@pytest.mark.parametrize("names", ["abc", b"abc", 3])
def test_class_names_that_are_not_a_sequence_of_strings(names) -> None:
    with pytest.raises(TypeError) as err:
        check_class_names(names, 3)
    assert str(err.value) == f"`class_names` must be a sequence of strings, got {names!r}."


@pytest.mark.parametrize("names", [["a", "b"], ["a", "b", "c", "d"], ["a", "", "c"], ["a", 2, "c"]])
def test_class_names_of_the_wrong_count_or_kind(names) -> None:
    with pytest.raises(ValueError) as err:
        check_class_names(names, 3)
    assert str(err.value) == (
        "`class_names` must be 3 non-empty strings (one per model output), "
        f"got {len(names)}: {names!r}."
    )


@pytest.mark.parametrize(
    "bad", ["two\nlines", "\x1b[31mred", "zero\u200bwidth", "a\u2028b", "p\u2029"]
)
def test_class_names_with_control_characters(bad) -> None:
    with pytest.raises(ValueError) as err:
        check_class_names(["fine", bad], 2)
    assert str(err.value) == (
        "`class_names` must not contain control characters (line breaks, terminal escapes), "
        f"got {bad!r}."
    )


# --- the model's shape ---------------------------------------------------------------


def test_model_spec_reads_height_width_channels_and_classes() -> None:
    assert model_spec(_tiny()) == (8, 8, 1, 3)
    assert model_spec(_tiny(input_shape=(6, 10, 3), num_classes=5)) == (6, 10, 3, 5)
    assert all(type(v) is int for v in model_spec(_tiny()))


def _functional(input_shape, outputs_of):
    inputs = keras.Input(input_shape)
    return keras.Model(inputs, outputs_of(inputs))


def test_model_spec_refuses_what_cannot_be_exported() -> None:
    a, b = keras.Input((4, 4, 1)), keras.Input((4, 4, 1))
    flat = keras.layers.Flatten()
    two = keras.Model([a, b], keras.layers.Dense(2)(keras.layers.Concatenate()([flat(a), flat(b)])))
    cases = [
        (
            two,
            "Export needs a model with one image input and one output, got 2 inputs and 1 outputs.",
        ),
        (
            _functional((4, 4, 1), lambda x: [keras.layers.Flatten()(x)] * 2),
            "Export needs a model with one image input and one output, got 1 inputs and 2 outputs.",
        ),
        (
            _functional((None, None, 3), lambda x: keras.layers.GlobalAveragePooling2D()(x)),
            "Export needs a fixed (height, width, channels) model input, got (None, None, None, "
            "3); build the model with e.g. input_shape=(32, 32, 3).",
        ),
        (
            _functional((4, None, 3), lambda x: keras.layers.GlobalAveragePooling2D()(x)),
            "Export needs a fixed (height, width, channels) model input, got (None, 4, None, 3); "
            "build the model with e.g. input_shape=(32, 32, 3).",
        ),
        (
            _functional((None, 4, 3), lambda x: keras.layers.GlobalAveragePooling2D()(x)),
            "Export needs a fixed (height, width, channels) model input, got (None, None, 4, 3); "
            "build the model with e.g. input_shape=(32, 32, 3).",
        ),
        (
            _functional((12,), lambda x: keras.layers.Dense(2)(x)),
            "Export needs a fixed (height, width, channels) model input, got (None, 12); build "
            "the model with e.g. input_shape=(32, 32, 3).",
        ),
        (
            _functional((4, 4, 2), lambda x: keras.layers.GlobalAveragePooling2D()(x)),
            "Export supports images with channels in (1, 3), the model takes (None, 4, 4, 2).",
        ),
        (
            _functional((4, 4, 3), lambda x: keras.layers.Conv2D(2, 1)(x)),
            "Export needs a classifier with output (batch, num_classes), got (None, 4, 4, 2); "
            "build it with include_top=True.",
        ),
    ]
    for model, message in cases:
        with pytest.raises(ValueError) as err:
            model_spec(model)
        assert str(err.value) == message


# --- loading --------------------------------------------------------------------------


def test_a_run_directory_gives_its_best_model_and_class_names(tmp_path) -> None:
    model = _tiny()
    model.save(tmp_path / rundir.BEST)
    (tmp_path / rundir.SUMMARY).write_text(json.dumps({"class_names": ["a", "b", "c"]}))
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    model.save(tmp_path / rundir.BEST)
    loaded, names = load_keras_model(tmp_path)
    assert names == ["a", "b", "c"]
    assert loaded.name == model.name and not loaded.compiled  # the optimizer is not needed
    assert resolve_model(str(tmp_path))[1] == ["a", "b", "c"]
    assert resolve_model(pathlib.Path(tmp_path / rundir.BEST))[1] == ["a", "b", "c"]
    alone = tmp_path / "elsewhere"
    alone.mkdir()
    model.save(alone / "m.keras")
    assert load_keras_model(alone / "m.keras")[1] is None
    assert resolve_model(model) == (model, None)


def test_files_with_code_need_allow_unsafe(tmp_path) -> None:
    inputs = keras.Input((4, 4, 1))
    lam = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs))
    lam.save(tmp_path / "lambda.keras")
    with pytest.raises(ValueError, match="allow_unsafe"):
        resolve_model(str(tmp_path / "lambda.keras"))
    with pytest.raises(ValueError, match="allow_unsafe"):
        load_keras_model(tmp_path / "lambda.keras")
    loaded, _ = resolve_model(str(tmp_path / "lambda.keras"), allow_unsafe=True)
    np.testing.assert_allclose(loaded(np.ones((1, 4, 4, 1))), 2.0)


def test_other_model_arguments_are_refused() -> None:
    with pytest.raises(TypeError) as err:
        resolve_model(42)
    assert str(err.value) == (
        "`model` must be a keras.Model, a `.keras` file or a run directory, got 42."
    )


# --- the serving dtype -----------------------------------------------------------------


def test_dtype_of_counts_the_layers_with_weights() -> None:
    assert dtype_of(_tiny()) == "float32"
    assert dtype_of(_tiny(dtype="mixed_float16")) == "float16"
    assert dtype_of(_tiny(dtype="mixed_bfloat16")) == "bfloat16"
    weightless = _functional((4, 4, 1), lambda x: keras.layers.Flatten()(x))
    assert dtype_of(weightless) == "float32"
    # Only layers with weights vote: one float16 conv against three float32 ReLUs.
    inputs = keras.Input((4, 4, 1))
    x = keras.layers.Conv2D(2, 1, dtype="mixed_float16")(inputs)
    for _ in range(3):
        x = keras.layers.ReLU(dtype="float32")(x)
    assert dtype_of(keras.Model(inputs, x)) == "float16"
    # Most layers win, whichever comes first.
    inputs = keras.Input((4, 4, 1))
    x = keras.layers.Conv2D(2, 1, dtype="mixed_float16")(inputs)
    for _ in range(2):
        x = keras.layers.Conv2D(2, 1, dtype="float32")(x)
    assert dtype_of(keras.Model(inputs, x)) == "float32"


def test_dtype_of_counts_a_nested_model_as_one_layer() -> None:
    inner_inputs = keras.Input((4, 4, 2))
    y = inner_inputs
    for _ in range(3):
        y = keras.layers.Conv2D(2, 1, dtype="mixed_float16")(y)
    inner = keras.Model(inner_inputs, y, dtype="mixed_float16")
    inputs = keras.Input((4, 4, 1))
    x = keras.layers.Conv2D(2, 1)(inputs)
    x = keras.layers.Conv2D(2, 1)(x)
    outer = keras.Model(inputs, inner(x))
    assert dtype_of(outer) == "float32"  # two float32 layers against one float16 model


def test_a_model_already_in_the_serving_dtype_is_returned_as_it_is() -> None:
    model = _tiny()
    assert with_serving_dtype(model) is model
    assert with_serving_dtype(model, "float32") is model
    half = _tiny(dtype="mixed_float16")
    assert with_serving_dtype(half, "float16") is half


@pytest.mark.parametrize(("trained", "serving"), [
    ("mixed_float16", None), ("mixed_bfloat16", "float32"), ("float32", "float16"),
    ("float32", "bfloat16"),
])  # fmt: skip
def test_a_model_is_rebuilt_in_the_serving_dtype_with_its_weights(trained, serving) -> None:
    model = _tiny(dtype=trained)
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(0, 0.3, w.shape).astype(w.dtype) for w in model.get_weights()])
    rebuilt = with_serving_dtype(model, serving)
    wanted = serving or "float32"
    assert rebuilt is not model and dtype_of(rebuilt) == wanted
    for layer in rebuilt.layers:
        if layer.name == "predictions":
            assert layer.compute_dtype == "float32"  # the classifier stays float32
        elif layer.weights:
            assert layer.compute_dtype == wanted, layer.name
    assert rebuilt.inputs[0].dtype == "float32"  # the input layer keeps its dtype
    for a, b in zip(model.get_weights(), rebuilt.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    images = rng.uniform(0, 255, (2, 8, 8, 1)).astype(np.float32)
    np.testing.assert_allclose(
        np.asarray(rebuilt(images), np.float32), np.asarray(model(images), np.float32), atol=2e-2
    )


def test_an_unknown_serving_dtype_is_refused() -> None:
    with pytest.raises(ValueError) as err:
        with_serving_dtype(_tiny(), "int8")
    assert str(err.value) == (
        "`serving_dtype` must be one of ('float32', 'float16', 'bfloat16'), got 'int8'."
    )


SPEC_ON_JAX = """
import keras
from keras_densenet.export.model import model_spec
inputs = keras.Input((4, 4, 1))
try:
    model_spec(keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs)))
except RuntimeError as err:
    print(err)
"""


def test_exporting_needs_the_tensorflow_backend() -> None:
    import subprocess
    import sys

    from conftest import same_package_env

    import keras_densenet

    env = same_package_env(keras_densenet, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", SPEC_ON_JAX], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == (
        "Exporting needs the TensorFlow backend (KERAS_BACKEND=tensorflow), not 'jax'."
    )


class _Unbuildable(keras.Model):
    """A subclassed model taking a function: it has no config to be rebuilt from."""

    def __init__(self, activation, **kwargs) -> None:
        super().__init__(**kwargs)
        self.activation = activation
        self.dense = keras.layers.Dense(2)

    def call(self, x):
        return self.activation(self.dense(x))


def test_a_model_that_cannot_be_rebuilt_names_itself() -> None:
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = _Unbuildable(lambda x: x, name="custom")
        model(np.zeros((1, 3), np.float32))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    with pytest.raises(ValueError) as err:
        with_serving_dtype(model)
    assert str(err.value).startswith(
        "Cannot rebuild model 'custom' in float32: NotImplementedError: "
    )
    assert isinstance(err.value.__cause__, NotImplementedError)
