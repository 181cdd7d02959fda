"""Faults survived, bad input refused, nothing lost (figures go to tests/RELIABILITY.md).

Crashes are real: the training runs in a subprocess that is SIGKILLed, either from
outside or by itself in the middle of writing a checkpoint (a test-side patch of the
Keras save functions writes half a file and then kills the process).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import keras
import numpy as np
import pytest
from conftest import run_command

from keras_densenet import build_densenet
from keras_densenet.cli import main
from keras_densenet.training import load_model

TRAIN_ARGS = [
    "train",
    "--preset",
    "densenet_bc_100_12",
    "--depth",
    "10",
    "--growth-rate",
    "4",
    "--epochs",
    "4",
    "--steps-per-epoch",
    "12",
    "--batch-size",
    "16",
    "--bn-recalibrate-steps",
    "2",
    "--seed",
    "0",
    "--quiet",
]

# Runs the CLI after patching one Keras save function to crash mid-write on its Nth call.
CRASHING = textwrap.dedent(
    """
    import os, signal, sys
    import keras
    from keras_densenet import training
    target, nth = sys.argv[1], int(sys.argv[2])
    calls = {"n": 0}

    def crash_while_writing(path):
        with open(path, "wb") as f:  # half a file at the name being written
            f.write(b"PK\\x03\\x04 partial checkpoint")
            f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    if target in ("save", "save_weights"):
        original = getattr(keras.Model, target)

        def patched(self, filepath, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == nth:
                crash_while_writing(str(filepath))
            return original(self, filepath, *args, **kwargs)

        setattr(keras.Model, target, patched)
    elif target == "batch":
        original = training.ThroughputMeter.on_train_batch_end

        def patched(self, batch, logs=None):
            calls["n"] += 1
            if calls["n"] == nth:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self, batch, logs)

        training.ThroughputMeter.on_train_batch_end = patched
    from keras_densenet.cli import main
    sys.exit(main(sys.argv[3:]))
    """
)


def _cli(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "keras_densenet", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _epochs_logged(out):
    with open(os.path.join(out, "history.csv"), newline="") as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def _kill_from_outside_after_epoch(out, epoch):
    proc = subprocess.Popen(
        [sys.executable, "-m", "keras_densenet", *TRAIN_ARGS, "--out", out],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    meta = os.path.join(out, "backup", "training_metadata.json")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(meta):
            with open(meta) as f:
                if json.load(f)["epoch"] >= epoch:
                    break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.reliability("faults")
@pytest.mark.parametrize(
    ("point", "target", "nth"),
    [
        ("first_epoch", "batch", 6),  # SIGKILL in the middle of epoch 1 (12 steps)
        ("model_checkpoint_write", "save", 3),  # SIGKILL half-way through writing a .keras file
        ("backup_write", "save_weights", 2),  # SIGKILL half-way through the BackupAndRestore state
        ("between_epochs", "outside", 2),  # SIGKILL from outside after two epochs
    ],
)
def test_sigkill_then_resume_finishes_the_run(tmp_path, point, target, nth):
    out = str(tmp_path / point)
    if target == "outside":
        _kill_from_outside_after_epoch(out, nth)
    else:
        crashed = subprocess.run(
            [sys.executable, "-c", CRASHING, target, str(nth), *TRAIN_ARGS, "--out", out],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    # The resume runs the command in this process (what `keras-densenet train` runs,
    # less the seconds of importing TensorFlow again); the crash above was real.
    assert main([*TRAIN_ARGS, "--out", out, "--resume"]) == 0
    assert _epochs_logged(out) == [0, 1, 2, 3]  # one continuous history
    with open(os.path.join(out, "summary.json")) as f:
        assert json.load(f)["epochs"] == 4  # same as an uninterrupted run
    for name in ("best.keras", "last.keras"):
        load_model(os.path.join(out, name))
    # No epoch lost or trained twice: the optimizer took exactly 4 epochs x 12 steps,
    # as an uninterrupted run does (an epoch repeated on resume would show 60).
    last = load_model(os.path.join(out, "last.keras"))
    assert int(last.optimizer.iterations) == 4 * 12
    # Whatever was half-written lies under a temporary name that nothing loads.
    leftovers = [n for n in os.listdir(out) if n.endswith(".keras") and not n.startswith(".tmp-")]
    assert sorted(leftovers) == ["best.keras", "last.keras"]


# Runs the CLI with every transition layer asking TensorFlow's allocator for a
# 128 TiB tensor in the training step: a real allocation failure (the CPU allocator
# refuses anything over the machine's memory), at the same point on every machine.
# (Capping the process with RLIMIT_AS fails at a point that varies from run to run,
# and some of those points crash TensorFlow itself.)
NEEDS_128_TIB = textwrap.dedent(
    """
    import sys
    import tensorflow as tf
    from keras_densenet import layers
    call = layers.TransitionLayer.call

    def call_needing_128_tib(self, inputs, training=None):
        huge = tf.random.uniform([2**45])
        return call(self, inputs, training=training) + 0.0 * tf.reduce_max(huge)

    layers.TransitionLayer.call = call_needing_128_tib
    from keras_densenet.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.mark.reliability("faults")
def test_out_of_memory_suggests_remedies(tmp_path):
    out = tmp_path / "oom"
    args = ["train", "--depth", "10", "--growth-rate", "4", "--batch-size", "48"]
    args += ["--epochs", "1", "--steps-per-epoch", "1", "--quiet", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, "-c", NEEDS_128_TIB, *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "keras-densenet train: Out of memory at batch size 48: try --memory-efficient, a "
        "smaller --batch-size, or --precision mixed_bfloat16/mixed_float16."
    )
    assert "Traceback" not in proc.stderr
    # Nothing half-written: no epoch finished, so no model, and nothing temporary.
    names = os.listdir(out)
    assert not [n for n in names if n.endswith(".keras") or n.startswith(".tmp")], names


@pytest.mark.reliability("bad_input")
def test_truncated_and_corrupted_model_files(tmp_path):
    model = build_densenet(
        blocks=(1, 1), growth_rate=4, num_init_features=8, stem="cifar", input_shape=(16, 16, 1)
    )
    good = tmp_path / "good.keras"
    model.save(good)
    data = good.read_bytes()
    cases = {
        "truncated.keras": data[: len(data) // 2],
        "garbage.keras": b"this is not a zip file",
        "empty.keras": b"",
    }
    for name, payload in cases.items():
        path = tmp_path / name
        path.write_bytes(payload)
        with pytest.raises(ValueError, match=name.replace(".", r"\.")):
            load_model(path)
        proc = _cli("evaluate", str(path))
        assert proc.returncode == 2 and name in proc.stderr.strip().splitlines()[-1]


@pytest.mark.reliability("bad_input")
def test_truncated_weights_files(tmp_path):
    kwargs = {
        "blocks": (1, 1),
        "growth_rate": 4,
        "num_init_features": 8,
        "stem": "cifar",
        "input_shape": (16, 16, 1),
    }
    source = build_densenet(**kwargs)
    path = tmp_path / "w.weights.h5"
    source.save_weights(path)
    truncated = tmp_path / "cut.weights.h5"
    truncated.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ValueError, match=r"cut\.weights\.h5"):
        build_densenet(**kwargs, weights=str(truncated))
    legacy = tmp_path / "legacy.h5"
    with h5py.File(legacy, "w") as f:
        f.attrs["layer_names"] = [b"conv1_conv"]
        f.create_group("conv1_conv").attrs["weight_names"] = [b"kernel:0"]
        f["conv1_conv"].create_dataset("kernel:0", data=np.zeros((3, 3, 1, 8)))
    with pytest.raises(ValueError, match="Architecture mismatch"):
        build_densenet(**kwargs, weights=str(legacy))


@pytest.mark.reliability("security")
def test_lambda_model_refused_unless_opted_in(tmp_path):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs))
    path = tmp_path / "lambda.keras"
    model.save(path)
    with pytest.raises(ValueError, match="Refusing to load"):
        load_model(path)
    loaded = load_model(path, allow_unsafe=True)
    np.testing.assert_allclose(loaded.predict(np.ones((1, 4)), verbose=0), 2.0)
    proc = _cli("evaluate", str(path))
    assert proc.returncode == 2 and "Refusing to load" in proc.stderr


@pytest.mark.reliability("security")
def test_no_command_runs_a_shell_or_loads_unsafely(tmp_path, monkeypatch):
    """Train, evaluate, export and predict end to end with shells and unsafe loading trapped."""
    import subprocess as sp

    import keras as _keras

    from keras_densenet.cli import main

    calls = []
    real_popen_init = sp.Popen.__init__

    def popen(self, args, *rest, **kwargs):
        calls.append(("Popen", kwargs.get("shell", False)))
        assert not kwargs.get("shell"), f"a shell was asked for: {args!r}"
        return real_popen_init(self, args, *rest, **kwargs)

    def no_shell(*args, **kwargs):
        raise AssertionError(f"os.system/os.popen called with {args!r}")

    real_load = _keras.saving.load_model

    def safe_load(*args, **kwargs):
        assert kwargs.get("safe_mode", True) is True, "a model was loaded with safe_mode=False"
        calls.append(("load_model", True))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(sp.Popen, "__init__", popen)
    monkeypatch.setattr(os, "system", no_shell)
    monkeypatch.setattr(os, "popen", no_shell)
    monkeypatch.setattr(_keras.saving, "load_model", safe_load)
    run = str(tmp_path / "run")
    served = str(tmp_path / "served")
    assert main([*TINY_RUN, "--epochs", "1", "--out", run]) == 0
    assert main(["evaluate", run]) == 0
    assert main(["export", run, "--out", served]) == 0
    assert main(["predict", served, "--sample", "1"]) == 0
    assert ("load_model", True) in calls  # the trap was on the path taken


@pytest.mark.reliability("security")
def test_nothing_downloads_implicitly(tmp_path, monkeypatch):
    import socket

    attempts = []

    def refuse(self, address, *args):
        attempts.append(address)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    from keras_densenet.training import train

    train(
        {
            "preset": "densenet_bc_100_12",
            "depth": 10,
            "growth_rate": 4,
            "epochs": 1,
            "steps_per_epoch": 2,
            "bn_recalibrate_steps": 1,
            "out": str(tmp_path / "offline"),
            "verbose": 0,
        }
    )
    build_densenet("densenet121")
    assert attempts == []


@pytest.mark.reliability("security")
def test_paths_are_not_interpolated_into_shell_commands(tmp_path, capsys):
    marker = tmp_path / "pwned"
    out = str(tmp_path / f"run$(touch {marker});`touch {marker}`")
    proc = run_command(
        capsys,
        "train",
        "--preset",
        "densenet_bc_100_12",
        "--depth",
        "10",
        "--growth-rate",
        "4",
        "--epochs",
        "1",
        "--steps-per-epoch",
        "1",
        "--bn-recalibrate-steps",
        "1",
        "--quiet",
        "--out",
        out,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not marker.exists()
    assert os.path.exists(os.path.join(out, "best.keras"))  # the odd name is just a name


@pytest.mark.reliability("determinism")
def test_seeded_deterministic_runs_give_identical_weights(tmp_path):
    args = [
        "train",
        "--preset",
        "densenet_bc_100_12",
        "--depth",
        "10",
        "--growth-rate",
        "4",
        "--epochs",
        "1",
        "--steps-per-epoch",
        "8",
        "--batch-size",
        "16",
        "--bn-recalibrate-steps",
        "2",
        "--seed",
        "7",
        "--deterministic",
        "--quiet",
    ]
    weights = []
    for run in ("a", "b"):
        proc = _cli(*args, "--out", str(tmp_path / run))
        assert proc.returncode == 0, proc.stderr[-2000:]
        weights.append(load_model(tmp_path / run / "last.keras").get_weights())
    for a, b in zip(*weights, strict=True):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------
# Runs that must not be wrecked: locks, splits checked up front, resume errors.

TINY_RUN = [
    "train",
    "--preset",
    "densenet_bc_100_12",
    "--depth",
    "10",
    "--growth-rate",
    "4",
    "--steps-per-epoch",
    "3",
    "--batch-size",
    "16",
    "--bn-recalibrate-steps",
    "2",
    "--seed",
    "0",
    "--quiet",
]


def _one_line_error(proc, *needles):
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 2-epoch tiny run; tests copy it before changing anything."""
    out = str(tmp_path_factory.mktemp("runs") / "done")
    proc = _cli(*TINY_RUN, "--epochs", "2", "--out", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def _copy(run, tmp_path):
    import shutil

    target = str(tmp_path / "run")
    shutil.copytree(run, target)
    return target


def _snapshot(directory):
    return {
        os.path.relpath(os.path.join(root, n), directory): os.stat(
            os.path.join(root, n)
        ).st_mtime_ns
        for root, _, names in os.walk(directory)
        for n in names
        if n != ".lock"
    }


@pytest.mark.reliability("faults")
def test_second_process_on_the_same_run_directory_is_refused(tmp_path):
    out = str(tmp_path / "same")
    first = subprocess.Popen(
        [sys.executable, "-m", "keras_densenet", *TINY_RUN, "--epochs", "3", "--out", out],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not os.path.exists(os.path.join(out, "config.json")):
        time.sleep(0.05)
    assert first.poll() is None, "the first run ended before the second could start"
    second = _cli(*TINY_RUN, "--epochs", "3", "--resume", "--out", out)
    _one_line_error(second, "in use by process", str(first.pid))
    assert first.wait(timeout=600) == 0, first.stderr.read()[-2000:]
    with open(os.path.join(out, "history.csv")) as f:
        lines = f.read().splitlines()
    assert lines[0].startswith("epoch,") and [line.split(",")[0] for line in lines[1:]] == [
        "0",
        "1",
        "2",
    ]


def _write_folder(root, classes, per_class=4, size=(12, 12)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in classes:
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(os.path.join(root, name, f"{i}.png"))


@pytest.mark.reliability("bad_input")
def test_image_folders_are_checked_before_the_first_step(tmp_path, capsys):
    flat = tmp_path / "flat"
    _write_folder(flat, ["cat", "dog"])
    args = [*TINY_RUN, "--epochs", "1", "--image-size", "16,16", "--validation-fraction", "0"]
    _one_line_error(_cli(*args, "--dataset", str(flat), "--out", str(tmp_path / "a")), "test")
    assert not (tmp_path / "a" / "config.json").exists()

    single = tmp_path / "single"
    _write_folder(single / "train", ["cat"])
    _write_folder(single / "test", ["cat"])
    _one_line_error(
        _cli(*args, "--dataset", str(single), "--out", str(tmp_path / "b")), "at least 2"
    )

    mixed = tmp_path / "mixed"
    _write_folder(mixed / "train", ["cat", "dog"])
    _write_folder(mixed / "test", ["cat", "fox"])
    _one_line_error(
        _cli(*args, "--dataset", str(mixed), "--out", str(tmp_path / "c")), "differ", "fox"
    )

    broken = tmp_path / "broken"
    _write_folder(broken / "train", ["cat", "dog"])
    _write_folder(broken / "test", ["cat", "dog"])
    (broken / "train" / "cat" / "empty.png").write_bytes(b"")
    (broken / "train" / "dog" / "notes.jpg").write_text("not an image")
    # Files are read by the loader, after TensorFlow is imported: in this process.
    _one_line_error(
        run_command(capsys, *args, "--dataset", str(broken), "--out", str(tmp_path / "d")),
        "empty.png",
        "--bad-images skip",
    )
    skipped = run_command(
        capsys,
        *args,
        "--dataset",
        str(broken),
        "--bad-images",
        "skip",
        "--out",
        str(tmp_path / "e"),
    )
    assert skipped.returncode == 0, skipped.stderr[-2000:]
    warned = [line for line in skipped.stderr.splitlines() if "Skipped" in line]
    assert len(warned) == 1  # one line, said once
    assert warned[0].startswith("keras-densenet train: warning: Skipped 2 of 10 files")
    small = tmp_path / "small"  # 8 training images: 10% of them is no image
    _write_folder(small / "train", ["cat", "dog"])
    _write_folder(small / "test", ["cat", "dog"])
    tiny = _cli(*args[:-2], "--dataset", str(small), "--out", str(tmp_path / "f"))
    _one_line_error(tiny, "--validation-fraction=0.1", "leaves no validation images")
    with open(tmp_path / "e" / "summary.json") as f:
        assert json.load(f)["class_names"] == ["cat", "dog"]


@pytest.mark.reliability("bad_input")
@pytest.mark.parametrize(
    ("damage", "needles"),
    [
        ("truncated_backup", ("latest.weights.h5", "truncated")),
        ("metadata_without_epoch", ("training_metadata.json", "epoch")),
        ("config_list", ("config.json", "JSON object")),
        ("config_garbage", ("config.json", "not valid JSON")),
        ("history_row", ("history.csv", "line 2")),
    ],
)
def test_damaged_run_files_are_named_on_resume(finished_run, tmp_path, damage, needles):
    out = _copy(finished_run, tmp_path)
    path = {
        "truncated_backup": "backup/latest.weights.h5",
        "metadata_without_epoch": "backup/training_metadata.json",
        "config_list": "config.json",
        "config_garbage": "config.json",
        "history_row": "history.csv",
    }[damage]
    full = os.path.join(out, path)
    content = {
        "metadata_without_epoch": b'{"batch": 0}',
        "config_list": b"[]",
        "config_garbage": b"\x00garbage",
    }.get(damage)
    if damage == "truncated_backup":
        with open(full, "rb") as f:
            content = f.read()[:500]
    elif damage == "history_row":
        with open(full, "rb") as f:
            lines = f.read().split(b"\n")
        content = b"\n".join([lines[0], b"0,zero,1,2,3", *lines[2:]])
    with open(full, "wb") as f:
        f.write(content)
    _one_line_error(_cli(*TINY_RUN, "--epochs", "3", "--resume", "--out", out), *needles)


@pytest.mark.reliability("faults")
def test_resume_of_a_complete_run_changes_nothing(finished_run, tmp_path):
    out = _copy(finished_run, tmp_path)
    before = _snapshot(out)
    done = _cli(*TINY_RUN, "--epochs", "2", "--resume", "--out", out)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "already complete (2 epochs)" in done.stdout
    shorter = _cli(*TINY_RUN, "--epochs", "1", "--resume", "--out", out)
    _one_line_error(shorter, "already trained 2 epochs", "--epochs", "nothing was changed")
    assert _snapshot(out) == before
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["epochs"] == 2


@pytest.mark.reliability("faults")
def test_a_moved_run_resumes_and_trailing_slashes_do_not_matter(finished_run, tmp_path):
    out = _copy(finished_run, tmp_path)
    assert main([*TINY_RUN, "--epochs", "3", "--resume", "--out", out + "/"]) == 0
    assert _epochs_logged(out) == [0, 1, 2]


@pytest.mark.reliability("faults")
def test_nan_in_the_first_epoch_names_no_missing_file(tmp_path, capsys):
    out = str(tmp_path / "nan")
    proc = run_command(capsys, *TINY_RUN, "--epochs", "1", "--learning-rate", "1e30", "--out", out)
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "NaN" in last and "No epoch finished" in last
    assert not os.path.exists(os.path.join(out, "last.keras"))


@pytest.mark.reliability("bad_input")
def test_evaluate_checks_its_output_path_before_working(finished_run, tmp_path):
    target = tmp_path / "taken"
    target.write_text("a file, not a directory")
    # The data is not even looked up: the output path fails first.
    proc = _cli("evaluate", finished_run, "--out", str(target), "--dataset", "no_such_data")
    _one_line_error(proc, str(target), "not a directory")
    assert target.read_text() == "a file, not a directory"


def test_a_partial_selection_never_writes_the_reliability_report(tmp_path):
    # Every reliability case of one file runs and holds: still not the figures.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    report = tmp_path / "RELIABILITY.md"
    options = ["-q", "-p", "no:cacheprovider", "-o", "addopts=", "-m", "reliability"]
    options += ["--reliability-report", str(report), "tests/test_images.py"]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", *options],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0 and " passed" in proc.stdout, proc.stdout[-2000:]
    assert not report.exists()


def test_the_report_is_written_only_for_every_reliability_case(tmp_path):
    from conftest import _reliability_report_path

    tests_dir = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(tests_dir)

    class Config:
        """The options pytest parsed (only what the check reads)."""

        def __init__(self, args, **options):
            self.args = args
            self.invocation_params = type("Params", (), {"dir": root})()
            self.options = {
                "--reliability-report": "R.md",
                "markexpr": "reliability",
                "keyword": "",
                "deselect": None,
                "maxfail": 0,
                "lf": False,
                "stepwise": False,
                "ignore": None,
                "ignore_glob": None,
                **options,
            }

        def getoption(self, name, default=None):
            return self.options.get(name, default)

    assert _reliability_report_path(Config(["tests"])) == "R.md"
    assert _reliability_report_path(Config([tests_dir])) == "R.md"
    refused = [
        Config(["tests"], **{"--reliability-report": None}),
        Config(["tests"], markexpr="reliability and not slow"),
        Config(["tests"], keyword="resume"),
        Config(["tests"], deselect=["tests/test_cli.py::test_x"]),
        Config(["tests"], maxfail=1),
        Config(["tests"], lf=True),
        Config(["tests"], stepwise=True),
        Config(["tests"], ignore=["tests/test_cli.py"]),
        Config(["tests"], ignore_glob=["*cli*"]),
        Config(["tests/test_cli.py"]),
        Config(["tests/test_cli.py::test_x"]),
        Config(["tests", "tests/test_cli.py"]),
    ]
    assert [_reliability_report_path(config) for config in refused] == [None] * len(refused)
    worker = Config(["tests"])
    worker.workerinput = {"workerid": "gw0"}  # pytest-xdist's mark of a worker
    assert _reliability_report_path(worker) is None
