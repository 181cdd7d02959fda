"""The ``keras-densenet`` command: a thin shell over the library functions.

Every sub-command is one library call; its flags come from the library's own
options and constants (``train``'s from `TrainConfig`'s fields). Nothing heavy
is imported until a sub-command runs, so ``--help`` and argument errors answer
at once. Every bad value ends with one line on stderr, naming the flag, and
exit code 2, never a traceback; a training failure the user can act on (NaN
loss, out of memory) ends with one line and exit code 1.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from keras_densenet.cli.arguments import PROG, UsageError, build_parser, fail
from keras_densenet.cli.commands import COMMANDS, parse_assignments


def _flags_of(parser: argparse.ArgumentParser, command: str | None) -> dict[str, str]:
    """Option name -> its flag, for the sub-command that ran."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            parser = action.choices[command]
    return {
        action.dest: action.option_strings[0]
        for action in parser._actions
        if action.option_strings and action.dest != "help"
    }


def _speak_flags(message: str, flags: dict[str, str]) -> str:
    """Rewrites the library's argument names in a message as the command's flags.

    ```overwrite=True``` becomes ``--overwrite``, ```bad_images='skip'``` becomes
    ``--bad-images skip`` and ```batch_size``` becomes ``--batch-size``; names
    with no flag stay as they are.
    """

    def replace(match: re.Match[str]) -> str:
        name, value = match.group(1), match.group(2)
        flag = flags.get(name)
        if flag is None:
            return match.group(0)
        if value is None:
            return flag
        value = value.strip("'\"")
        return flag if value == "True" else f"{flag} {value}"

    return re.sub(r"`(\w+)(?:=([^`]+))?`", replace, message)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``keras-densenet`` command.

    Args:
        argv: Arguments (default ``sys.argv[1:]``).

    Returns:
        The exit code (0 on success); errors exit via ``SystemExit``.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with _interrupts_remembered() as interrupted, _one_line_warnings(args.command):
            code = int(COMMANDS[args.command](args) or 0)
        if interrupted():  # a Ctrl-C that Python swallowed (raised inside a __del__)
            raise KeyboardInterrupt
        return code
    except UsageError as err:
        fail(f"{PROG} {args.command}: error: {err}")
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, ImportError) as err:
        message = _speak_flags(str(err), _flags_of(parser, args.command))
        fail(f"{PROG} {args.command}: error: {message}")
    except KeyboardInterrupt:
        fail(f"{PROG} {args.command}: interrupted", code=130)
    except OSError as err:  # the disk: full, read-only, a file-size limit, a directory in the way
        fail(f"{PROG} {args.command}: {_os_error(err)}", code=1)
    except Exception as err:
        if "OpError" not in {cls.__name__ for cls in type(err).__mro__}:
            raise  # a bug: its traceback is what a report needs
        # TensorFlow's writes fail as OpErrors (a full disk while saving a model).
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        first = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", first)  # TensorFlow's op path
        if "No space left on device" in first:
            first += "; free some space and run it again"
        fail(f"{PROG} {args.command}: {first}", code=1)


@contextlib.contextmanager
def _one_line_warnings(command: str) -> Iterator[None]:
    """The package's own warnings as one line each, each said once, while the block runs.

    Python's format takes two lines (the file and line, then the source line
    that warned); a user of the command needs the message alone.
    """
    import sys
    import warnings

    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    said: set[str] = set()
    previous = warnings.showwarning

    def show(message: Any, category: Any, filename: str, lineno: int, *rest: Any) -> None:
        if not os.path.abspath(filename).startswith(package):
            previous(message, category, filename, lineno, *rest)
            return
        text = " ".join(str(message).split())
        if text not in said:
            said.add(text)
            print(f"{PROG} {command}: warning: {text}", file=sys.stderr, flush=True)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


@contextlib.contextmanager
def _interrupts_remembered() -> Iterator[Callable[[], bool]]:
    """Remembers every SIGINT while the block runs; yields "was there one?".

    Python raises KeyboardInterrupt where the signal lands; landing in a
    finalizer (a dataset iterator deleted after the last epoch), it is
    printed as "Exception ignored" and lost, and the command would exit 0.
    The handler still raises it, as Python's own does.
    """
    seen: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        seen.append(signum)
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: Python's handling as it is
        yield lambda: False
        return
    try:
        yield lambda: bool(seen)
    finally:
        signal.signal(signal.SIGINT, previous)


def _os_error(err: OSError) -> str:
    """One line for an operating-system error, naming the file and what to do."""
    import errno

    what = err.strerror or str(err) or type(err).__name__
    where = f" ({err.filename})" if err.filename else ""
    advice = {
        errno.ENOSPC: "; free some space and run it again (--resume continues a run)",
        errno.EFBIG: "; a file-size limit stopped the write (ulimit -f)",
        errno.EROFS: "; the directory is read-only",
        errno.EACCES: "; no permission to write there",
        errno.EISDIR: "; a directory is in the way of the file",
    }.get(err.errno or 0, "")
    return f"{what}{where}{advice}; every file written before is whole"


__all__ = ["PROG", "UsageError", "build_parser", "main", "parse_assignments"]
