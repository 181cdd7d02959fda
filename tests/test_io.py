"""The atomic writer (`keras_densenet._io`): real files, a real model, a real fsync."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import c_locale_env

from keras_densenet import _io


def test_temporary_name_is_hidden_next_to_the_destination(tmp_path):
    name = _io.temporary_name(tmp_path / "sub" / "model.keras")
    assert os.path.dirname(name) == str(tmp_path / "sub")
    assert re.fullmatch(rf"\.tmp-{os.getpid()}-[0-9a-f]+-model\.keras", os.path.basename(name))
    assert _io.temporary_name(tmp_path / "a") != _io.temporary_name(tmp_path / "a")


def test_write_json_text_is_exact(tmp_path):
    path = tmp_path / "summary.json"
    assert _io.write_json(path, {"b": [1, 2], "path": Path("runs/x")}) == str(path)
    assert path.read_text() == '{\n  "b": [\n    1,\n    2\n  ],\n  "path": "runs/x"\n}\n'
    assert _io.read_json(path) == {"b": [1, 2], "path": "runs/x"}


def test_write_text_is_utf8(tmp_path):
    path = tmp_path / "classes.txt"
    _io.write_text(path, "T-shirt/top, Ankle boot, Ärmel")
    assert path.read_bytes() == "T-shirt/top, Ankle boot, Ärmel".encode()


def test_read_json_is_utf8_whatever_the_locale(tmp_path):
    path = tmp_path / "summary.json"
    path.write_bytes(json.dumps({"class": "Ärmel"}, ensure_ascii=False).encode())
    assert _io.read_json(path) == {"class": "Ärmel"}  # here (and mutmut sees the call)
    # Under the C locale without UTF-8 mode Python's default encoding is ASCII.
    # The child imports this very copy of the package (a mutation run's included).
    env = c_locale_env(_io)
    code = f"from keras_densenet import _io; print(ascii(_io.read_json({str(path)!r})))"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ascii({"class": "Ärmel"})


@pytest.mark.parametrize(
    ("content", "what", "message"),
    [
        (None, "file", "Cannot read the file '{p}': No such file or directory."),
        (b"\xff\xfe{", "run config", "The run config '{p}' is not UTF-8 text: invalid start byte."),
        (
            b'{"a": 1,',
            "summary",
            "The summary '{p}' is not valid JSON (Expecting property name enclosed in double "
            "quotes at line 1 column 9): it is corrupted; restore it or remove it.",
        ),
    ],
)
def test_read_json_errors_name_the_file(tmp_path, content, what, message):
    path = tmp_path / "x.json"
    if content is not None:
        path.write_bytes(content)
    kwargs = {} if what == "file" else {"what": what}
    with pytest.raises(ValueError) as info:
        _io.read_json(path, **kwargs)
    assert str(info.value) == message.format(p=path)


def test_a_failing_block_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "history.csv"
    _io.write_text(path, "old")
    with pytest.raises(RuntimeError), _io.atomic_path(path) as tmp:
        Path(tmp).write_text("half")
        raise RuntimeError("disk full")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["history.csv"]


def test_a_block_that_writes_nothing_is_an_error(tmp_path):
    with (
        pytest.raises(FileNotFoundError, match="Nothing was written"),
        _io.atomic_path(tmp_path / "x"),
    ):
        pass
    assert os.listdir(tmp_path) == []


def test_directories_are_written_whole_and_flushed(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    dest = tmp_path / "export" / "1"
    with _io.atomic_path(dest) as tmp:
        os.makedirs(os.path.join(tmp, "variables"))
        Path(tmp, "saved_model.pb").write_bytes(b"pb")
        Path(tmp, "variables", "variables.index").write_bytes(b"ix")
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == [
        "saved_model.pb",
        "variables",
        "variables/variables.index",
    ]
    # Every file and directory of the tree (under its temporary name), then the parent.
    tree = synced[:-1]
    names = {os.path.relpath(p, os.path.commonpath(tree)) for p in tree}
    assert names == {".", "saved_model.pb", "variables", "variables/variables.index"}
    assert os.path.basename(os.path.commonpath(tree)).startswith(_io.TEMP_PREFIX)
    assert synced[-1] == os.path.realpath(dest.parent)


def test_fsync_of_a_missing_path_is_harmless(tmp_path):
    _io.fsync_path(str(tmp_path / "missing"))


def test_remove_files_trees_links_and_missing_paths(tmp_path):
    tree = tmp_path / "tree"
    (tree / "a").mkdir(parents=True)
    (tree / "a" / "f").write_text("x")
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep").write_text("x")
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    file = tmp_path / "file"
    file.write_text("x")

    _io.remove(str(tree))
    _io.remove(str(link))
    _io.remove(str(file))
    _io.remove(str(tmp_path / "missing"))
    assert sorted(os.listdir(tmp_path)) == ["target"]
    assert (target / "keep").read_text() == "x"


def test_remove_is_best_effort_when_the_os_refuses(tmp_path, monkeypatch):
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "f").write_text("x")

    def refuse(*args, **kwargs):
        raise PermissionError("refused")

    monkeypatch.setattr(os, "unlink", refuse)
    monkeypatch.setattr(os, "remove", refuse)
    _io.remove(str(tree))
    _io.remove(str(tree / "f"))
    assert (tree / "f").exists()


def _tiny_model():
    inputs = keras.Input((3,))
    return keras.Model(inputs, keras.layers.Dense(2, name="d")(inputs))


def test_save_model_keras_file_and_weights_file(tmp_path):
    model = _tiny_model()
    assert _io.save_model(model, tmp_path / "m.keras") == str(tmp_path / "m.keras")
    assert _io.save_model(model, tmp_path / "m.weights.h5") == str(tmp_path / "m.weights.h5")
    assert sorted(os.listdir(tmp_path)) == ["m.keras", "m.weights.h5"]
    assert zipfile.is_zipfile(tmp_path / "m.keras")
    x = np.ones((1, 3), "float32")
    reloaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(reloaded.predict(x, verbose=0), model.predict(x, verbose=0))
    other = _tiny_model()
    other.load_weights(tmp_path / "m.weights.h5")
    np.testing.assert_array_equal(other.predict(x, verbose=0), model.predict(x, verbose=0))
