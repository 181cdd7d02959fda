"""Numbered SavedModel versions on disk: listing, scratch names, stale-scratch
clean-up and the atomic swap, on real directories and processes.

No TensorFlow: a "version" here is a directory with a ``saved_model.pb`` file, as
TF Serving sees it. These own `keras_densenet/export/versions.py` in
tests/mutation.sh; whole exports killed and replaced are in test_export.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

import pytest

from keras_densenet.export import versions
from keras_densenet.export.versions import (
    TEMP_PREFIX,
    check_version,
    list_versions,
    remove_stale_scratch,
    replace_dir,
    savedmodel_dir,
    scratch_name,
    taken_versions,
)


def _version(model_dir, name, marker="x"):
    path = model_dir / name
    path.mkdir(parents=True)
    (path / "saved_model.pb").write_text(marker)
    return path


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())


def test_list_versions_counts_complete_numbered_versions_in_numeric_order(tmp_path):
    assert list_versions(tmp_path / "missing") == []
    for name in ("2", "10", "9"):
        _version(tmp_path, name)
    (tmp_path / "11").mkdir()  # still being written: no saved_model.pb
    (tmp_path / "12").write_text("a file, not a version")
    _version(tmp_path, "v3")  # TF Serving loads only all-digit names
    _version(tmp_path, ".tmp-4-host-1-ab")
    assert list_versions(tmp_path) == [2, 9, 10]
    assert list_versions(str(tmp_path)) == [2, 9, 10]


def test_taken_versions_blocks_every_numbered_entry(tmp_path):
    _version(tmp_path, "3")
    (tmp_path / "20").mkdir()  # incomplete: its number is still taken
    (tmp_path / "7").write_text("")
    (tmp_path / "x8").mkdir()
    assert taken_versions(str(tmp_path)) == [3, 7, 20]


def test_check_version():
    assert check_version(None) is None
    assert check_version(4) == 4
    assert check_version("12") == 12
    with pytest.raises(ValueError, match=re.escape("`version` must be an integer in [1, ")):
        check_version(0)
    with pytest.raises(ValueError, match="`version`"):
        check_version("0")
    with pytest.raises(TypeError, match="`version`"):
        check_version("v2")
    with pytest.raises(TypeError, match="`version`"):
        check_version(True)


def test_scratch_names_are_hidden_and_carry_version_host_and_process(tmp_path):
    name = scratch_name(TEMP_PREFIX, 3)
    assert name == f".tmp-3-{_host()}-{os.getpid()}-"
    assert not name[:1].isdigit()  # never a name TF Serving loads
    match = versions._SCRATCH_RE.match(name + "0a1b2c3d")
    assert match is not None
    assert (match["kind"], match["version"], match["host"], match["pid"]) == (
        "tmp",
        "3",
        _host(),
        str(os.getpid()),
    )
    assert versions._SCRATCH_RE.match(scratch_name(".old-", 12) + "ff") is not None
    assert versions._SCRATCH_RE.match(".tmp-3-host-12-") is None  # no suffix
    assert versions._SCRATCH_RE.match("x.tmp-3-host-12-ab") is None


def test_host_tag_replaces_characters_a_file_name_should_not_carry(monkeypatch):
    monkeypatch.setattr(versions.socket, "gethostname", lambda: "Build box/7:a.b_c-Z")
    assert versions._host_tag() == "Build_box_7_a.b_c_Z"


def test_pid_alive(monkeypatch):
    # Asking must not disturb a live process (signal 0 only checks); asked
    # about another process first, so a real signal fails this test rather
    # than killing the test process itself.
    # The child puts every signal back to its default action first (a run under
    # nohup inherits SIGHUP ignored), so any real signal shows.
    code = (
        "import signal, time\n"
        "for s in signal.valid_signals():\n"
        "    try: signal.signal(s, signal.SIG_DFL)\n"
        "    except (OSError, ValueError): pass\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "ready\n"
        assert versions._pid_alive(child.pid)
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(timeout=0.5)
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    assert versions._pid_alive(os.getpid())
    dead = _dead_pid()
    assert not versions._pid_alive(dead)
    real_kill = os.kill

    def someone_elses(pid, sig):  # what a non-root user gets for another user's process
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(versions.os, "kill", someone_elses)
    assert versions._pid_alive(dead)
    monkeypatch.setattr(versions.os, "kill", real_kill)
    monkeypatch.setattr(versions.os, "name", "nt")  # os.kill(pid, 0) would kill there
    assert versions._pid_alive(dead)


def test_stale_scratch_of_dead_exports_from_this_host_is_removed(tmp_path):
    dead, host = _dead_pid(), _host()
    _version(tmp_path, "1")
    stale = _version(tmp_path, f".tmp-2-{host}-{dead}-0a1b2c3d")
    live = _version(tmp_path, f".tmp-3-{host}-{os.getpid()}-0a1b2c3d")
    elsewhere = _version(tmp_path, f".tmp-4-otherhost-{dead}-0a1b2c3d")
    unrelated = _version(tmp_path, ".tmp-notes")
    remove_stale_scratch(str(tmp_path))
    assert not stale.exists()
    assert live.exists() and elsewhere.exists() and unrelated.exists()
    assert list_versions(tmp_path) == [1]


def test_a_replaced_version_left_behind_is_put_back_or_dropped(tmp_path):
    dead, host = _dead_pid(), _host()
    # Version 5 was moved aside and the process died before its replacement
    # moved in: the old one comes back.
    _version(tmp_path, f".old-5-{host}-{dead}-0a1b2c3d", "old five")
    # Version 6 was replaced: the old copy is dropped, the new one stays.
    _version(tmp_path, "6", "new six")
    _version(tmp_path, f".old-6-{host}-{dead}-0a1b2c3d", "old six")
    remove_stale_scratch(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["5", "6"]
    assert (tmp_path / "5" / "saved_model.pb").read_text() == "old five"
    assert (tmp_path / "6" / "saved_model.pb").read_text() == "new six"


def test_an_old_version_that_cannot_be_put_back_is_never_deleted(tmp_path, monkeypatch):
    dead, host = _dead_pid(), _host()
    old = _version(tmp_path, f".old-5-{host}-{dead}-0a1b2c3d", "only copy")

    def refuse(src, dst):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(versions.os, "rename", refuse)
    remove_stale_scratch(str(tmp_path))  # no error: the next export is not blocked
    assert (old / "saved_model.pb").read_text() == "only copy"


def test_exchange_swaps_two_directories(tmp_path):
    a, b = _version(tmp_path, "a", "A"), _version(tmp_path, "b", "B")
    assert versions._exchange(str(a), str(b)) is True
    assert (a / "saved_model.pb").read_text() == "B"
    assert (b / "saved_model.pb").read_text() == "A"


def test_exchange_reports_what_it_cannot_do(tmp_path, monkeypatch):
    a = _version(tmp_path, "a", "A")
    inner = _version(a, "inner", "I")
    # Swapping a directory with its own child is EINVAL: "not available", fall back.
    assert versions._exchange(str(a), str(inner)) is False
    missing = str(tmp_path / "missing")
    with pytest.raises(FileNotFoundError) as caught:
        versions._exchange(str(a), missing)
    assert str(caught.value) == f"[Errno 2] No such file or directory: {missing!r}"
    assert (a / "saved_model.pb").read_text() == "A"
    monkeypatch.setattr(versions.sys, "platform", "darwin")
    assert versions._exchange(str(a), str(inner)) is False


def test_exchange_without_renameat2_in_the_c_library(tmp_path, monkeypatch):
    # An older C library (glibc < 2.28, musl) has no renameat2: fall back.
    a, b = _version(tmp_path, "a", "A"), _version(tmp_path, "b", "B")

    class NoRenameat2:
        def __init__(self, *args, **kwargs):
            pass

        def __getattr__(self, name):
            raise AttributeError(f"undefined symbol: {name}")

    monkeypatch.setattr(versions.ctypes, "CDLL", NoRenameat2)
    assert versions._exchange(str(a), str(b)) is False
    assert (a / "saved_model.pb").read_text() == "A"

    def no_library(*args, **kwargs):
        raise OSError("cannot load the C library")

    monkeypatch.setattr(versions.ctypes, "CDLL", no_library)
    assert versions._exchange(str(a), str(b)) is False
    replace_dir(str(b), str(a), 1)  # the rename fallback
    assert (a / "saved_model.pb").read_text() == "B" and not b.exists()


@pytest.mark.parametrize("exchange", [True, False])
def test_replace_dir_puts_the_new_version_in_place(tmp_path, monkeypatch, exchange):
    if not exchange:  # a system without renameat2(RENAME_EXCHANGE): the rename fallback
        monkeypatch.setattr(versions.sys, "platform", "darwin")
    target = _version(tmp_path, "3", "old")
    new = _version(tmp_path, scratch_name(TEMP_PREFIX, 3) + "0a1b2c3d", "new")
    replace_dir(str(new), str(target), 3)
    assert (target / "saved_model.pb").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["3"]  # no scratch left


def test_a_crash_in_the_rename_fallback_leaves_the_old_version_under_its_old_name(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(versions.sys, "platform", "darwin")
    target = _version(tmp_path, "3", "old")
    new = _version(tmp_path, scratch_name(TEMP_PREFIX, 3) + "0a1b2c3d", "new")
    real_rename = os.rename
    calls = []

    def rename_once_then_die(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise KeyboardInterrupt("killed between the two renames")
        real_rename(src, dst)

    monkeypatch.setattr(versions.os, "rename", rename_once_then_die)
    with pytest.raises(KeyboardInterrupt):
        replace_dir(str(new), str(target), 3)
    monkeypatch.undo()
    old = [p for p in tmp_path.iterdir() if p.name.startswith(".old-")]
    assert len(old) == 1 and (old[0] / "saved_model.pb").read_text() == "old"
    assert re.fullmatch(rf"\.old-3-{re.escape(_host())}-{os.getpid()}-[0-9a-f]{{8}}", old[0].name)
    assert not target.exists()


def test_savedmodel_dir_resolves_a_version_or_the_highest_complete_one(tmp_path):
    assert savedmodel_dir(tmp_path / "none") is None
    assert savedmodel_dir(tmp_path) is None
    _version(tmp_path, "2")
    _version(tmp_path, "10")
    _version(tmp_path, "3")
    (tmp_path / "11").mkdir()  # incomplete
    assert savedmodel_dir(tmp_path) == os.path.join(str(tmp_path), "10")
    assert savedmodel_dir(tmp_path / "2") == str(tmp_path / "2")
