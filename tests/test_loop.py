"""The training loop (keras_densenet.training.loop), on a real image folder.

The model a config builds, the callbacks of a run, `model.fit` and its two
failures (out of memory, a NaN loss), the line printed before the first epoch,
and two tiny end-to-end runs (seconds each). tests/test_training.py trains on
the real Fashion-MNIST sample, resumes, and runs the distributed paths.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_densenet import rundir
from keras_densenet.batchnorm import BatchNormRecalibration
from keras_densenet.losses import SparseSmoothedCrossentropy
from keras_densenet.training import TrainConfig, make_optimizer
from keras_densenet.training.callbacks import (
    AtomicBackupAndRestore,
    AtomicModelCheckpoint,
    ThroughputMeter,
)
from keras_densenet.training.data import TrainingData, load_training_data
from keras_densenet.training.loop import (
    OutOfMemoryError,
    TrainingError,
    _callbacks,
    _fit,
    build_training_model,
    describe_run,
    train,
)

#: The smallest DenseNet-BC a preset builds (one bottleneck layer per block).
TINY = {"preset": "densenet_bc_100_12", "depth": 10, "growth_rate": 4}


@pytest.fixture
def folder(tmp_path: pathlib.Path) -> str:
    """An image folder: 9 training and 3 test images, 8x8 RGB, two classes."""
    rng = np.random.default_rng(0)
    root = tmp_path / "shapes"
    for split, counts in (("train", (5, 4)), ("test", (2, 1))):
        for name, count, base in (("dots", counts[0], 40), ("bars", counts[1], 180)):
            os.makedirs(root / split / name)
            for i in range(count):
                pixels = np.clip(base + rng.normal(0, 20, (8, 8, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return str(root)


def _config(folder: str, tmp_path: pathlib.Path, **options) -> TrainConfig:
    args = {
        **TINY,
        "dataset": folder,
        "batch_size": 4,
        "epochs": 1,
        "seed": 0,
        "validation_fraction": 0.0,
        "bn_recalibrate_steps": 1,
        "jit_compile": "off",
        "out": str(tmp_path / "run"),
        "verbose": 0,
    }
    return TrainConfig(**{**args, **options})


def _batch_norms(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    return [
        layer
        for layer in model._flatten_layers()
        if isinstance(layer, keras.layers.BatchNormalization)
    ]


# --- build_training_model ---------------------------------------------------------


def test_the_model_fits_the_data_and_normalizes_with_its_statistics(folder, tmp_path) -> None:
    config = _config(folder, tmp_path, bn_momentum=0.7, label_smoothing=0.0)
    data = load_training_data(config)
    model = build_training_model(config, data)
    assert model.input_shape == (None, 8, 8, 3) and model.output_shape == (None, 2)
    assert model.name == "densenet_bc_10_4"
    norm = model.get_layer("normalization").get_config()
    np.testing.assert_allclose(norm["mean"], data.info.mean, rtol=1e-6)
    np.testing.assert_allclose(norm["variance"], np.square(data.info.std), rtol=1e-6)
    norms = _batch_norms(model)
    assert len(norms) == 9  # 3 blocks of one bottleneck layer (2 each), 2 transitions, final
    assert {bn.momentum for bn in norms} == {0.7}
    assert not any(bn.synchronized for bn in norms)
    assert not any(getattr(layer, "memory_efficient", False) for layer in model._flatten_layers())
    assert isinstance(model.loss, keras.losses.SparseCategoricalCrossentropy)
    assert model.jit_compile is False


def test_options_reach_the_model_loss_and_compilation(folder, tmp_path) -> None:
    config = _config(
        folder,
        tmp_path,
        sync_batchnorm=True,
        memory_efficient=True,
        label_smoothing=0.2,
        jit_compile="on",
    )
    data = load_training_data(config)
    model = build_training_model(config, data)
    assert all(bn.synchronized for bn in _batch_norms(model))
    assert any(getattr(layer, "memory_efficient", False) for layer in model._flatten_layers())
    assert isinstance(model.loss, SparseSmoothedCrossentropy)
    assert model.loss.label_smoothing == 0.2
    assert model.jit_compile is True


def test_the_optimizer_schedule_spans_every_step_of_the_run(folder, tmp_path) -> None:
    config = _config(folder, tmp_path, epochs=4, schedule="step", warmup_epochs=0.0)
    data = load_training_data(config)
    assert (data.steps_per_epoch, data.global_batch) == (3, 4)
    model = build_training_model(config, data)
    expected = make_optimizer(config, 12, 4, 3)
    rates, wanted = [], []
    for step in range(14):
        for optimizer, values in ((model.optimizer, rates), (expected, wanted)):
            optimizer.iterations.assign(step)
            values.append(float(optimizer.learning_rate))
    assert rates == wanted
    # The paper's steps at 50% and 75% of 12 steps; lr 0.1 x 4 / 64.
    assert rates[5] == pytest.approx(0.00625) and rates[6] == pytest.approx(0.000625)
    assert rates[9] == pytest.approx(0.0000625)


def test_xla_is_resolved_with_the_strategy_and_precision_of_the_run(folder, tmp_path) -> None:
    # XLA with mixed_float16 under a strategy crashes; the model must be compiled
    # knowing both (a dropped strategy or precision would compile it with XLA on).
    config = _config(folder, tmp_path, jit_compile="on", precision="mixed_float16")
    data = load_training_data(config)
    with pytest.raises(ValueError, match=r"^XLA with mixed_float16 under MirroredStrategy"):
        build_training_model(config, data, tf.distribute.get_strategy())
    assert build_training_model(config, data).jit_compile is True


def test_the_accuracy_metric_is_named_accuracy(folder, tmp_path) -> None:
    config = _config(folder, tmp_path)
    data = load_training_data(config)
    model = build_training_model(config, data)
    images, labels = next(iter(data.validation))
    logs = model.evaluate(images, labels, verbose=0, return_dict=True)
    predicted = np.argmax(model.predict(images, verbose=0), axis=-1)
    assert logs["accuracy"] == pytest.approx(np.mean(predicted == labels.numpy()))


# --- the callbacks of a run -------------------------------------------------------


def test_a_runs_callbacks_in_their_order_with_their_files(folder, tmp_path) -> None:
    config = _config(folder, tmp_path, bn_recalibrate_steps=2)
    os.makedirs(config.out)
    data = load_training_data(config)
    meter = ThroughputMeter(4)
    callbacks = _callbacks(config, data, meter, 0)
    out = config.out
    assert [type(c) for c in callbacks] == [
        keras.callbacks.TerminateOnNaN,
        keras.callbacks.CSVLogger,
        AtomicModelCheckpoint,
        AtomicModelCheckpoint,
        AtomicBackupAndRestore,
        keras.callbacks.TensorBoard,
        ThroughputMeter,
        BatchNormRecalibration,
    ]
    _, csv, best, last, backup, board, timer, recalibration = callbacks
    assert (csv.filename, csv.append) == (os.path.join(out, rundir.HISTORY), True)
    assert best.filepath == os.path.join(out, rundir.BEST)
    assert (best.monitor, best.mode, best.save_best_only) == ("val_accuracy", "max", True)
    assert best.best is None  # nothing to beat in a new run
    assert last.filepath == os.path.join(out, rundir.LAST)
    assert (last.monitor, last.save_best_only) == ("val_loss", False)
    assert backup.backup_dir == os.path.join(out, rundir.BACKUP)
    assert (board.log_dir, board.write_graph) == (os.path.join(out, rundir.LOGS), False)
    assert timer is meter
    assert recalibration.steps == 2 and recalibration.data is data.recalibration
    with open(os.path.join(out, rundir.CONFIG)) as f:
        assert json.load(f) == config.to_dict()
    without = _callbacks(dataclasses.replace(config, bn_recalibrate_steps=0), data, meter, 0)
    assert [type(c) for c in without][-1] is ThroughputMeter


def test_a_resumed_run_trims_its_history_and_must_beat_its_best_epoch(folder, tmp_path) -> None:
    config = _config(folder, tmp_path)
    os.makedirs(config.out)
    history = os.path.join(config.out, rundir.HISTORY)
    with open(history, "w") as f:
        f.write("epoch,accuracy,loss,val_accuracy,val_loss\n")
        f.write("0,0.4,1.0,nan,1.1\n1,0.5,0.9,0.6,1.0\n2,0.6,0.8,0.55,0.9\n3,0.7,0.7,0.9,0.8\n")
    data = load_training_data(config)
    best = _callbacks(config, data, ThroughputMeter(4), 3)[2]
    # Epoch 3 was logged but not backed up: it is trained again, and dropped here.
    assert rundir.read_history(history)["epoch"] == [0, 1, 2]
    assert best.best == 0.6  # the best kept epoch; the NaN one is passed over
    with open(history, "w") as f:
        f.write("epoch,accuracy,loss,val_accuracy,val_loss\n0,0.4,1.0,nan,1.1\n")
    best = _callbacks(config, data, ThroughputMeter(4), 1)[2]
    assert best.best is None  # nothing to beat: the next epoch is saved whatever it scores


# --- model.fit and its failures -----------------------------------------------------


def _dense_model() -> keras.Model:
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    return model


def _data(images: np.ndarray, repeat: bool = False) -> TrainingData:
    labels = np.arange(len(images)) % 2
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(2)
    train = dataset.repeat() if repeat else dataset
    return TrainingData(train, dataset, info=None, steps_per_epoch=3, global_batch=2)


class _Batches(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.per_epoch: list[int] = []

    def on_epoch_begin(self, epoch, logs=None) -> None:
        self.per_epoch.append(0)

    def on_train_batch_end(self, batch, logs=None) -> None:
        self.per_epoch[-1] += 1


def test_fit_trains_the_configured_epochs_and_steps(tmp_path, capsys) -> None:
    config = TrainConfig(epochs=2, out=str(tmp_path), verbose=0)
    model = _dense_model()
    before = model.get_weights()
    counter = _Batches()
    _fit(model, config, _data(np.ones((4, 3), np.float32)), [counter], 0)
    assert counter.per_epoch == [2, 2]  # one pass of 4 images in batches of 2
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))
    assert capsys.readouterr().out == ""
    capped = dataclasses.replace(config, steps_per_epoch=3, epochs=1)
    counter = _Batches()
    _fit(model, capped, _data(np.ones((4, 3), np.float32), repeat=True), [counter], 0)
    assert counter.per_epoch == [3]


def test_fit_prints_keras_progress_when_verbose(tmp_path, capsys) -> None:
    config = TrainConfig(epochs=1, out=str(tmp_path), verbose=2)
    _fit(_dense_model(), config, _data(np.ones((4, 3), np.float32)), [], 0)
    assert "val_loss" in capsys.readouterr().out


def test_a_nan_loss_names_the_epoch_and_what_was_kept(tmp_path) -> None:
    config = TrainConfig(epochs=1, out=str(tmp_path), verbose=0)
    images = np.full((4, 3), np.inf, np.float32)
    with pytest.raises(TrainingError) as err:
        _fit(_dense_model(), config, _data(images), [], 4)
    assert str(err.value) == (
        "The loss became NaN/inf in epoch 5; training stopped. No epoch finished, so no "
        "model was saved; lower --learning-rate or use float32."
    )
    last = tmp_path / rundir.LAST
    last.write_bytes(b"a good model")
    two = dataclasses.replace(config, epochs=2)
    with pytest.raises(TrainingError) as err:
        _fit(_dense_model(), two, _data(images), [], 0)
    assert str(err.value) == (
        f"The loss became NaN/inf in epoch 2; training stopped. The last good model is "
        f"{last} and --resume restarts from the last good epoch; lower --learning-rate or "
        "use float32."
    )


class _Failing(keras.Model):
    """A model whose fit fails as TensorFlow does when a batch does not fit."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def fit(self, *args, **kwargs):
        raise self.error


@pytest.mark.parametrize(
    "error",
    [
        # by its kind alone (no phrase of the message list in it)
        tf.errors.ResourceExhaustedError(None, None, "Graph execution error: [[node conv]]"),
        MemoryError(),
        # oneDNN's convolution when its memory cannot be had (dnnl_out_of_memory = 1)
        tf.errors.AbortedError(
            None,
            None,
            "Operation received an exception:Status: 1, message: could not create a "
            "primitive, in file tensorflow/core/kernels/mkl/mkl_conv_ops.cc:1132",
        ),
        tf.errors.InternalError(None, None, "std::bad_alloc"),
        # TensorFlow's allocator message, passed on by a kernel as another kind of error
        tf.errors.UnknownError(None, None, "OOM when allocating tensor with shape[64,512]"),
        tf.errors.UnknownError(None, None, "CUDA_ERROR_OUT_OF_MEMORY: out of memory"),
        RuntimeError("XLA: Failed to allocate request for 2.00GiB (2147483648B) on device"),
        OSError(12, "Cannot allocate memory"),  # errno.ENOMEM
    ],
    ids=[
        "ResourceExhausted",
        "MemoryError",
        "oneDNN",
        "bad_alloc",
        "passed-on",
        "CUDA",
        "XLA",
        "ENOMEM",
    ],
)
def test_out_of_memory_lists_the_remedies(tmp_path, error) -> None:
    config = TrainConfig(batch_size=48, out=str(tmp_path))
    with pytest.raises(OutOfMemoryError) as err:
        _fit(_Failing(error), config, _data(np.ones((4, 3), np.float32)), [], 0)
    assert str(err.value) == (
        "Out of memory at batch size 48: try --memory-efficient, a smaller --batch-size, "
        "or --precision mixed_bfloat16/mixed_float16."
    )
    assert err.value.__cause__ is error
    assert isinstance(err.value, TrainingError)


@pytest.mark.parametrize(
    "error",
    [
        ValueError("some other problem"),
        tf.errors.AbortedError(
            None,
            None,
            "Operation received an exception:Status: 2, message: invalid arguments, in "
            "file tensorflow/core/kernels/mkl/mkl_conv_ops.cc:1132",
        ),
        tf.errors.InvalidArgumentError(None, None, "Incompatible shapes: [64,10] vs. [32,10]"),
        # Not a runtime's error, whatever it says: a file's name, an errno that is no ENOMEM
        ValueError("Image file 'failed to allocate/out of memory.png' is not an image"),
        OSError(28, "No space left on device: 'out of memory.log'"),
    ],
    ids=["ValueError", "oneDNN-invalid-arguments", "InvalidArgument", "named", "ENOSPC"],
)
def test_other_errors_of_fit_pass_through(tmp_path, error) -> None:
    with pytest.raises(type(error)) as err:
        _fit(_Failing(error), TrainConfig(out=str(tmp_path)), _data(np.ones((4, 3))), [], 0)
    assert err.value is error


# --- the line printed before the first epoch ------------------------------------------


def test_the_run_is_described_in_one_line(folder, tmp_path) -> None:
    config = _config(folder, tmp_path, epochs=7)
    data = load_training_data(config)
    model = build_training_model(config, data)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == 4_018
    model_part = "densenet_bc_10_4 (4,018 trainable params)"
    assert describe_run(config, data, model, jit=False) == (
        f"{folder} (folder: 9 train / 3 test, 8x8x3, 2 classes) | {model_part} | "
        f"7 epochs of 3 steps, batch 4 | float32, XLA off | {config.out}"
    )
    assert describe_run(config, data, model, jit=True, done=3) == (
        f"{folder} (folder: 9 train / 3 test, 8x8x3, 2 classes) | {model_part} | "
        f"7 epochs of 3 steps, batch 4 | float32, XLA on | {config.out} | resuming after "
        "epoch 3"
    )
    held_out = _config(folder, tmp_path, validation_fraction=0.34)
    held_data = load_training_data(held_out)
    assert describe_run(held_out, held_data, model, jit=False).startswith(
        f"{folder} (folder: 6 train / 3 validation / 3 test, 8x8x3, 2 classes) | "
    )
    unknown = dataclasses.replace(data, validation_info=None)
    assert describe_run(config, unknown, model, jit=False).startswith(
        f"{folder} (folder: 9 train / ?  / 3 test, 8x8x3"
    )
    no_test = dataclasses.replace(data, test_info=None)
    assert describe_run(config, no_test, model, jit=False).startswith(
        f"{folder} (folder: 9 train / 3 test, 8x8x3"
    )


# --- train, end to end -----------------------------------------------------------------


def test_train_writes_a_complete_run_and_resuming_it_changes_nothing(
    folder, tmp_path, capsys
) -> None:
    config = _config(folder, tmp_path, epochs=2, verbose=2, jit_compile="on")
    summary = train(config)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == describe_run(config, load_training_data(config), _model(config), True)
    assert summary["epochs"] == 2 and summary["replicas"] == 1
    assert summary["global_batch_size"] == 4 and summary["jit_compile"] is True
    assert summary["bn_statistics"] == "recalibrated"
    assert summary["images_per_second"] > 0  # measured with the global batch
    out = pathlib.Path(config.out)
    for name in (rundir.BEST, rundir.LAST, rundir.HISTORY, rundir.SUMMARY, rundir.CONFIG):
        assert (out / name).is_file(), name
    assert rundir.read_history(out)["epoch"] == [0, 1]
    assert keras.distribution.distribution() is None

    def files() -> dict:
        return {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}

    written = files()
    again = train(dataclasses.replace(config, resume=True, verbose=0))
    assert again == {**json.loads((out / rundir.SUMMARY).read_text()), "already_complete": True}
    lock = out / rundir.LOCK
    assert {p: t for p, t in files().items() if p != lock} == {
        p: t for p, t in written.items() if p != lock
    }


def test_a_resumed_run_says_where_it_resumes_and_a_nan_names_its_epoch(
    folder, tmp_path, capsys
) -> None:
    config = _config(folder, tmp_path, bn_recalibrate_steps=0)
    train(config)
    capsys.readouterr()
    resumed = dataclasses.replace(config, resume=True, epochs=2, learning_rate=1e30, verbose=2)
    with pytest.raises(TrainingError) as err:
        train(resumed)
    last = os.path.join(config.out, rundir.LAST)
    assert str(err.value) == (
        f"The loss became NaN/inf in epoch 2; training stopped. The last good model is "
        f"{last} and --resume restarts from the last good epoch; lower --learning-rate or "
        "use float32."
    )
    printed = capsys.readouterr().out.splitlines()
    data = load_training_data(resumed)
    assert printed[0] == describe_run(resumed, data, _model(config), False, done=1)
    assert printed[0].endswith(
        f" | float32, XLA off | {config.out} | extending the finished 1-epoch run to 2 epochs "
        "(its summary.json and best.keras are replaced at the end)"
    )


def test_train_puts_back_the_distribution_it_found_even_when_it_fails(folder, tmp_path) -> None:
    mesh = keras.distribution.DeviceMesh((1,), ["batch"], devices=["cpu:0"])
    found = keras.distribution.DataParallel(device_mesh=mesh)
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    keras.distribution.set_distribution(found)
    try:
        with pytest.raises(ValueError, match="out"):
            train(_config(folder, tmp_path, out=str(not_a_dir)))
        assert keras.distribution.distribution() is found
    finally:
        keras.distribution.set_distribution(None)


def _disable_op_determinism() -> None:
    # TensorFlow exports only the switch on; the switch off and the state are internal.
    from tensorflow.python.framework import config as tf_config

    tf_config.disable_op_determinism()


def _op_determinism() -> bool:
    from tensorflow.python.framework import config as tf_config

    return tf_config.is_op_determinism_enabled()


def _model(config: TrainConfig) -> keras.Model:
    return rundir.load_model(os.path.join(config.out, rundir.BEST))


def test_a_seed_makes_a_run_repeatable_and_deterministic_ops_are_switched_on(
    folder, tmp_path
) -> None:
    _disable_op_determinism()
    first = _config(folder, tmp_path / "a", bn_recalibrate_steps=0)
    train(first)
    assert not _op_determinism()
    second = _config(folder, tmp_path / "b", bn_recalibrate_steps=0, deterministic=True)
    try:
        train(second)
        assert _op_determinism()
    finally:
        _disable_op_determinism()
    a = rundir.load_model(os.path.join(first.out, rundir.LAST)).get_weights()
    b = rundir.load_model(os.path.join(second.out, rundir.LAST)).get_weights()
    # Deterministic kernels round differently (last bits); unseeded, the weights
    # would differ from the first value.
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
