"""The training callbacks on a tiny Keras model: resume without a lost or repeated
epoch, writes that fail leave the old files, NaN epochs never saved, throughput.

A two-layer Dense model on fixed data trains in milliseconds, so these own
`keras_densenet/training/callbacks.py` in tests/mutation.sh; the whole DenseNet
runs through the same callbacks in test_training and test_reliability.
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest

from keras_densenet import rundir
from keras_densenet.training import AtomicBackupAndRestore, AtomicModelCheckpoint, ThroughputMeter
from keras_densenet.training import callbacks as callbacks_module

EPOCHS = 4


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 5)).astype("float32")
    y = (x @ rng.normal(size=(5,)) > 0).astype("int32")
    return x, y


def _model():
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(2)]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


class EpochsRun(keras.callbacks.Callback):
    """Records the epochs fit runs; raises at the start of ``crash_at``."""

    def __init__(self, crash_at=None):
        super().__init__()
        self.crash_at = crash_at
        self.epochs: list[int] = []

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.crash_at:
            raise KeyboardInterrupt(f"killed before epoch {epoch}")
        self.epochs.append(epoch)


def _fit(model, backup_dir, epochs=EPOCHS, crash_at=None):
    x, y = _data()
    seen = EpochsRun(crash_at)
    model.fit(
        x,
        y,
        batch_size=8,
        epochs=epochs,
        shuffle=False,
        verbose=0,
        callbacks=[AtomicBackupAndRestore(backup_dir), seen],
    )
    return seen.epochs


def _metadata(backup_dir):
    with open(os.path.join(backup_dir, rundir.BACKUP_METADATA)) as f:
        return json.load(f)


@pytest.mark.reliability("faults")
@pytest.mark.parametrize("crash_at", [1, 3])
def test_resume_neither_loses_nor_repeats_an_epoch(tmp_path, crash_at):
    straight = _model()
    assert _fit(straight, str(tmp_path / "straight")) == list(range(EPOCHS))

    backup = str(tmp_path / "backup")
    first = _model()
    with pytest.raises(KeyboardInterrupt):
        _fit(first, backup, crash_at=crash_at)
    assert _metadata(backup) == {"epoch": crash_at, "batch": 0}
    assert sorted(os.listdir(backup)) == [rundir.BACKUP_WEIGHTS, rundir.BACKUP_METADATA]

    resumed = _model()  # a new process: fresh weights and optimizer
    assert _fit(resumed, backup) == list(range(crash_at, EPOCHS))
    assert _metadata(backup) == {"epoch": EPOCHS, "batch": 0}
    assert int(resumed.optimizer.iterations) == int(straight.optimizer.iterations) == EPOCHS * 4
    for a, b in zip(resumed.get_weights(), straight.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # The optimizer's momentum came back too, not only the weights.
    for a, b in zip(resumed.optimizer.variables, straight.optimizer.variables, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


@pytest.mark.reliability("faults")
@pytest.mark.parametrize(
    "logs",
    [
        {"loss": float("nan")},
        {"loss": 0.5, "val_loss": float("inf")},
        {"loss": 0.5, "smoothed_loss": float("-inf")},
    ],
)
def test_a_non_finite_epoch_is_not_backed_up(tmp_path, logs):
    model = _model()
    backup = AtomicBackupAndRestore(tmp_path / "b")
    backup.set_model(model)
    backup.on_epoch_end(0, {"loss": 0.7, "accuracy": 0.5})
    weights = (tmp_path / "b" / rundir.BACKUP_WEIGHTS).read_bytes()
    model.layers[-1].kernel.assign(np.zeros((4, 2)))
    backup.on_epoch_end(1, logs)
    assert _metadata(tmp_path / "b") == {"epoch": 1, "batch": 0}
    assert (tmp_path / "b" / rundir.BACKUP_WEIGHTS).read_bytes() == weights
    # A metric that is not a loss does not block the backup.
    backup.on_epoch_end(1, {"loss": 0.6, "accuracy": float("nan")})
    assert _metadata(tmp_path / "b") == {"epoch": 2, "batch": 0}
    assert (tmp_path / "b" / rundir.BACKUP_WEIGHTS).read_bytes() != weights


@pytest.mark.reliability("faults")
def test_a_backup_write_that_fails_leaves_the_previous_backup(tmp_path, monkeypatch):
    model = _model()
    backup = AtomicBackupAndRestore(str(tmp_path / rundir.BACKUP))
    backup.set_model(model)
    backup.on_epoch_end(0, {"loss": 0.7})
    weights = (tmp_path / rundir.BACKUP / rundir.BACKUP_WEIGHTS).read_bytes()

    def write_half_then_fail(self, filepath, *args, **kwargs):
        with open(filepath, "wb") as f:
            f.write(weights[: len(weights) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keras.Model, "save_weights", write_half_then_fail)
    with pytest.raises(OSError, match="No space"):
        backup.on_epoch_end(1, {"loss": 0.6})
    assert (tmp_path / rundir.BACKUP / rundir.BACKUP_WEIGHTS).read_bytes() == weights
    assert _metadata(tmp_path / rundir.BACKUP) == {"epoch": 1, "batch": 0}
    assert sorted(os.listdir(tmp_path / rundir.BACKUP)) == [
        rundir.BACKUP_WEIGHTS,
        rundir.BACKUP_METADATA,
    ]
    assert rundir.epochs_done(tmp_path) == 1  # what a resume reads


def test_backup_keeps_its_files_after_training(tmp_path):
    # Keras deletes the backup at the end of fit by default; a run keeps it,
    # so a completed run can be extended with --resume --epochs N.
    _fit(_model(), str(tmp_path / "b"), epochs=2)
    assert _metadata(tmp_path / "b") == {"epoch": 2, "batch": 0}
    assert AtomicBackupAndRestore(tmp_path / "b").save_freq == "epoch"


@pytest.mark.reliability("faults")
def test_checkpoint_write_that_fails_leaves_the_old_file(tmp_path, monkeypatch):
    model = _model()
    path = tmp_path / "m.keras"
    callback = AtomicModelCheckpoint(path)
    assert callback.final_path == str(path)
    callback.set_model(model)
    callback.on_epoch_end(0, {"loss": 1.0})
    good = path.read_bytes()
    original_save = keras.Model.save

    def save_half_then_fail(self, filepath, *args, **kwargs):
        with open(filepath, "wb") as f:  # a disk that fills up half way
            f.write(good[: len(good) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keras.Model, "save", save_half_then_fail)
    with pytest.raises(OSError, match="No space"):
        callback.on_epoch_end(1, {"loss": 0.5})
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["m.keras"]  # no temporary left behind
    monkeypatch.setattr(keras.Model, "save", original_save)
    model.layers[-1].kernel.assign(np.zeros(model.layers[-1].kernel.shape))
    callback.on_epoch_end(2, {"loss": float("nan")})  # a NaN epoch is never saved
    assert path.read_bytes() == good
    callback.on_epoch_end(3, {"loss": 0.4})
    assert path.read_bytes() != good
    reloaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(reloaded.layers[-1].kernel.numpy(), 0.0)


def test_best_checkpoint_follows_keras_and_the_resumed_threshold(tmp_path, capsys):
    model = _model()
    path = tmp_path / "best.keras"
    callback = AtomicModelCheckpoint(
        path, monitor="val_loss", save_best_only=True, initial_value_threshold=0.5, verbose=1
    )
    callback.set_model(model)
    callback.on_epoch_end(0, {"loss": 0.1, "val_loss": 0.6})  # worse than the earlier run's best
    assert not path.exists()
    callback.on_epoch_end(1, {"loss": 0.1, "val_loss": 0.4})
    saved = path.read_bytes()
    printed = capsys.readouterr().out
    assert "Epoch 1: val_loss did not improve from 0.50000" in printed
    assert f"Epoch 2: val_loss improved from 0.50000 to 0.40000, saving model to {path}" in printed
    model.layers[-1].kernel.assign(np.zeros((4, 2)))
    callback.on_epoch_end(2, {"loss": 0.1, "val_loss": 0.45})
    assert path.read_bytes() == saved
    callback.on_epoch_end(3, {"loss": 0.1, "val_loss": float("nan")})
    assert path.read_bytes() == saved
    callback.on_epoch_end(4, {"loss": float("inf"), "val_loss": 0.3})  # diverged: never saved
    assert path.read_bytes() == saved
    callback.on_epoch_end(5, {"loss": 0.1, "val_loss": 0.3})
    assert path.read_bytes() != saved
    assert os.listdir(tmp_path) == ["best.keras"]


class Clock:
    def __init__(self, *times):
        self.times = list(times)

    def __call__(self):
        return self.times.pop(0)


def test_throughput_is_images_over_seconds_after_the_first_epoch(monkeypatch):
    meter = ThroughputMeter(batch_size=16)
    assert meter.images_per_second() is None
    # Epoch 0 (tracing): 2 steps in 4 s; then 4 steps in 2 s, 4 in 1 s, 4 in 4 s. The clock
    # is read when an epoch begins and after each step (validation after the last is not timed).
    clock = Clock(
        *(0.0, 2.0, 4.0),
        *(10.0, 10.5, 11.0, 11.5, 12.0),
        *(20.0, 20.25, 20.5, 20.75, 21.0),
        *(30.0, 31.0, 32.0, 33.0, 34.0),
    )
    monkeypatch.setattr(callbacks_module.time, "perf_counter", clock)
    for steps in (2, 4, 4, 4):
        meter.on_epoch_begin(0)
        for batch in range(steps):
            meter.on_train_batch_end(batch)
        meter.on_epoch_end(0)
    assert meter.epoch_rates == [8.0, 32.0, 64.0, 16.0]
    assert meter.images_per_second() == 32.0  # the median of the last three
    assert isinstance(meter.images_per_second(), float)


def test_throughput_of_a_single_epoch_and_of_empty_ones(monkeypatch):
    meter = ThroughputMeter(batch_size=10)
    clock = Clock(0.0, 1.0, 3.0, 5.0, 6.0, 7.0, 7.0)  # begin, 3 steps; begin; begin, 1 step
    monkeypatch.setattr(callbacks_module.time, "perf_counter", clock)
    meter.on_epoch_begin(0)
    for batch in range(3):
        meter.on_train_batch_end(batch)
    meter.on_epoch_end(0)
    assert meter.images_per_second() == 6.0  # only epoch: it counts
    meter.on_epoch_begin(1)  # an epoch with no step is not a rate
    meter.on_epoch_end(1)
    meter.on_epoch_begin(2)  # nor one the clock did not see pass
    meter.on_train_batch_end(0)
    meter.on_epoch_end(2)
    assert meter.epoch_rates == [6.0]


def test_throughput_of_each_phase_leaves_out_the_phase_s_first_epoch(monkeypatch):
    meter = ThroughputMeter(batch_size=10)
    # Epochs 0-2 frozen (10, 40, 30 img/s), 3-5 everything (5, 20, 10 img/s).
    times = []
    for seconds in (1.0, 0.25, 1 / 3, 2.0, 0.5, 1.0):
        times += [0.0, seconds]
    monkeypatch.setattr(callbacks_module.time, "perf_counter", Clock(*times))
    for epoch in range(6):
        meter.on_epoch_begin(epoch)
        meter.on_train_batch_end(0)
        meter.on_epoch_end(epoch)
    assert meter.images_per_second(0, 3) == 35.0  # median of 40 and 30
    assert meter.images_per_second(3) == 15.0  # median of 20 and 10
    assert meter.images_per_second(5) == 10.0  # a phase of one epoch: it counts
    assert meter.images_per_second(6) is None


def test_throughput_counts_training_steps_only_not_validation():
    import time

    from keras_densenet.training.callbacks import ThroughputMeter

    meter = ThroughputMeter(batch_size=10)
    meter.on_epoch_begin(0)
    for step in range(4):
        time.sleep(0.01)
        meter.on_train_batch_end(step)
    time.sleep(0.2)  # validation and BN recalibration: not training
    meter.on_epoch_end(0)
    assert meter.epoch_rates[0] > 40 / 0.2  # 40 images in ~0.04 s, not in ~0.24 s
