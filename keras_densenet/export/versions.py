"""Numbered SavedModel versions, published atomically where TF Serving watches.

A version is written under a hidden scratch name in the model directory (TF
Serving loads only all-digit names), then renamed to its number; replacing a
version swaps the two atomically on Linux (``renameat2(RENAME_EXCHANGE)``).
Scratch directories of exports that died are removed by the next export, and
a replaced version left under an ``.old-*`` name is put back.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import socket
import sys
import uuid
from typing import Any

from keras_densenet._io import remove
from keras_densenet._validation import check_int

TEMP_PREFIX = ".tmp-"
_OLD_PREFIX = ".old-"
_SCRATCH_RE = re.compile(
    r"^\.(?P<kind>tmp|old)-(?P<version>\d+)-(?P<host>[A-Za-z0-9_.]*)-(?P<pid>\d+)-[A-Za-z0-9_]+$"
)


def list_versions(model_dir: str | os.PathLike) -> list[int]:
    """The complete exported versions in a model directory, ascending.

    A version counts only if its directory name is all digits (what TF Serving
    loads) and it holds a ``saved_model.pb``.

    Args:
        model_dir: e.g. ``saved_models/<model_name>``.

    Returns:
        The version numbers; empty if the directory does not exist.
    """
    model_dir = os.fspath(model_dir)
    if not os.path.isdir(model_dir):
        return []
    return sorted(
        int(name)
        for name in os.listdir(model_dir)
        if name.isdigit() and os.path.isfile(os.path.join(model_dir, name, "saved_model.pb"))
    )


def taken_versions(model_dir: str) -> list[int]:
    # Every digit-named entry blocks its number, complete or not.
    return sorted(int(name) for name in os.listdir(model_dir) if name.isdigit())


def check_version(version: Any) -> int | None:
    if version is None:
        return None
    if isinstance(version, str) and version.isdigit():
        version = int(version)
    return check_int("version", version, 1)


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())


def scratch_name(kind: str, version: int) -> str:
    return f"{kind}{version}-{_host_tag()}-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would signal the process there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_scratch(model_dir: str) -> None:
    """Removes temp dirs of exports from this host whose process has died.

    A killed export leaves its ``.tmp-*`` dir behind (TF Serving ignores it).
    An ``.old-*`` dir is a replaced version kept while its replacement moved
    in; if that version is missing, the old one is put back.
    """
    host = _host_tag()
    for name in os.listdir(model_dir):
        match = _SCRATCH_RE.match(name)
        if not match or match["host"] != host or _pid_alive(int(match["pid"])):
            continue
        path = os.path.join(model_dir, name)
        target = os.path.join(model_dir, match["version"])
        if match["kind"] == "old" and not os.path.exists(target):
            with contextlib.suppress(OSError):  # never delete the only copy
                os.rename(path, target)
            continue
        remove(path)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: str, b: str) -> bool:
    """Atomically swaps two paths with Linux ``renameat2(RENAME_EXCHANGE)``.

    Returns False where that is not available, so the caller can fall back.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(code, os.strerror(code), b)


def replace_dir(new: str, target: str, version: int) -> None:
    """Puts ``new`` at ``target``, replacing the existing ``target``."""
    if _exchange(new, target):
        remove(new)  # `new` now holds the old version
        return
    # Fallback: a short window where the version is missing; a crash inside it
    # leaves the old version under `.old-*`, restored by the next export.
    old = os.path.join(
        os.path.dirname(target), scratch_name(_OLD_PREFIX, version) + uuid.uuid4().hex[:8]
    )
    os.rename(target, old)
    os.rename(new, target)
    remove(old)


def savedmodel_dir(path: str | os.PathLike) -> str | None:
    """The SavedModel version directory for a version or model directory, else None.

    A model directory stands for its highest complete version.
    """
    path = os.fspath(path)
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    versions = list_versions(path)
    if versions:
        return os.path.join(path, str(versions[-1]))
    return None


__all__ = [
    "TEMP_PREFIX",
    "check_version",
    "list_versions",
    "remove",
    "remove_stale_scratch",
    "replace_dir",
    "savedmodel_dir",
    "scratch_name",
    "taken_versions",
]
