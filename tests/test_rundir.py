"""The run directory: lock, history, config and backup files read back with clear errors."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap
import zipfile

import h5py
import numpy as np
import pytest
from conftest import c_locale_env

from keras_densenet import _io, rundir

HEADER = "epoch,accuracy,loss,val_accuracy,val_loss\n"


def _row(epoch: int) -> str:
    return f"{epoch},0.{epoch + 1},1.{epoch},0.{epoch + 2},1.{epoch + 1}\n"


HOLDER = textwrap.dedent(
    """
    import sys, time
    sys.argv[0] = "keras-densenet"  # as the command does: no Keras import
    from keras_densenet import rundir
    with rundir.lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(60)
    """
)


def _archive(path, config):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", json.dumps(config))
    return path


def test_model_file_is_checked_without_loading(tmp_path, monkeypatch):
    lam = {"class_name": "__lambda__", "config": {"code": "..."}}
    plain = {"class_name": "Functional", "config": {"layers": [{"class_name": "Dense"}]}}
    plain_path = _archive(tmp_path / "plain.keras", plain)
    assert rundir.check_model_file(plain_path) == str(plain_path)
    # Keras marks a serialized lambda wherever it sits: a Lambda layer's function
    # or output_shape, or any config value.
    for where, config in {
        "function": {"layers": [{"class_name": "Lambda", "config": {"function": lam}}]},
        "output_shape": {"layers": [{"config": {"function": "f", "output_shape": lam}}]},
        "list": {"layers": [[{"nested": [lam]}]]},
    }.items():
        path = _archive(tmp_path / f"{where}.keras", {"config": config})
        with pytest.raises(ValueError, match=rf"{where}\.keras.*allow_unsafe"):
            rundir.check_model_file(path)
        assert rundir.check_model_file(path, allow_unsafe=True) == str(path)
    # A lambda loss is in the top-level compile_config, which a load with
    # compile=False never reads: Keras loads such a file in safe mode, so do we.
    compiled = _archive(tmp_path / "loss.keras", {**plain, "compile_config": {"loss": lam}})
    assert rundir.check_model_file(compiled) == str(compiled)
    # Nesting deeper than Python's recursion limit is refused, not a traceback.
    deep_path = tmp_path / "deep.keras"
    with zipfile.ZipFile(deep_path, "w") as archive:
        archive.writestr("config.json", '{"config": ' * 50_000 + "{}" + "}" * 50_000)
    with pytest.raises(ValueError, match=r"deep\.keras.*truncated or corrupted"):
        rundir.check_model_file(deep_path)
    with zipfile.ZipFile(tmp_path / "no_config.keras", "w") as archive:
        archive.writestr("model.weights.h5", b"")
    for name, text in (("bad_json.keras", "{not json"), ("list.json.keras", "[]")):
        with zipfile.ZipFile(tmp_path / name, "w") as archive:
            archive.writestr("config.json", text)
    (tmp_path / "half.keras").write_bytes(plain_path.read_bytes()[:30])
    for name in ("no_config.keras", "bad_json.keras", "list.json.keras", "half.keras"):
        with pytest.raises(ValueError, match=rf"{re.escape(name)}.*truncated or corrupted"):
            rundir.check_model_file(tmp_path / name)
    # A config that would decompress to more than the cap is refused unread.
    with zipfile.ZipFile(tmp_path / "bomb.keras", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("config.json", "{" + " " * 5000 + "}")
    monkeypatch.setattr(rundir, "MAX_CONFIG_BYTES", 4096)
    with pytest.raises(ValueError, match=r"bomb\.keras.*5,002 bytes uncompressed"):
        rundir.check_model_file(tmp_path / "bomb.keras")


def test_keras_safe_mode_still_refuses_when_the_early_check_is_skipped(tmp_path, monkeypatch):
    import keras

    inputs = keras.Input((4,))
    outputs = keras.layers.Lambda(lambda x: x * 2.0)(inputs)
    path = tmp_path / "code.keras"
    keras.Model(inputs, outputs).save(path)
    with pytest.raises(ValueError, match="contains code"):
        rundir.check_model_file(path)
    monkeypatch.setattr(rundir, "_carries_lambda", lambda config: False)
    rundir.check_model_file(path)  # the early check is blind now
    with pytest.raises(ValueError) as err:
        rundir.load_model(path)
    assert str(err.value) == (
        f"Refusing to load {str(path)!r}: it contains code (e.g. a Lambda layer) that would run "
        "on load; pass `allow_unsafe=True` only for a file you trust."
    )
    assert "safe_mode" in str(err.value.__cause__)  # Keras' own refusal, kept as the cause
    model = rundir.load_model(path, allow_unsafe=True)
    assert float(model(np.ones((1, 4), "float32"))[0, 0]) == 2.0


def test_writable_dir_check_leaves_the_disk_as_it_was(tmp_path):
    target = tmp_path / "a" / "b" / "c"
    assert rundir.ensure_writable_dir(target, keep=False) == str(target)
    assert os.listdir(tmp_path) == []
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    for existing in ("kept", "empty"):
        rundir.ensure_writable_dir(tmp_path / existing, keep=False)
    assert os.listdir(tmp_path / "kept") == ["file"] and os.listdir(tmp_path / "empty") == []
    # ".." and symlinks are resolved as the system resolves them.
    os.symlink(tmp_path / "kept", tmp_path / "link")
    rundir.ensure_writable_dir(tmp_path / "link" / "new" / ".." / "x", keep=False)
    rundir.ensure_writable_dir(tmp_path / "nothing" / ".." / "x", keep=False)
    with pytest.raises(ValueError, match=r"`out`.*not a directory"):
        rundir.ensure_writable_dir(tmp_path / "kept" / "file", keep=False)
    with pytest.raises(ValueError, match=r"`out`.*not writable"):
        rundir.ensure_writable_dir(tmp_path / "kept" / "file" / "below", keep=False)
    with pytest.raises(ValueError, match=r"`out`.*not writable"):
        rundir.ensure_writable_dir(tmp_path / "link" / "file" / "below", keep=False)
    assert sorted(os.listdir(tmp_path)) == ["empty", "kept", "link"]
    assert os.listdir(tmp_path / "kept") == ["file"]
    assert rundir.ensure_writable_dir(target) == str(target) and target.is_dir()
    assert os.listdir(target) == []


def test_writable_dir_checks_side_by_side_do_not_disturb_each_other(tmp_path):
    # Each check writes its own uniquely named file: many at once never trip
    # over each other's, whether they create the directory or only look.
    script = textwrap.dedent(
        """
        import sys
        sys.argv[0] = "keras-densenet"  # as the command does: no Keras import
        from keras_densenet import rundir
        for i in range(200):
            rundir.ensure_writable_dir(sys.argv[1], keep=i % 2 == 0)
        """
    )
    target = str(tmp_path / "shared" / "out")
    procs = [
        subprocess.Popen([sys.executable, "-c", script, target], stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    for proc in procs:
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr[-2000:]
    assert os.listdir(target) == []


@pytest.mark.reliability("faults")
def test_lock_keeps_a_second_process_out_and_dies_with_its_holder(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        in_use = pytest.raises(rundir.DirectoryInUseError, match=f"process {holder.pid}")
        with in_use, rundir.lock(tmp_path):
            pass
    finally:
        holder.kill()  # SIGKILL: the OS releases the lock
        holder.wait()
    with rundir.lock(tmp_path), open(tmp_path / rundir.LOCK) as f:
        assert f.read().strip() == str(os.getpid())


def test_history_with_repeated_headers_and_epochs_reads_one_row_per_epoch(tmp_path):
    """What two processes appending at once used to leave behind."""
    path = tmp_path / "history.csv"
    path.write_text(HEADER + _row(0) + HEADER + _row(0) + _row(1) + _row(1) + _row(2))
    history = rundir.read_history(path)
    assert history["epoch"] == [0.0, 1.0, 2.0]
    assert history["accuracy"] == [0.1, 0.2, 0.3]
    rundir.trim_history(path, epochs_done=2)  # and a resumed run repairs the file
    assert path.read_text().splitlines() == [
        HEADER.strip(),
        "0,0.1,1.0,0.2,1.1",
        "1,0.2,1.1,0.3,1.2",
    ]


@pytest.mark.reliability("bad_input")
@pytest.mark.parametrize(
    ("content", "match"),
    [
        (HEADER + "0,0.1,nan-ish,0.2,1.0\n", "line 2"),
        (HEADER + "0,0.1\n", "line 2"),
        ("step,loss\n0,1\n", "no `epoch` column"),
        (HEADER + "1.5,0.1,1,0.2,1\n", "line 2"),
    ],
)
def test_bad_history_rows_are_named_with_their_line(tmp_path, content, match):
    path = tmp_path / "history.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=match) as err:
        rundir.read_history(path)
    assert str(path) in str(err.value)


@pytest.mark.reliability("bad_input")
@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        (rundir.CONFIG, "[]", "JSON object"),
        (rundir.CONFIG, "{not json", "not valid JSON"),
        (rundir.CONFIG, b"\xff\xfe{}", "not UTF-8"),
        (rundir.SUMMARY, "[1, 2]", "JSON object"),
    ],
)
def test_corrupted_json_files_are_named(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    reader = rundir.read_config if name == rundir.CONFIG else rundir.read_summary
    with pytest.raises(ValueError, match=match) as err:
        reader(tmp_path)
    assert str(path) in str(err.value)


@pytest.mark.reliability("bad_input")
@pytest.mark.parametrize(
    ("metadata", "weights", "match"),
    [
        ({"batch": 0}, None, "must hold"),
        ({"epoch": "3"}, None, "must hold"),
        ({"epoch": -1}, None, "must hold"),
        ({"epoch": 2}, "missing", "is missing"),
        ({"epoch": 2}, "truncated", "truncated or corrupted"),
    ],
)
def test_corrupted_backups_are_named(tmp_path, metadata, weights, match):
    backup = tmp_path / rundir.BACKUP
    backup.mkdir()
    (backup / rundir.BACKUP_METADATA).write_text(json.dumps(metadata))
    weights_path = backup / rundir.BACKUP_WEIGHTS
    if weights == "truncated":
        with h5py.File(weights_path, "w") as f:
            f["w"] = np.zeros(1000)
        weights_path.write_bytes(weights_path.read_bytes()[:300])
    with pytest.raises(ValueError, match=match) as err:
        rundir.epochs_done(tmp_path)
    assert rundir.BACKUP in str(err.value)


def test_epochs_done_reads_a_good_backup(tmp_path):
    backup = tmp_path / rundir.BACKUP
    backup.mkdir()
    assert rundir.epochs_done(tmp_path) == 0
    with h5py.File(backup / rundir.BACKUP_WEIGHTS, "w") as f:
        f["w"] = np.zeros(3)
    (backup / rundir.BACKUP_METADATA).write_text('{"epoch": 4, "batch": 0}')
    assert rundir.epochs_done(tmp_path) == 4


def test_option_changes_ignores_what_may_change():
    previous = {"epochs": 3, "growth_rate": 12, "out": "runs/a"}
    now = {"epochs": 6, "growth_rate": 24, "out": "runs/a/", "seed": 1}
    changes = rundir.option_changes(previous, now, {"epochs", "out"})
    assert changes == {"growth_rate": (12, 24), "seed": (None, 1)}


def test_model_file_and_class_names(tmp_path):
    (tmp_path / "last.keras").write_bytes(b"")
    assert rundir.model_file(tmp_path) == str(tmp_path / "last.keras")
    (tmp_path / "best.keras").write_bytes(b"")
    assert rundir.model_file(tmp_path) == str(tmp_path / "best.keras")
    assert rundir.class_names(tmp_path) is None
    _io.write_json(tmp_path / rundir.SUMMARY, {"class_names": ["cat", "dog"]})
    assert rundir.class_names(tmp_path / "best.keras") == ["cat", "dog"]
    with pytest.raises(ValueError, match="not found"):
        rundir.model_file(tmp_path / "nope.keras")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="not a training run directory"):
        rundir.model_file(empty)


@pytest.mark.reliability("faults")
def test_atomic_write_that_fails_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "model_int8.tflite"
    _io.write_bytes(path, b"old")
    with pytest.raises(RuntimeError, match="disk"), _io.atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"half of the new")
        raise RuntimeError("disk full")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model_int8.tflite"]


def test_atomic_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        _io.write_bytes(tmp_path / "a.tflite", b"x")
        _io.write_json(tmp_path / "b.json", {})
    finally:
        os.umask(old)
    for name in ("a.tflite", "b.json"):
        assert oct(os.stat(tmp_path / name).st_mode & 0o777) == "0o644"


def test_killed_atomic_write_leaves_the_old_file(tmp_path):
    """SIGKILL between writing the temporary and renaming it."""
    path = tmp_path / "summary.json"
    _io.write_json(path, {"old": True})
    script = textwrap.dedent(
        f"""
        import os, signal
        from keras_densenet import _io
        with _io.atomic_path({str(path)!r}) as tmp:
            open(tmp, "w").write('{{"new": tr')
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], timeout=120)
    assert proc.returncode == -9
    assert json.loads(path.read_text()) == {"old": True}


def test_is_run_dir(tmp_path):
    assert not rundir.is_run_dir(tmp_path)  # an empty directory
    assert not rundir.is_run_dir(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("x")
    assert not rundir.is_run_dir(tmp_path) and not rundir.is_run_dir(tmp_path / "notes.txt")
    for name in (rundir.CONFIG, rundir.BEST, rundir.LAST):
        run = tmp_path / name.replace(".", "_")
        run.mkdir()
        (run / name).write_text("{}")
        assert rundir.is_run_dir(run) and rundir.is_run_dir(str(run))
    os.mkdir(tmp_path / "odd")
    os.mkdir(tmp_path / "odd" / rundir.CONFIG)  # a directory by that name is no run file
    assert not rundir.is_run_dir(tmp_path / "odd")


def test_messages_name_the_file_exactly(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError) as err:
        rundir.model_file(empty)
    assert str(err.value) == (
        f"Directory {str(empty)!r} is not a training run directory: it has none of "
        "best.keras, last.keras."
    )
    (tmp_path / "model.h5").write_bytes(b"")
    with pytest.raises(ValueError) as err:
        rundir.model_file(tmp_path / "model.h5")
    h5 = str(tmp_path / "model.h5")
    assert str(err.value) == f"Expected a Keras `.keras` model file or a run directory, got {h5!r}."
    with pytest.raises(ValueError) as err:
        rundir.read_history(tmp_path / "missing.csv")
    assert str(err.value) == f"Training history not found: {str(tmp_path / 'missing.csv')!r}."
    for reader, name, label in (
        (rundir.read_config, rundir.CONFIG, "run config"),
        (rundir.read_summary, rundir.SUMMARY, "run summary"),
    ):
        (tmp_path / name).write_text("{oops")
        with pytest.raises(ValueError, match=rf"^The {label} "):
            reader(tmp_path)
    (tmp_path / rundir.CONFIG).write_text("[1]")
    with pytest.raises(ValueError) as err:
        rundir.read_config(tmp_path)
    assert str(err.value) == (
        f"The run config {str(tmp_path / rundir.CONFIG)!r} must hold a JSON object of training "
        "options, got list: it is corrupted; restore it or start a new run."
    )


def test_class_names_are_read_from_the_run_or_beside_the_model(tmp_path):
    _io.write_json(tmp_path / rundir.SUMMARY, {"class_names": ["cat", "dog"]})
    assert rundir.class_names(tmp_path) == ["cat", "dog"]
    assert rundir.class_names(tmp_path / "best.keras") == ["cat", "dog"]
    for bad in ("cat", ["cat", 1]):
        _io.write_json(tmp_path / rundir.SUMMARY, {"class_names": bad})
        with pytest.raises(ValueError) as err:
            rundir.class_names(tmp_path)
        assert str(err.value) == (
            f"`class_names` in {str(tmp_path / rundir.SUMMARY)!r} must be a list of strings."
        )
    _io.write_json(tmp_path / rundir.SUMMARY, {"epochs": 1})
    assert rundir.class_names(tmp_path) is None


def test_option_changes_report_only_what_differs():
    assert rundir.option_changes({"a": 1, "b": 2}, {"a": 1, "b": 3}, set()) == {"b": (2, 3)}
    assert rundir.option_changes({"a": 1}, {"a": 1}, frozenset()) == {}


def test_epochs_done_reads_the_backup_exactly(tmp_path):
    assert rundir.epochs_done(tmp_path) == 0  # no backup
    backup = tmp_path / rundir.BACKUP
    backup.mkdir()
    metadata = backup / rundir.BACKUP_METADATA
    metadata.write_text('{"epoch": 0}')
    assert rundir.epochs_done(tmp_path) == 0  # no weights needed for no epoch
    for text in ("[1]", '{"epoch": true}', '{"epoch": 1.0}'):
        metadata.write_text(text)
        with pytest.raises(ValueError) as err:
            rundir.epochs_done(tmp_path)
        assert str(err.value) == (
            f'The backup metadata {str(metadata)!r} must hold {{"epoch": <epochs done>}}, got '
            f"{json.loads(text)!r}: it is corrupted; remove the backup/ directory to restart "
            "the run from scratch."
        )
    metadata.write_text("{")
    with pytest.raises(ValueError, match=r"^The backup metadata "):
        rundir.epochs_done(tmp_path)
    metadata.write_text('{"epoch": 1}')
    with pytest.raises(ValueError) as err:
        rundir.epochs_done(tmp_path)
    weights = str(backup / rundir.BACKUP_WEIGHTS)
    assert str(err.value) == (
        f"The backup weights file {weights!r} is missing: the run cannot resume from it."
    )
    # Every object is visited: a broken header in the last group is found.
    import h5py

    with h5py.File(weights, "w") as f:
        f.create_group("a").create_dataset("w", data=np.ones(3))
        address = h5py.h5o.get_info(f.create_group("z").id).addr
    assert rundir.epochs_done(tmp_path) == 1
    data = bytearray(pathlib.Path(weights).read_bytes())
    data[address : address + 16] = b"\xff" * 16
    pathlib.Path(weights).write_bytes(bytes(data))
    with pytest.raises(ValueError) as err:
        rundir.epochs_done(tmp_path)
    message = str(err.value)  # (the middle is HDF5's own words, which vary by version)
    assert message.startswith(f"The backup weights file {weights!r} is truncated or corrupted (")
    assert message.endswith("); remove the backup/ directory to restart the run from scratch.")
    assert "object header" in message.lower()


def test_history_cells_and_rewrites_exactly(tmp_path):
    path = tmp_path / rundir.HISTORY
    path.write_text("epoch,loss,val_loss\n0,1.5,\n1,1.25,0.75\n")
    history = rundir.read_history(tmp_path)  # a run directory stands for its history
    assert history["epoch"] == [0.0, 1.0] and history["loss"] == [1.5, 1.25]
    assert np.isnan(history["val_loss"][0]) and history["val_loss"][1] == 0.75
    rundir.trim_history(path, 1)
    assert path.read_bytes() == b"epoch,loss,val_loss\n0,1.5,\n"
    path.write_text("loss,epoch\n1.0,0\n")
    with pytest.raises(ValueError) as err:
        rundir.read_history(path)
    assert str(err.value) == (
        f"The training history {str(path)!r} is not a CSVLogger file (no `epoch` column "
        "first): it is corrupted; restore it or remove it."
    )
    for rows in ("0,x\n", "0,1.0,2.0\n"):  # not a number; a cell too many
        path.write_text("epoch,loss\n" + rows)
        with pytest.raises(ValueError) as err:
            rundir.read_history(path)
        assert str(err.value).endswith("; remove that line.")
    path.write_bytes(b"epoch,loss\n0,\xff\n")
    with pytest.raises(ValueError, match=r"^Cannot read the training history .*utf-8"):
        rundir.read_history(path)


def test_history_is_utf8_whatever_the_locale(tmp_path):
    path = tmp_path / rundir.HISTORY
    path.write_bytes("epoch,Ärmel_accuracy\n0,0.5\n".encode())
    expected = {"epoch": [0.0], "Ärmel_accuracy": [0.5]}
    assert rundir.read_history(path) == expected  # here (and mutmut sees the call)
    env = c_locale_env(rundir)
    code = (
        "import sys; sys.argv[0] = 'keras-densenet'\n"  # no Keras import
        f"from keras_densenet import rundir; print(ascii(rundir.read_history({str(path)!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ascii(expected)


def test_writable_dir_messages_and_an_existing_directory(tmp_path):
    assert rundir.ensure_writable_dir(tmp_path) == str(tmp_path)  # exists already
    assert rundir.ensure_writable_dir(tmp_path, keep=False) == str(tmp_path)
    (tmp_path / "file").write_text("x")
    below = str(tmp_path / "file" / "below")
    with pytest.raises(ValueError) as err:
        rundir.ensure_writable_dir(below, "out", keep=False)
    assert str(err.value) == f"`out` {below!r} is not writable: Not a directory."
    # /proc exists but takes no files, even for root: the probe must go there.
    for keep in (True, False):
        with pytest.raises(ValueError, match=r"^`out` '/proc' is not writable: "):
            rundir.ensure_writable_dir("/proc", keep=keep)
    with pytest.raises(ValueError, match=r"^`out` '/proc/kd/x' is not writable: "):
        rundir.ensure_writable_dir("/proc/kd/x", keep=False)


def test_model_files_load_compiled_or_not_and_name_other_failures(tmp_path):
    import keras

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    model.compile(optimizer="sgd", loss="mse")
    path = tmp_path / "m.keras"
    model.save(path)
    assert rundir.load_model(path).compiled
    assert not rundir.load_model(path, compile=False).compiled
    # A lambda model loads when allowed, through the early check and Keras alike.
    lam_inputs = keras.Input((4,))
    lam = keras.Model(lam_inputs, keras.layers.Lambda(lambda x: x + 1.0)(lam_inputs))
    lam.save(tmp_path / "lam.keras")
    assert (
        float(rundir.load_model(tmp_path / "lam.keras", allow_unsafe=True)(np.zeros((1, 4)))[0, 0])
        == 1.0
    )
    # A good config with broken weights is named as such, not as unsafe code.
    broken = tmp_path / "broken.keras"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(broken, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            target.writestr(item, data[:64] if item.filename.endswith(".h5") else data)
    with pytest.raises(ValueError) as err:
        rundir.load_model(broken)
    message = str(err.value)
    assert (
        message.startswith(f"Cannot load model {str(broken)!r}: ")
        and "contains code" not in message
    )
    assert message.split(": ")[1] != "NoneType"


def test_model_file_checks_spell_their_reasons(tmp_path, monkeypatch):
    path = tmp_path / "list.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", "[]")
    with pytest.raises(ValueError) as err:
        rundir.check_model_file(path)
    assert str(err.value) == (
        f"{str(path)!r} is not a valid .keras file (ValueError: its config.json is not a JSON "
        "object): truncated or corrupted."
    )
    exact = _archive(tmp_path / "exact.keras", {"config": {}})
    with zipfile.ZipFile(exact) as archive:
        monkeypatch.setattr(rundir, "MAX_CONFIG_BYTES", archive.getinfo("config.json").file_size)
    assert rundir.check_model_file(exact) == str(exact)  # at the cap is still fine

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(exact))

    monkeypatch.setattr(zipfile, "ZipFile", refuse)
    with pytest.raises(ValueError) as err:
        rundir.check_model_file(exact)
    assert str(err.value) == f"Cannot read model file {str(exact)!r}: Permission denied."


@pytest.mark.parametrize(
    ("policy", "kind"),
    [
        ("mixed_float16", "functional"),  # the models this package builds
        ("mixed_float16", "sequential"),  # the model's own dtype is in its config
        ("mixed_float16", "sequential-float32-layers"),  # mixed in the model's config only
        ("mixed_bfloat16", "functional"),
        ("float32", "functional"),
    ],
)
def test_a_model_loads_with_its_optimizer_state_under_any_policy(tmp_path, policy, kind):
    import warnings

    import keras

    assert keras.config.dtype_policy().name == "float32"
    keras.config.set_dtype_policy(policy)
    try:
        dense = keras.layers.Dense(3, dtype="float32" if "float32" in kind else None)
        layers = [dense, keras.layers.Activation("softmax", dtype="float32")]
        if kind.startswith("sequential"):
            model = keras.Sequential([keras.Input((4,)), *layers])
        else:
            inputs = keras.Input((4,))
            model = keras.Model(inputs, layers[1](layers[0](inputs)))
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
        model.fit(np.ones((8, 4)), np.zeros((8, 3)), batch_size=4, epochs=2, verbose=0)
        saved = [np.asarray(v) for v in model.optimizer.variables]
    finally:
        keras.config.set_dtype_policy("float32")
    model.save(tmp_path / "m.keras")

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Skipping variable loading for optimizer" is a failure
        loaded = rundir.load_model(tmp_path / "m.keras")
    assert keras.config.dtype_policy().name == "float32"  # the caller's policy is left alone
    assert loaded.dtype_policy.name == policy
    assert type(loaded.optimizer) is type(model.optimizer)
    assert int(loaded.optimizer.iterations) == 4
    restored = [np.asarray(v) for v in loaded.optimizer.variables]  # (paths differ in name)
    assert len(restored) == len(saved)
    for got, value in zip(restored, saved, strict=True):
        np.testing.assert_array_equal(got, value)
    # Without compiling, nothing about the optimizer is read and the policy is untouched:
    # the model is what Keras itself loads.
    plain = rundir.load_model(tmp_path / "m.keras", compile=False)
    assert not plain.compiled
    reference = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    assert plain.dtype_policy.name == reference.dtype_policy.name
    assert [layer.dtype_policy.name for layer in plain.layers] == [
        layer.dtype_policy.name for layer in reference.layers
    ]
    assert keras.config.dtype_policy().name == "float32"


def test_an_unused_run_directory_and_the_parents_made_for_it_are_removed(tmp_path):
    out = tmp_path / "a" / "b" / "run"
    top = rundir.first_missing(out)
    assert top == str(tmp_path / "a") and rundir.first_missing(tmp_path) is None
    out.mkdir(parents=True)
    (out / rundir.LOCK).write_text("123\n")
    assert rundir.remove_if_unused(out, up_to=top)
    assert not (tmp_path / "a").exists() and tmp_path.exists()
    # A directory with anything else in it is left as it is.
    out.mkdir(parents=True)
    (out / "config.json").write_text("{}")
    assert not rundir.remove_if_unused(out, up_to=top)
    assert (out / "config.json").exists()
    kept = tmp_path / "kept"
    (kept / "run").mkdir(parents=True)
    (kept / "other.txt").write_text("x")
    assert rundir.remove_if_unused(kept / "run", up_to=str(kept))
    assert (kept / "other.txt").exists()  # a parent with other files stays


@pytest.mark.reliability("data loss")
@pytest.mark.parametrize("left", [rundir.BACKUP, rundir.HISTORY, rundir.BEST, rundir.SUMMARY])
def test_a_new_run_is_refused_where_an_earlier_run_left_files_without_its_config(tmp_path, left):
    run = tmp_path / "run"
    run.mkdir()
    (run / left).mkdir() if left == rundir.BACKUP else (run / left).write_text("x")
    with pytest.raises(ValueError, match=rf"holds files of an earlier run \({left}\) but no"):
        rundir.check_new_run_dir(run)
    (run / "logs").mkdir()
    rundir.check_new_run_dir(tmp_path / "empty")  # a new or empty directory is fine


@pytest.mark.reliability("data loss")
def test_runs_and_searches_keep_to_their_own_directories(tmp_path):
    search = tmp_path / "search"
    search.mkdir()
    (search / rundir.TUNING_MARKER).write_text("{}")
    (search / rundir.BEST).write_text("the tuner's best model")
    with pytest.raises(ValueError, match="is a tuning directory"):
        rundir.check_new_run_dir(search)
    rundir.check_tuning_dir(search)  # its own search: resumable
    run = tmp_path / "run"
    run.mkdir()
    (run / rundir.CONFIG).write_text("{}")
    (run / rundir.SUMMARY).write_text("{}")
    with pytest.raises(ValueError, match=r"is a training run directory \(config\.json, summary"):
        rundir.check_tuning_dir(run)
    rundir.check_tuning_dir(tmp_path / "new")


@pytest.mark.reliability("misleading message")
def test_dangling_links_and_link_loops_are_named_as_such(tmp_path):
    from keras_densenet.pretrained import identify

    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "gone")
    loop = tmp_path / "loop"
    loop.symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(loop)
    for check in (
        lambda p: rundir.ensure_writable_dir(p, keep=False),
        rundir.model_file,
        identify,
    ):
        with pytest.raises(ValueError, match=r"is a symbolic link to .*gone.*does not exist"):
            check(dangling)
        with pytest.raises(ValueError, match="is a loop of symbolic links"):
            check(loop)
    rundir.check_link(tmp_path, "out")  # a real directory, and a path not made yet, pass
    rundir.check_link(tmp_path / "new", "out")
