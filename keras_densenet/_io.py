"""The one way this package writes files: a temporary name, fsync, then rename.

A reader (a resumed run, TF Serving, a user's script) never sees a half-written
file: the data goes to a hidden temporary name in the destination's own
directory (so the rename cannot cross file systems), is flushed to disk, and
only then replaces the destination with ``os.replace``, which is atomic on
POSIX. A crash leaves either the old file or the new one, plus at most a
``.tmp-*`` file that every writer here removes when it fails. Files get the
usual permissions (0666 minus the umask), not ``mkstemp``'s private 0600.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import uuid
from collections.abc import Iterator
from typing import Any

#: Prefix of every temporary name; readers skip such files.
TEMP_PREFIX = ".tmp-"


def temporary_name(path: str | os.PathLike) -> str:
    """A fresh hidden name next to ``path`` that ends like it (``.keras`` stays last).

    Args:
        path: The destination.

    Returns:
        The temporary path.
    """
    directory, base = os.path.split(os.path.abspath(os.fspath(path)))
    return os.path.join(directory, f"{TEMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-{base}")


def fsync_path(path: str) -> None:
    """Flushes a file or directory to disk (best effort where the OS refuses)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_tree(root: str) -> None:
    """Flushes every file and directory under ``root`` to disk."""
    for directory, _, files in os.walk(root):
        for name in files:
            fsync_path(os.path.join(directory, name))
        fsync_path(directory)


def remove(path: str) -> None:
    """Removes a file or a directory tree; missing paths are fine."""
    if os.path.isdir(path) and not os.path.islink(path):
        import shutil

        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.remove(path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yields a temporary path to write; renames it to ``path`` if the block succeeds.

    Whatever the block writes at the yielded path (a file, or a directory)
    is flushed and moved to ``path``, replacing it. If the block raises, or
    writes nothing, the temporary is removed and ``path`` is left as it was.

    Args:
        path: The destination.

    Yields:
        The temporary path, in the destination's directory.

    Raises:
        FileNotFoundError: If the block wrote nothing at the temporary path.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        if not os.path.exists(tmp):
            raise FileNotFoundError(f"Nothing was written to {tmp!r} for {path!r}.")
        if os.path.isdir(tmp):
            fsync_tree(tmp)
        else:
            fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(directory)
    finally:
        if os.path.lexists(tmp):
            remove(tmp)


def write_bytes(path: str | os.PathLike, data: bytes) -> str:
    """Writes ``data`` to ``path`` atomically.

    Args:
        path: The destination.
        data: The bytes.

    Returns:
        ``path`` as a string.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return os.fspath(path)


def write_text(path: str | os.PathLike, text: str) -> str:
    """Writes UTF-8 ``text`` to ``path`` atomically; returns ``path``."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, data: Any) -> str:
    """Writes ``data`` as indented JSON to ``path`` atomically; returns ``path``.

    Args:
        path: The destination.
        data: JSON-serializable data (other objects are written as ``str``).
    """
    return write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def save_model(model: Any, path: str | os.PathLike) -> str:
    """Saves a Keras model (``.keras``) or its weights (``.weights.h5``) atomically.

    Args:
        model: The ``keras.Model``.
        path: A ``.keras`` or ``.weights.h5`` path.

    Returns:
        ``path`` as a string.

    Raises:
        OSError: If the disk refuses the write (full, a file-size limit),
            also where HDF5 reports it as a ``RuntimeError`` naming the errno.
    """
    path = os.fspath(path)
    try:
        with atomic_path(path) as tmp:
            if path.endswith(".weights.h5"):
                model.save_weights(tmp)
            else:
                model.save(tmp)
    except RuntimeError as err:  # HDF5: "... file write failed: ..., errno = 28, ..."
        found = re.search(r"errno = (\d+)", str(err))
        if found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), path) from err
    return path


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Reads a JSON file with errors that name it.

    Args:
        path: The file.
        what: What the file is, for the message (e.g. ``"run config"``).

    Returns:
        The parsed JSON.

    Raises:
        ValueError: If the file cannot be read, is not UTF-8 or not JSON.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except UnicodeDecodeError as err:
        raise ValueError(f"The {what} {path!r} is not UTF-8 text: {err.reason}.") from err
    except json.JSONDecodeError as err:
        raise ValueError(
            f"The {what} {path!r} is not valid JSON ({err.msg} at line {err.lineno} column "
            f"{err.colno}): it is corrupted; restore it or remove it."
        ) from err
    except OSError as err:
        raise ValueError(f"Cannot read the {what} {path!r}: {err.strerror or err}.") from err
