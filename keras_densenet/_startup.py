"""Keeps the ``keras-densenet`` command's stderr to its own messages.

TensorFlow's C++ runtime prints a start-up banner to file descriptor 2 while it
is imported, ignoring ``TF_CPP_MIN_LOG_LEVEL``. Library users keep it; the
command line, whose errors must be one line, drops it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator


def is_command_line() -> bool:
    """Whether this process is the ``keras-densenet`` command (or ``python -m keras_densenet``)."""
    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return (
        program == "keras-densenet"
        or (program == "__main__.py" and "keras_densenet" in sys.argv[0])
        or sys.argv[:1] == ["-m"]
    )


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Sends fd 2 to /dev/null for the block when running as the command line."""
    if not is_command_line():
        yield
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
