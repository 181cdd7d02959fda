"""`prepare_run_dir`: which run directories take a new run or a resume, from files alone.

Each case writes the files a run leaves (config.json as `train` writes it, the
backup's metadata and an HDF5 weights file, history.csv, summary.json) and asks
`prepare_run_dir`; no TensorFlow op runs, so these own
`keras_densenet/training/resume.py` in tests/mutation.sh. Whole runs killed and
resumed are in test_reliability.
"""

from __future__ import annotations

import json
import os
import re

import h5py
import numpy as np
import pytest

from keras_densenet import rundir
from keras_densenet.training import TrainConfig
from keras_densenet.training.resume import RESUMABLE_CHANGES, prepare_run_dir

HISTORY_HEADER = "epoch,loss,val_loss\n"


def _run(tmp_path, epochs_done=2, *, summary=False, config=None, **options):
    """A run directory as `train` leaves it after ``epochs_done`` epochs."""
    config = config or TrainConfig(out=str(tmp_path / "run"), epochs=4, **options)
    out = config.out
    os.makedirs(os.path.join(out, rundir.BACKUP))
    with open(os.path.join(out, rundir.CONFIG), "w") as f:
        json.dump(config.to_dict(), f)
    with h5py.File(os.path.join(out, rundir.BACKUP, rundir.BACKUP_WEIGHTS), "w") as f:
        f.create_dataset("layers/dense/vars/0", data=np.ones((2, 2), "float32"))
    with open(os.path.join(out, rundir.BACKUP, rundir.BACKUP_METADATA), "w") as f:
        json.dump({"epoch": epochs_done, "batch": 0}, f)
    with open(os.path.join(out, rundir.HISTORY), "w") as f:
        f.write(HISTORY_HEADER + "".join(f"{e},0.5,0.6\n" for e in range(epochs_done)))
    if summary:
        with open(os.path.join(out, rundir.SUMMARY), "w") as f:
            json.dump({"epochs": epochs_done}, f)
    return config


def test_a_new_directory_takes_a_run(tmp_path):
    assert prepare_run_dir(TrainConfig(out=str(tmp_path / "new"))) == 0
    assert prepare_run_dir(TrainConfig(out=str(tmp_path / "new"), resume=True)) == 0
    os.makedirs(tmp_path / "empty")
    assert prepare_run_dir(TrainConfig(out=str(tmp_path / "empty"))) == 0
    assert not os.path.exists(tmp_path / "new")  # nothing is written


def test_a_run_is_not_overwritten_without_resume(tmp_path):
    config = _run(tmp_path)
    message = (
        f"`out` {config.out!r} already holds a run: pass `resume=True` to continue it, "
        "or choose another directory."
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        prepare_run_dir(config)


def test_resume_returns_the_epochs_the_backup_holds(tmp_path):
    config = _run(tmp_path, epochs_done=3)
    assert prepare_run_dir(config.replace(resume=True)) == 3


def test_a_backup_before_the_first_epoch_resumes_from_zero(tmp_path):
    config = _run(tmp_path, epochs_done=0)
    assert prepare_run_dir(config.replace(resume=True)) == 0


@pytest.mark.parametrize(
    "change",
    [
        {"epochs": 10},
        {"learning_rate": 0.01},
        {"verbose": 0},
        {"bn_recalibrate_steps": 5},
    ],
)
def test_resume_may_change_only_the_resumable_options(tmp_path, change):
    config = _run(tmp_path)
    assert prepare_run_dir(config.replace(resume=True, **change)) == 2


def test_a_moved_run_directory_resumes(tmp_path):
    config = _run(tmp_path)
    os.rename(config.out, tmp_path / "moved")
    assert prepare_run_dir(config.replace(resume=True, out=str(tmp_path / "moved"))) == 2


def test_resumable_changes_are_the_documented_ones():
    assert {
        "resume",
        "verbose",
        "epochs",
        "learning_rate",
        "bn_recalibrate_steps",
        "out",
    } == RESUMABLE_CHANGES


def test_resume_refuses_any_other_change_and_names_it(tmp_path):
    config = _run(tmp_path)
    changed = config.replace(resume=True, growth_rate=6, seed=3)
    message = (
        f"`resume` needs the same options as the run in {config.out!r}; these differ "
        "(was, now): {'growth_rate': (None, 6), 'seed': (None, 3)}."
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        prepare_run_dir(changed)


def test_a_run_from_before_an_option_existed_resumes_at_its_old_value(tmp_path):
    config = _run(tmp_path, bn_momentum=0.99, warmup_epochs=0.0)
    path = os.path.join(config.out, rundir.CONFIG)
    with open(path) as f:
        stored = json.load(f)
    for name in ("bn_momentum", "warmup_epochs", "bad_images"):
        del stored[name]  # written by a version without them
    with open(path, "w") as f:
        json.dump(stored, f)
    assert prepare_run_dir(config.replace(resume=True)) == 2
    with pytest.raises(ValueError, match=re.escape("'bn_momentum': (0.99, 0.9)")):
        prepare_run_dir(config.replace(resume=True, bn_momentum=0.9))


def test_resume_needs_at_least_the_epochs_done(tmp_path):
    config = _run(tmp_path, epochs_done=3)
    message = (
        f"The run in {config.out!r} has already trained 3 epochs: `epochs` must be at least "
        "3 to resume it (got 2); nothing was changed."
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        prepare_run_dir(config.replace(resume=True, epochs=2))
    assert prepare_run_dir(config.replace(resume=True, epochs=3)) == 3  # only finishing is left


def test_a_complete_run_has_nothing_to_do(tmp_path):
    config = _run(tmp_path, epochs_done=4, summary=True)
    assert prepare_run_dir(config.replace(resume=True)) is None
    # Asked for more epochs, it continues from the backup.
    assert prepare_run_dir(config.replace(resume=True, epochs=6)) == 4


def test_a_run_killed_after_its_last_epoch_but_before_its_summary_finishes(tmp_path):
    config = _run(tmp_path, epochs_done=4, summary=False)
    assert prepare_run_dir(config.replace(resume=True)) == 4


def test_a_corrupted_history_is_named_before_training(tmp_path):
    config = _run(tmp_path)
    history = os.path.join(config.out, rundir.HISTORY)
    with open(history, "a") as f:
        f.write("2,not-a-number,0.6\n")
    with pytest.raises(ValueError, match=re.escape(repr(history))):
        prepare_run_dir(config.replace(resume=True))
    os.remove(history)  # no history at all is fine: the backup decides
    assert prepare_run_dir(config.replace(resume=True)) == 2


def test_a_truncated_backup_is_named(tmp_path):
    config = _run(tmp_path)
    weights = os.path.join(config.out, rundir.BACKUP, rundir.BACKUP_WEIGHTS)
    with open(weights, "r+b") as f:
        f.truncate(100)
    with pytest.raises(ValueError, match=re.escape(f"{weights!r} is truncated or corrupted")):
        prepare_run_dir(config.replace(resume=True))


def test_a_corrupted_config_is_named(tmp_path):
    config = _run(tmp_path)
    path = os.path.join(config.out, rundir.CONFIG)
    with open(path, "w") as f:
        f.write("[1, 2]")
    with pytest.raises(ValueError, match=re.escape(f"The run config {path!r} must hold")):
        prepare_run_dir(config.replace(resume=True))
