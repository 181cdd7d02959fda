"""PreciseBN: recalibrate_batchnorm and the BatchNormRecalibration callback."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from conftest import TINY, assert_close, same_package_env

from keras_densenet import build_densenet
from keras_densenet.batchnorm import (
    INFINITE,
    BatchNormRecalibration,
    batchnorm_layers,
    pass_length,
    recalibrate_batchnorm,
)

RNG = np.random.default_rng(0)
#: 100 images whose first channel is not centred, so statistics are not trivial.
IMAGES = RNG.normal(2.0, 3.0, size=(100, 28, 28, 1)).astype("float32")


def _model(**kwargs):
    keras.utils.set_random_seed(0)
    return build_densenet(**{**TINY, "stem": "imagenet", **kwargs})


def _stats(layer):
    return (
        keras.ops.convert_to_numpy(layer.moving_mean).copy(),
        keras.ops.convert_to_numpy(layer.moving_variance).copy(),
    )


def test_first_batchnorm_gets_the_exact_moments_of_its_inputs():
    model = _model()
    # Uneven batches (30, 30, 30, 10): moments are weighted by batch size.
    assert recalibrate_batchnorm(model, IMAGES, steps=None, batch_size=30) == 100
    features = keras.Model(model.input, model.get_layer("conv1_conv").output)
    conv = features.predict(IMAGES, verbose=0).reshape(-1, 8).astype(np.float64)
    mean, variance = _stats(model.get_layer("conv1_bn"))
    np.testing.assert_allclose(mean, conv.mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(variance, conv.var(axis=0), rtol=1e-4, atol=1e-5)


def test_one_batch_equals_a_training_step_with_momentum_zero():
    model, reference = _model(), _model()
    recalibrate_batchnorm(model, IMAGES, steps=1, batch_size=100)
    layers = batchnorm_layers(reference)
    for bn in layers:
        bn.momentum = 0.0
    reference(IMAGES, training=True)
    for got, want in zip(batchnorm_layers(model), layers, strict=True):
        for a, b in zip(_stats(got), _stats(want), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=got.name)
        assert got.momentum == 0.9  # restored


def test_weights_do_not_change_and_frozen_layers_are_kept():
    model = _model()
    frozen = model.get_layer("bn")
    frozen.trainable = False
    trainable_before = [keras.ops.convert_to_numpy(w).copy() for w in model.trainable_weights]
    frozen_before = _stats(frozen)
    other = model.get_layer("conv1_bn")
    other_before = _stats(other)
    recalibrate_batchnorm(model, IMAGES, steps=2, batch_size=50)
    for before, w in zip(trainable_before, model.trainable_weights, strict=True):
        np.testing.assert_array_equal(before, keras.ops.convert_to_numpy(w))
    for a, b in zip(frozen_before, _stats(frozen), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(other_before[0], _stats(other)[0])
    assert frozen not in batchnorm_layers(model)


def test_steps_limits_the_batches_and_datasets_of_pairs_work():
    import tensorflow as tf

    labels = np.zeros(len(IMAGES), "int32")
    dataset = tf.data.Dataset.from_tensor_slices((IMAGES, labels)).batch(20)
    assert recalibrate_batchnorm(_model(), dataset, steps=3) == 60
    assert recalibrate_batchnorm(_model(), dataset, steps=None) == 100


def test_recalibration_repairs_statistics_left_by_a_short_run():
    """The bug this exists for: moving averages of a short run at momentum 0.99."""
    model = _model(bn_momentum=0.99)
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "sparse_categorical_crossentropy")
    labels = (IMAGES.mean(axis=(1, 2, 3)) > 2.0).astype("int32")
    model.fit(IMAGES, labels, epochs=2, batch_size=20, verbose=0)
    train_mode = keras.ops.convert_to_numpy(model(IMAGES, training=True))
    stale = keras.ops.convert_to_numpy(model(IMAGES, training=False))
    recalibrate_batchnorm(model, IMAGES, steps=None, batch_size=100)
    fresh = keras.ops.convert_to_numpy(model(IMAGES, training=False))
    # Inference now computes what training computed on the same batch.
    np.testing.assert_allclose(fresh, train_mode, atol=2e-3)
    assert np.abs(stale - train_mode).max() > 10 * np.abs(fresh - train_mode).max()


NO_EXAMPLES = "`data` yielded no examples: cannot recalibrate BatchNorm statistics."
INT_RANGE = "must be an integer in [1, 2147483647]"


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"steps": 0}, ValueError, f"`steps` {INT_RANGE}, got 0."),
        ({"steps": 2.5}, TypeError, f"`steps` {INT_RANGE}, got 2.5."),
        ({"batch_size": 0}, ValueError, f"`batch_size` {INT_RANGE}, got 0."),
        ({"data": IMAGES[:0]}, ValueError, "non-empty array"),
        ({"data": "images.npy"}, TypeError, "got str."),
        ({"data": [{"image": IMAGES[:2]}]}, ValueError, "got a dict"),
        ({"data": []}, ValueError, NO_EXAMPLES),
        ({"data": [IMAGES[:0], IMAGES[:0]]}, ValueError, NO_EXAMPLES),
    ],
)
def test_bad_arguments(kwargs, error, message):
    model = _model()
    before = [_stats(bn) for bn in batchnorm_layers(model)]
    args = {"data": IMAGES, **kwargs}
    with pytest.raises(error) as caught:
        recalibrate_batchnorm(model, **args)
    # Whole messages where this module writes them (_batches' own are tested below).
    if message.startswith("`"):
        assert str(caught.value) == message
    else:
        assert message in str(caught.value)
    for old, bn in zip(before, batchnorm_layers(model), strict=True):
        np.testing.assert_array_equal(old[0], _stats(bn)[0])


def test_callback_scores_validation_on_recalibrated_stats_and_restores_them():
    model = _model(bn_momentum=0.99)
    model.compile(
        keras.optimizers.SGD(0.05, momentum=0.9),
        "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    labels = (IMAGES.mean(axis=(1, 2, 3)) > 2.0).astype("int32")

    class Spy(keras.callbacks.Callback):
        """Records the stats seen during validation and after the epoch."""

        def __init__(self):
            super().__init__()
            self.during, self.after = [], []

        def on_test_batch_begin(self, batch, logs=None):
            self.during.append(_stats(self.model.get_layer("bn"))[0])

        def on_epoch_end(self, epoch, logs=None):
            self.after.append(_stats(self.model.get_layer("bn"))[0])

    spy = Spy()
    recal = BatchNormRecalibration(IMAGES, steps=1)
    model.fit(
        IMAGES,
        labels,
        validation_data=(IMAGES, labels),
        epochs=1,
        batch_size=25,
        verbose=0,
        callbacks=[recal, spy],
    )
    expected = _model(bn_momentum=0.99)
    expected.set_weights(model.get_weights())
    moving_after_training = _stats(expected.get_layer("bn"))[0]
    recalibrate_batchnorm(expected, IMAGES[:64], steps=1, batch_size=64)
    assert_close(spy.during[0], _stats(expected.get_layer("bn"))[0], 1e-4)
    # After validation the moving averages are back: checkpoints see training's state.
    np.testing.assert_array_equal(spy.after[0], moving_after_training)


BACKEND_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import keras
    from keras_densenet import build_densenet
    from keras_densenet.batchnorm import batchnorm_layers, recalibrate_batchnorm
    model = build_densenet(blocks=(2, 2), growth_rate=4, num_init_features=8, stem="imagenet",
                           input_shape=(28, 28, 1), num_classes=10, memory_efficient=True)
    model.load_weights(sys.argv[1])
    import tensorflow as tf  # tf.data feeds every backend (tensors converted per batch)
    batches = tf.data.Dataset.from_tensor_slices(np.load(sys.argv[2])).batch(40)
    recalibrate_batchnorm(model, batches, steps=None)
    stats = {bn.name: [np.asarray(keras.ops.convert_to_numpy(v)).tolist()
                       for v in (bn.moving_mean, bn.moving_variance)]
             for bn in batchnorm_layers(model)}
    print("RESULT" + json.dumps({"backend": keras.backend.backend(), "stats": stats}))
    """
)


def _run_backend(backend, weights, images):
    import keras_densenet

    env = same_package_env(keras_densenet, KERAS_BACKEND=backend, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", BACKEND_SCRIPT, weights, images],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(s for s in proc.stdout.splitlines() if s.startswith("RESULT"))
    return json.loads(line[len("RESULT") :])


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_same_statistics_on_every_backend(tmp_path, backend):
    """Same weights, same batches: JAX and PyTorch give TensorFlow's statistics."""
    model = _model(memory_efficient=True)
    weights = str(tmp_path / "w.weights.h5")
    model.save_weights(weights)
    images = str(tmp_path / "x.npy")
    np.save(images, IMAGES)
    recalibrate_batchnorm(model, IMAGES, steps=None, batch_size=40)
    got = _run_backend(backend, weights, images)
    assert got["backend"] == backend
    want = {bn.name: _stats(bn) for bn in batchnorm_layers(model)}
    assert sorted(got["stats"]) == sorted(want)
    for name, (mean, variance) in got["stats"].items():
        np.testing.assert_allclose(mean, want[name][0], rtol=1e-3, atol=1e-4, err_msg=name)
        np.testing.assert_allclose(variance, want[name][1], rtol=1e-3, atol=1e-4, err_msg=name)


# The helpers and the callback on a two-BatchNorm model (milliseconds each).


def _bn_model():
    inputs = keras.Input((3,))
    hidden = keras.layers.BatchNormalization(name="bn_a")(inputs)
    outputs = keras.layers.BatchNormalization(name="bn_b")(keras.layers.Dense(2)(hidden))
    return keras.Model(inputs, outputs)


def test_inputs_of_a_batch_and_what_is_refused():
    from keras_densenet.batchnorm import _inputs_of

    x = np.ones((2, 3))
    assert _inputs_of((x, np.zeros(2))) is x
    assert _inputs_of([x, np.zeros(2), np.ones(2)]) is x
    assert _inputs_of(x) is x
    message = (
        "`data` must yield input batches or (inputs, labels) tuples, got a dict; map it "
        "to (inputs, labels) first."
    )
    with pytest.raises(ValueError) as caught:
        _inputs_of({"image": x})
    assert str(caught.value) == message


def test_arrays_are_split_into_batches_and_other_data_is_refused():
    from keras_densenet.batchnorm import _batches

    data = np.arange(100 * 3, dtype="float32").reshape(100, 3)
    batches = list(_batches(data, 30))
    assert [len(b) for b in batches] == [30, 30, 30, 10]
    np.testing.assert_array_equal(np.concatenate(batches), data)
    pairs = [(data[:4], np.zeros(4)), (data[4:6], np.zeros(2))]
    assert [len(b) for b in _batches(pairs, 30)] == [4, 2]
    for bad, shape in ((np.zeros(5), "(5,)"), (np.zeros((0, 3)), "(0, 3)")):
        with pytest.raises(ValueError) as caught:
            list(_batches(bad, 30))
        assert str(caught.value) == (
            f"`data` must be a non-empty array of inputs (batch first), got shape {shape}."
        )
    for bad, name in (("x.npy", "str"), (b"x", "bytes"), (3, "int")):
        with pytest.raises(TypeError) as caught:
            _batches(bad, 30)
        assert str(caught.value) == (
            "`data` must be a tf.data.Dataset, an iterable of batches (inputs or (inputs, "
            f"labels)) or a NumPy array of inputs, got {name}."
        )


def test_repeat_goes_round_the_data_again_and_refuses_empty_data():
    import itertools

    from keras_densenet.batchnorm import _repeat

    class Passes:
        """An iterable that counts how often it is iterated (as a tf.data.Dataset is)."""

        def __init__(self, batches):
            self.batches, self.passes = batches, 0

        def __iter__(self):
            self.passes += 1
            return iter(self.batches)

    a, b = np.zeros((2, 3)), np.ones((2, 3))
    data = Passes([a, b])
    got = list(itertools.islice(_repeat(data), 5))
    assert [float(x[0, 0]) for x in got] == [0, 1, 0, 1, 0]
    assert data.passes == 3
    # Arrays go round in batches of 64.
    array = np.arange(130 * 3, dtype="float32").reshape(130, 3)
    sizes = [len(x) for x in itertools.islice(_repeat(array), 4)]
    assert sizes == [64, 64, 2, 64]
    with pytest.raises(ValueError) as caught:
        next(_repeat([]))
    assert str(caught.value) == (
        "`data` yielded no batches: cannot recalibrate BatchNorm statistics."
    )


def test_recalibrator_snapshot_restore_and_models_without_batchnorm():
    from keras_densenet.batchnorm import BatchNormRecalibrator

    model = _bn_model()
    recalibrator = BatchNormRecalibrator(model)
    assert [bn.name for bn in recalibrator.layers] == ["bn_a", "bn_b"]
    saved = recalibrator.snapshot()
    assert [s.shape for s in saved] == [(3,), (3,), (2,), (2,)]
    data = RNG.normal(5.0, 2.0, (40, 3)).astype("float32")
    assert recalibrator(iter([data[:0], data[:25], data[25:]]), None) == 40  # empty skipped
    assert_close(_stats(model.get_layer("bn_a"))[0], data.mean(0), 1e-5)
    np.testing.assert_allclose(_stats(model.get_layer("bn_a"))[1], data.var(0), rtol=1e-4)
    recalibrator.restore(saved)
    pairs = zip(saved[::2], saved[1::2], strict=True)
    for bn, (mean, variance) in zip(recalibrator.layers, pairs, strict=True):
        np.testing.assert_array_equal(_stats(bn)[0], mean)
        np.testing.assert_array_equal(_stats(bn)[1], variance)
    with pytest.raises(ValueError):
        recalibrator.restore(saved[:3])  # a snapshot of another model
    inputs = keras.Input((3,))
    plain = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    assert BatchNormRecalibrator(plain)(iter([data]), None) == 0
    with pytest.raises(TypeError) as caught:
        BatchNormRecalibrator("model.keras")
    assert str(caught.value) == "`model` must be a Keras model or layer, got str."


def test_callback_continues_its_data_and_follows_a_new_model():
    model = _bn_model()
    batches = [RNG.normal(i, 1.0, (8, 3)).astype("float32") for i in range(3)]
    callback = BatchNormRecalibration(batches, steps=2)
    assert callback.steps == 2
    callback.set_model(model)
    callback.on_test_end()  # before any validation: nothing to restore
    before = _stats(model.get_layer("bn_a"))
    callback.on_test_begin()  # batches 0 and 1
    assert_close(_stats(model.get_layer("bn_a"))[0], np.concatenate(batches[:2]).mean(0), 1e-5)
    callback.on_test_end()
    np.testing.assert_array_equal(_stats(model.get_layer("bn_a"))[0], before[0])
    callback.on_test_end()  # a second end changes nothing
    np.testing.assert_array_equal(_stats(model.get_layer("bn_a"))[0], before[0])
    callback.on_test_begin()  # the next pass continues: batches 2 and 0
    assert_close(
        _stats(model.get_layer("bn_a"))[0], np.concatenate([batches[2], batches[0]]).mean(0), 1e-5
    )
    callback.on_test_end()
    other = _bn_model()  # (a KerasTuner trial's next model)
    callback.set_model(other)
    callback.on_test_begin()
    assert callback._recalibrator.model is other
    assert not np.allclose(_stats(other.get_layer("bn_a"))[0], 0.0)
    with pytest.raises(ValueError, match="`steps`"):
        BatchNormRecalibration(batches, steps=0)


def test_pure_batchnorm_and_its_update_match_keras_batchnormalization():
    from keras_densenet.batchnorm import batch_norm_pure, update_moving_statistics

    x = RNG.normal(3.0, 2.0, (16, 4, 4, 5)).astype("float32")
    # epsilon 0.05, not ops.batch_normalization's default 1e-3, so dropping it shows.
    reference = keras.layers.BatchNormalization(momentum=0.8, epsilon=0.05)
    reference.build(x.shape)
    reference.gamma.assign(RNG.uniform(0.5, 1.5, 5).astype("float32"))
    reference.beta.assign(RNG.normal(0, 1, 5).astype("float32"))
    ours = keras.layers.BatchNormalization(momentum=0.8, epsilon=0.05)
    ours.build(x.shape)
    ours.set_weights(reference.get_weights())
    expected = keras.ops.convert_to_numpy(reference(x, training=True))
    y, mean, variance = batch_norm_pure(ours, x)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(y), expected, rtol=1e-5, atol=1e-5)
    flat = x.reshape(-1, 5).astype(np.float64)
    assert_close(keras.ops.convert_to_numpy(mean), flat.mean(0), 1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(variance), flat.var(0), rtol=1e-4)
    np.testing.assert_array_equal(_stats(ours)[0], 0.0)  # pure: nothing updated yet
    update_moving_statistics(ours, mean, variance)
    for a, b in zip(_stats(ours), _stats(reference), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # Half-precision inputs: computed in float32, returned in the layer's dtype,
    # whatever floatx is.
    half = keras.layers.BatchNormalization(dtype="mixed_float16")
    half.build(x.shape)
    for floatx in ("float32", "float16"):
        keras.config.set_floatx(floatx)
        try:
            y16, mean16, _ = batch_norm_pure(half, x.astype("float16"))
        finally:
            keras.config.set_floatx("float32")
        assert keras.backend.standardize_dtype(y16.dtype) == "float16"
        assert keras.backend.standardize_dtype(mean16.dtype) == "float32"
    # A float64 layer computes in float64 throughout (no float32 on the way).
    wide = keras.layers.BatchNormalization(dtype="float64", epsilon=0.05)
    wide.build(x.shape)
    wide.gamma.assign(RNG.uniform(0.5, 1.5, 5))
    wide.beta.assign(RNG.normal(0, 1, 5))
    x64 = x.astype(np.float64) + RNG.normal(0, 1e-6, x.shape)
    y64, mean64, variance64 = batch_norm_pure(wide, x64)
    for value in (y64, mean64, variance64):
        assert keras.backend.standardize_dtype(value.dtype) == "float64"
    flat64 = x64.reshape(-1, 5)
    gamma, beta = (keras.ops.convert_to_numpy(w) for w in (wide.gamma, wide.beta))
    want = (x64 - flat64.mean(0)) / np.sqrt(flat64.var(0) + 0.05) * gamma + beta
    np.testing.assert_allclose(keras.ops.convert_to_numpy(y64), want, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(mean64), flat64.mean(0), rtol=1e-12)
    # ... and folds them into float64 moving averages without a float32 rounding.
    wide.moving_mean.assign(np.full(5, 1.0 / 3.0))
    update_moving_statistics(wide, mean64, variance64)
    want_mean = np.full(5, 1.0 / 3.0) * 0.99 + flat64.mean(0) * 0.01
    np.testing.assert_allclose(_stats(wide)[0], want_mean, rtol=1e-13)


def test_batchnorm_layers_of_a_layer_itself_and_of_nested_models():
    bn = keras.layers.BatchNormalization()
    assert batchnorm_layers(bn) == [bn]
    inner = _bn_model()
    inputs = keras.Input((3,))
    outer = keras.Model(inputs, keras.layers.BatchNormalization(name="bn_c")(inner(inputs)))
    assert sorted(layer.name for layer in batchnorm_layers(outer)) == ["bn_a", "bn_b", "bn_c"]


def test_array_data_is_batched_by_64_unless_told():
    """bn_b's input depends on bn_a's batch statistics, so its moments show the batching."""
    data = RNG.normal(1.0, 2.0, (130, 3)).astype("float32")

    def recalibrated(**kwargs):
        keras.utils.set_random_seed(0)
        model = _bn_model()
        assert recalibrate_batchnorm(model, data, steps=None, **kwargs) == 130
        return _stats(model.get_layer("bn_b"))

    default, by_64, by_65 = recalibrated(), recalibrated(batch_size=64), recalibrated(batch_size=65)
    np.testing.assert_array_equal(default[1], by_64[1])
    assert not np.allclose(default[1], by_65[1], rtol=1e-6, atol=0)


def test_moments_are_summed_in_float64():
    """A large mean with a small spread: E[x^2] - E[x]^2 in float32 would lose the variance."""
    model = _bn_model()
    data = RNG.normal(3000.0, 1.0, (400, 3)).astype("float32")
    recalibrate_batchnorm(model, data, steps=None, batch_size=16)
    mean, variance = _stats(model.get_layer("bn_a"))
    np.testing.assert_allclose(mean, data.astype(np.float64).mean(0), rtol=1e-6)
    np.testing.assert_allclose(variance, data.astype(np.float64).var(0), rtol=2e-3)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.function tracing")
def test_ragged_batches_trace_the_forward_pass_twice_not_once_per_size():
    """The first shape, then one relaxed shape for every other batch size."""
    from keras_densenet.batchnorm import BatchNormRecalibrator

    recalibrator = BatchNormRecalibrator(_bn_model())
    data = RNG.normal(0.0, 1.0, (60, 3)).astype("float32")
    assert recalibrator(iter([data[:30], data[30:50], data[50:]]), None) == 60
    assert recalibrator._forward._fn.experimental_get_tracing_count() == 2


def test_recalibration_needs_no_pytorch_on_other_backends(monkeypatch):
    """PyTorch is not a dependency: only the PyTorch backend may import it."""
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails
    model = _bn_model()
    data = RNG.normal(2.0, 1.0, (16, 3)).astype("float32")
    assert recalibrate_batchnorm(model, data, steps=None) == 16
    assert_close(_stats(model.get_layer("bn_a"))[0], data.mean(0), 1e-5)


@pytest.mark.reliability("hang")
def test_a_callback_asking_for_more_batches_than_the_data_holds_takes_one_pass():
    import tensorflow as tf

    model = _bn_model()
    batches = [RNG.normal(i, 1.0, (8, 3)).astype("float32") for i in range(3)]
    callback = BatchNormRecalibration(batches, steps=1_000_000)  # accepted, and bounded
    callback.set_model(model)
    callback.on_test_begin()
    assert_close(_stats(model.get_layer("bn_a"))[0], np.concatenate(batches).mean(0), 1e-5)
    callback.on_test_end()
    dataset = tf.data.Dataset.from_tensor_slices(np.concatenate(batches)).batch(8)
    callback = BatchNormRecalibration(dataset, steps=10**6)
    callback.set_model(model)
    callback.on_test_begin()
    assert_close(_stats(model.get_layer("bn_a"))[0], np.concatenate(batches).mean(0), 1e-5)
    assert pass_length(dataset) == 3 and pass_length(dataset.repeat()) == INFINITE
    assert pass_length(iter(batches)) is None


@pytest.mark.reliability("hang")
def test_an_infinite_or_unbatched_dataset_is_refused_and_numpy_steps_are_taken():
    import tensorflow as tf

    model = _bn_model()
    data = np.concatenate([RNG.normal(0, 1.0, (8, 3)).astype("float32")] * 2)
    dataset = tf.data.Dataset.from_tensor_slices(data)
    with pytest.raises(ValueError, match=r"infinite dataset .* pass `steps`"):
        recalibrate_batchnorm(model, dataset.batch(4).repeat(), steps=None)
    with pytest.raises(ValueError, match=r"unbatched examples of shape \(3,\).*\.batch"):
        recalibrate_batchnorm(model, dataset, steps=2)
    assert recalibrate_batchnorm(model, dataset.batch(4), steps=np.int64(2)) == 8
    assert recalibrate_batchnorm(model, data, steps=None, batch_size=np.int32(4)) == 16
    with pytest.raises(TypeError, match="`steps`"):
        recalibrate_batchnorm(model, data, steps=np.bool_(True))
