"""TFLite export (keras_densenet.export.tflite), piece by piece and end to end.

The channel equalisation before int8 conversion is checked layer by layer
(each rescaling is exact), the conversions on tiny models (seconds each), and
calibration on a real run directory's image folder. tests/test_export.py
checks int8 accuracy on real Fashion-MNIST.
"""

from __future__ import annotations

import json
import os
import sys

import keras
import numpy as np
import pytest
from conftest import levels_lambda_file, levels_model, levels_probabilities
from PIL import Image

from keras_densenet import DenseBlock, TransitionLayer, build_densenet, rundir
from keras_densenet.export.tflite import (
    _absorb_input_scale,
    _commutes_with_channel_scale,
    _scale_output_channels,
    calibration_images,
    equalize_concatenations,
    export_tflite,
    native_stderr_captured,
    run_tflite,
    tflite_interpreter,
)

# --- native stderr ------------------------------------------------------------------


def test_native_stderr_is_held_back_unless_the_block_fails(capfd) -> None:
    with native_stderr_captured():
        os.write(2, b"fully_quantize: 0\n")
    assert capfd.readouterr().err == ""
    with pytest.raises(RuntimeError, match="conversion failed"), native_stderr_captured():
        os.write(2, b"why it failed\n")
        raise RuntimeError("conversion failed")
    assert capfd.readouterr().err == "why it failed\n"
    sys.stderr.write("fd 2 works again\n")
    assert capfd.readouterr().err == "fd 2 works again\n"


# --- the equalisation's pieces -------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "commutes"),
    [
        (lambda: keras.layers.ZeroPadding2D(1), True),
        (lambda: keras.layers.MaxPooling2D(), True),
        (lambda: keras.layers.AveragePooling2D(2), True),
        (lambda: keras.layers.ReLU(), True),
        (lambda: keras.layers.Activation("relu"), True),
        (lambda: keras.layers.Activation("linear"), True),
        (lambda: keras.layers.Activation("sigmoid"), False),
        (lambda: keras.layers.Dense(2), False),
        (lambda: keras.layers.BatchNormalization(), False),
    ],
)
def test_which_layers_commute_with_a_positive_channel_scale(make, commutes) -> None:
    assert _commutes_with_channel_scale(make()) is commutes


def _built(layer, shape=(1, 5, 5, 3)):
    layer.build(shape)
    rng = np.random.default_rng(0)
    for weight in layer.weights:
        weight.assign(rng.uniform(0.5, 1.5, weight.shape))
    return layer


SCALE = np.array([2.0, 0.5, 3.0, 1.5], np.float32)


@pytest.mark.parametrize(
    "make",
    [
        lambda: keras.layers.Conv2D(4, 3),
        lambda: keras.layers.Conv2D(4, 1, use_bias=False),
        lambda: keras.layers.BatchNormalization(),
        lambda: TransitionLayer(compression=1.0),
    ],
    ids=["conv", "conv-no-bias", "bn", "transition"],
)
def test_output_channels_are_scaled_exactly(make) -> None:
    shape = (1, 5, 5, 4)
    layer = _built(make(), shape)
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    before = np.asarray(layer(x, training=False))
    assert _scale_output_channels(layer, SCALE) is True
    np.testing.assert_allclose(np.asarray(layer(x, training=False)), before * SCALE, rtol=1e-5)


@pytest.mark.parametrize(
    "make",
    [
        lambda: keras.layers.DepthwiseConv2D(3),
        lambda: keras.layers.BatchNormalization(center=False),
        lambda: keras.layers.BatchNormalization(scale=False),
        lambda: keras.layers.Dense(4),
    ],
    ids=["depthwise", "bn-no-center", "bn-no-scale", "dense"],
)
def test_layers_whose_outputs_cannot_be_scaled_are_left_alone(make) -> None:
    layer = _built(make(), (1, 5, 5, 4))
    before = [np.asarray(w) for w in layer.weights]
    assert _scale_output_channels(layer, SCALE) is False
    for a, b in zip(before, layer.weights, strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))


def test_a_bn_absorbs_an_input_scale_exactly_epsilon_included() -> None:
    bn = _built(keras.layers.BatchNormalization(epsilon=0.5), (1, 6))
    bn.moving_variance.assign(np.array([0.01, 0.2, 1.0, 2.0, 3.0, 4.0], np.float32))
    x = np.random.default_rng(2).normal(size=(3, 6)).astype(np.float32)
    before = np.asarray(bn(x, training=False))
    scale = np.array([10.0, 0.25, 3.0, 1.0], np.float32)  # the first 4 of 6 channels
    _absorb_input_scale(bn, scale)
    scaled = x.copy()
    scaled[:, :4] *= scale
    np.testing.assert_allclose(np.asarray(bn(scaled, training=False)), before, rtol=1e-5, atol=1e-6)


# --- the equalisation of a DenseNet ---------------------------------------------------


def _densenet(**overrides) -> keras.Model:
    args = {
        "blocks": (2, 2), "growth_rate": 4, "num_init_features": 8, "stem": "imagenet",
        "input_shape": (16, 16, 1), "num_classes": 3, "normalization": ([127.5], [64.0]),
    }  # fmt: skip
    keras.utils.set_random_seed(0)
    model = build_densenet(None, **{**args, **overrides})
    rng = np.random.default_rng(0)
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            # Very different channel ranges, as a trained network has.
            layer.gamma.assign(rng.uniform(0.05, 3.0, n))
            layer.beta.assign(rng.uniform(0.0, 0.5, n))
            layer.moving_mean.assign(rng.uniform(-0.3, 0.3, n))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, n))
    return model


def _samples(n: int = 80) -> np.ndarray:
    return np.random.default_rng(3).uniform(0, 255, (n, 16, 16, 1)).astype(np.float32)


def _block_maxima(model: keras.Model, samples: np.ndarray) -> list[np.ndarray]:
    blocks = [layer for layer in model.layers if isinstance(layer, DenseBlock)]
    probe = keras.Model(model.inputs[0], [block.output for block in blocks])
    outputs = probe(samples, training=False)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return [np.abs(np.asarray(o)).max(axis=(0, 1, 2)) for o in outputs]


def test_equalisation_gives_every_concatenated_channel_the_widest_range() -> None:
    model = _densenet()
    samples = _samples()
    weights = [np.asarray(w) for w in model.weights]
    equalized = equalize_concatenations(model, samples)
    assert equalized is not model
    for before, w in zip(weights, model.weights, strict=True):
        np.testing.assert_array_equal(before, np.asarray(w))  # the original is untouched
    np.testing.assert_allclose(
        np.asarray(equalized(samples, training=False)),
        np.asarray(model(samples, training=False)),
        rtol=1e-4,
        atol=1e-6,
    )
    for before, after in zip(
        _block_maxima(model, samples), _block_maxima(equalized, samples), strict=True
    ):
        assert before.max() / before[before > 0].min() > 2  # a spread to remove
        live = after > 0
        np.testing.assert_allclose(after[live], after.max(), rtol=1e-3)
        assert np.array_equal(live, before > 0)


def test_models_without_dense_blocks_or_sequential_are_returned_as_they_are() -> None:
    plain = levels_model()
    assert equalize_concatenations(plain, np.zeros((2, 4, 4, 1), np.float32)) is plain
    block = DenseBlock(num_layers=1, growth_rate=2)
    sequential = keras.Sequential([keras.Input((4, 4, 2)), block, keras.layers.Flatten()])
    assert equalize_concatenations(sequential, np.zeros((2, 4, 4, 2), np.float32)) is sequential


def test_a_block_read_by_no_batchnorm_is_not_rescaled() -> None:
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 1, name="stem")(inputs)
    x = DenseBlock(num_layers=1, growth_rate=2, name="block")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))
    samples = np.random.default_rng(0).uniform(0, 1, (4, 6, 6, 2)).astype(np.float32)
    equalized = equalize_concatenations(model, samples)
    for a, b in zip(model.get_weights(), equalized.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


# --- conversion and running -----------------------------------------------------------


def test_float32_tflite_answers_as_the_keras_model_at_any_image_size(tmp_path) -> None:
    path = tmp_path / "levels.tflite"
    assert export_tflite(levels_model(), path) == str(path)
    assert sorted(os.listdir(tmp_path)) == ["levels.tflite"]  # written whole, by rename
    levels = [0, 128, 255]
    images = [np.full((s, s, 1), v, np.uint8) for v, s in zip(levels, (4, 6, 3), strict=True)]
    out = run_tflite(path, images)
    assert out.dtype == np.float32 and out.shape == (3, 3)
    np.testing.assert_allclose(out, [levels_probabilities(v) for v in levels], rtol=1e-5)
    detail = tflite_interpreter(str(path)).get_input_details()[0]
    assert detail["dtype"] == np.float32 and list(detail["shape"]) == [1, 4, 4, 1]


def test_a_write_that_fails_leaves_the_old_tflite_file_whole(tmp_path, monkeypatch) -> None:
    # The disk fills up halfway through writing the new model: the file size
    # limit (RLIMIT_FSIZE; Python ignores SIGXFSZ, so the write fails with EFBIG)
    # is lowered only once the converter has its bytes, so the SavedModel that
    # the conversion reads is written in full.
    import errno
    import resource

    import tensorflow as tf

    path = tmp_path / "levels.tflite"
    old = b"the model already served " * 4
    path.write_bytes(old)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    from_saved_model = tf.lite.TFLiteConverter.from_saved_model
    written = []

    def converter_that_fills_the_disk(*args, **kwargs):
        converter = from_saved_model(*args, **kwargs)
        convert = converter.convert

        def convert_then_fill_the_disk():
            data = convert()
            written.append(len(data))
            resource.setrlimit(resource.RLIMIT_FSIZE, (len(data) // 2, hard))
            return data

        converter.convert = convert_then_fill_the_disk
        return converter

    monkeypatch.setattr(tf.lite.TFLiteConverter, "from_saved_model", converter_that_fills_the_disk)
    try:
        with pytest.raises(OSError) as failure:
            export_tflite(levels_model(), path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert failure.value.errno == errno.EFBIG and written[0] > len(old)
    assert path.read_bytes() == old  # not truncated, not half new
    assert os.listdir(tmp_path) == ["levels.tflite"]  # the partial temporary removed
    monkeypatch.undo()
    export_tflite(levels_model(), path)  # with room again, the new model replaces it
    np.testing.assert_allclose(
        run_tflite(path, [np.full((4, 4, 1), 128, np.uint8)]),
        [levels_probabilities(128)],
        rtol=1e-5,
    )


def test_int8_tflite_takes_uint8_pixels_and_dequantizes_its_output(tmp_path) -> None:
    model = levels_model()
    calibration = [np.full((4, 4, 1), v, np.uint8) for v in range(0, 256, 5)]
    path = export_tflite(model, tmp_path / "levels.tflite", "int8", calibration)
    interpreter = tflite_interpreter(path)
    assert interpreter.get_input_details()[0]["dtype"] == np.uint8
    assert interpreter.get_output_details()[0]["dtype"] == np.uint8
    levels = [0, 60, 128, 200, 255]
    out = run_tflite(path, np.stack([np.full((4, 4, 1), v, np.uint8) for v in levels]))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [levels_probabilities(v) for v in levels], atol=0.02)


def test_int8_conversion_of_a_densenet_keeps_its_answers(tmp_path) -> None:
    model = _densenet()
    head = model.get_layer("predictions")  # moderate probabilities, not saturated ones
    head.kernel.assign(np.asarray(head.kernel) * 0.05)
    samples = _samples(60).astype(np.uint8)
    path = export_tflite(model, tmp_path / "d.tflite", "int8", samples)
    wanted = np.asarray(model(samples.astype(np.float32), training=False))
    got = run_tflite(path, samples)
    assert wanted.std(axis=0).min() > 0.01  # answers that differ between images
    assert np.abs(got - wanted).max() < 0.05
    assert np.mean(got.argmax(axis=1) == wanted.argmax(axis=1)) >= 0.9


def test_a_mixed_precision_model_converts_as_float32(tmp_path) -> None:
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = _densenet()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    path = export_tflite(model, tmp_path / "m.tflite")
    assert tflite_interpreter(path).get_input_details()[0]["dtype"] == np.float32
    images = _samples(4).astype(np.uint8)
    wanted = np.asarray(model(images.astype(np.float32), training=False), np.float32)
    np.testing.assert_allclose(run_tflite(path, images), wanted, atol=5e-3)


def test_bad_conversions_and_runs_are_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="`quantization`"):
        export_tflite(levels_model(), tmp_path / "x.tflite", "int4")
    with pytest.raises(ValueError) as err:
        export_tflite(levels_model(), tmp_path / "x.tflite", "int8")
    assert str(err.value) == (
        '`representative_data` (real images) is required for quantization="int8".'
    )
    with pytest.raises(ValueError, match="channels"):
        export_tflite(levels_model(), tmp_path / "x.tflite", "int8", np.zeros((2, 4, 4, 3)))
    assert not os.listdir(tmp_path)
    with pytest.raises(ValueError) as err:
        run_tflite(tmp_path / "missing.tflite", np.zeros((1, 4, 4, 1), np.uint8))
    assert str(err.value) == (f"TFLite model file not found: {str(tmp_path / 'missing.tflite')!r}.")


# --- calibration images of a run --------------------------------------------------------


def _run_dir(tmp_path, **config) -> str:
    root = tmp_path / "data"
    for split, count in (("train", 6), ("test", 2)):
        for name in ("a", "b"):
            os.makedirs(root / split / name)
            for i in range(count):
                level = 10 * i + (0 if name == "a" else 100)
                Image.fromarray(np.full((10, 12), level, np.uint8)).save(
                    root / split / name / f"{i}.png"
                )
    run = tmp_path / "run"
    run.mkdir()
    (run / rundir.CONFIG).write_text(json.dumps({"dataset": str(root), **config}))
    return str(run)


def test_calibration_images_are_the_runs_first_training_images_as_trained(tmp_path) -> None:
    run = _run_dir(tmp_path, image_size=[8, 6], channels=3)
    images = calibration_images(run, count=5)
    assert images.dtype == np.uint8 and images.shape == (5, 8, 6, 3)
    # Unshuffled and unaugmented: the first five files of class "a", whole.
    assert [int(image[0, 0, 0]) for image in images] == [0, 10, 20, 30, 40]
    assert all(image.min() == image.max() for image in images)
    assert calibration_images(run).shape == (12, 8, 6, 3)  # fewer than the default 200


def test_calibration_leaves_out_the_held_out_validation_images(tmp_path) -> None:
    run = _run_dir(tmp_path, validation_fraction=0.25)
    images = calibration_images(run, count=100)
    assert images.shape == (9, 10, 12, 1)


def test_calibration_needs_a_run_directory_and_a_count(tmp_path) -> None:
    with pytest.raises(ValueError, match="`count`"):
        calibration_images(_run_dir(tmp_path), count=0)
    with pytest.raises(ValueError, match=r"config\.json"):
        calibration_images(tmp_path / "nowhere")


def test_calibration_reads_a_named_dataset_from_the_runs_data_dir(tmp_path) -> None:
    run = _run_dir(tmp_path, dataset="data", data_dir=str(tmp_path))
    assert calibration_images(run, count=3).shape == (3, 10, 12, 1)


def test_calibration_of_a_run_without_a_dataset_reads_the_embedded_sample(tmp_path) -> None:
    (tmp_path / rundir.CONFIG).write_text("{}")
    images = calibration_images(tmp_path, count=4)
    assert images.shape == (4, 28, 28, 1) and images.dtype == np.uint8
    assert images.max() > 100  # real Fashion-MNIST images, raw pixels


def test_calibration_takes_200_images_by_default_and_at_most_100000(tmp_path) -> None:
    root = tmp_path / "many"
    for name in ("a", "b"):
        os.makedirs(root / "train" / name)
        for i in range(101):
            Image.fromarray(np.full((2, 2), i, np.uint8)).save(root / "train" / name / f"{i}.png")
    (tmp_path / rundir.CONFIG).write_text(json.dumps({"dataset": str(root)}))
    assert calibration_images(tmp_path).shape == (200, 2, 2, 1)
    assert calibration_images(tmp_path, count=100_000).shape == (202, 2, 2, 1)
    with pytest.raises(ValueError, match=r"`count` must be an integer in \[1, 100000\]"):
        calibration_images(tmp_path, count=100_001)


def _block_model(producer: bool = True, final_bn: bool = True) -> keras.Model:
    """[stem conv ->] DenseBlock [-> BN]: the smallest shapes the equalisation handles."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input((6, 6, 4))
    x = keras.layers.Conv2D(4, 1, use_bias=False, name="stem")(inputs) if producer else inputs
    x = DenseBlock(num_layers=2, growth_rate=3, bottleneck=False, name="block")(x)
    if final_bn:
        x = keras.layers.BatchNormalization(name="after")(x)
    model = keras.Model(inputs, x)
    rng = np.random.default_rng(2)
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 2.0, n))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, n))
    if producer:
        stem = model.get_layer("stem")
        stem.kernel.assign(np.asarray(stem.kernel) * np.array([1.0, 0.1, 3.0, 0.5], np.float32))
    return model


def _inputs(scale: float = 1.0) -> np.ndarray:
    return np.random.default_rng(4).uniform(0, scale, (20, 6, 6, 4)).astype(np.float32)


def _maxima(model: keras.Model, samples: np.ndarray) -> np.ndarray:
    return _block_maxima(model, samples)[0]


@pytest.mark.parametrize("scale", [1.0, 1e-3], ids=["unit", "tiny-activations"])
def test_a_block_before_the_last_bn_is_equalised_dead_and_narrow_channels_included(
    scale,
) -> None:
    model = _block_model()
    first, second = model.get_layer("block").dense_layers
    dead = first.output_convolution
    dead.kernel.assign(np.asarray(dead.kernel) * np.array([0.0, 1.0, 1.0], np.float32))
    narrow = second.output_convolution
    narrow.kernel.assign(np.asarray(narrow.kernel) * np.array([1.0, 1e-6, 1.0], np.float32))
    samples = _inputs(scale)
    before = _maxima(model, samples)
    equalized = equalize_concatenations(model, samples)
    assert equalized is not model
    np.testing.assert_allclose(
        np.asarray(equalized(samples)), np.asarray(model(samples)), rtol=1e-3, atol=1e-6 * scale
    )
    after = _maxima(equalized, samples)
    assert before[4] == after[4] == 0.0  # the dead channel (4 stem + first layer's 0th)
    assert before.max() < 1.0 if scale < 1 else before.max() > 1.0
    np.testing.assert_allclose(after[8], before[8] * 1000.0, rtol=1e-3)  # scale capped at 1000
    live = [c for c in range(10) if c not in (4, 8)]
    np.testing.assert_allclose(after[live], after.max(), rtol=1e-3)


def test_a_block_straight_after_the_input_scales_only_its_own_layers() -> None:
    model = _block_model(producer=False)
    samples = _inputs() * np.array([1.0, 0.1, 3.0, 0.5], np.float32)
    before = _maxima(model, samples)
    equalized = equalize_concatenations(model, samples)
    assert equalized is not model
    np.testing.assert_allclose(
        np.asarray(equalized(samples)), np.asarray(model(samples)), rtol=1e-3, atol=1e-6
    )
    after = _maxima(equalized, samples)
    np.testing.assert_allclose(after[:4], before[:4], rtol=1e-6)  # the input cannot be scaled
    np.testing.assert_allclose(after[4:], after.max(), rtol=1e-3)


def test_a_block_that_ends_the_model_is_left_alone() -> None:
    model = _block_model(final_bn=False)
    equalized = equalize_concatenations(model, _inputs())
    for a, b in zip(model.get_weights(), equalized.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_structure_the_equalisation_does_not_expect_is_returned_unchanged() -> None:
    # The stem's output also feeds a second branch: scaling the stem changes it.
    keras.utils.set_random_seed(3)
    inputs = keras.Input((6, 6, 4))
    stem = keras.layers.Conv2D(4, 1, use_bias=False, name="stem")(inputs)
    x = DenseBlock(num_layers=1, growth_rate=3, bottleneck=False)(stem)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Concatenate()(
        [keras.layers.GlobalAveragePooling2D()(x), keras.layers.GlobalAveragePooling2D()(stem)]
    )
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    layer = model.get_layer("stem")
    layer.kernel.assign(np.asarray(layer.kernel) * np.array([100.0, 0.01, 3.0, 0.5], np.float32))
    assert equalize_concatenations(model, _inputs(255.0)) is model


def test_the_interpreter_is_made_without_the_deprecation_warning(tmp_path) -> None:
    import warnings

    path = export_tflite(levels_model(), tmp_path / "m.tflite")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tflite_interpreter(path)
    assert not [str(w.message) for w in caught if "deprecated" in str(w.message)]


def test_conversion_is_silent_and_files_with_code_need_allow_unsafe(tmp_path, capfd) -> None:
    lambda_file = levels_lambda_file(tmp_path)
    with pytest.raises(ValueError, match="allow_unsafe"):
        export_tflite(lambda_file, tmp_path / "m.tflite")
    capfd.readouterr()
    path = export_tflite(lambda_file, tmp_path / "m.tflite", allow_unsafe=True)
    assert capfd.readouterr().out == ""  # no endpoint listing, no converter settings
    out = run_tflite(path, np.full((1, 4, 4, 1), 90, np.uint8))
    np.testing.assert_allclose(out, [levels_probabilities(90)], rtol=1e-5)
