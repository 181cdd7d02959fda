"""The run directory: the one module that knows its layout and reads it back.

Training writes a run directory; evaluation, export, prediction, plotting and
``--resume`` read it. They all go through here::

    runs/x/
      .lock                       # held by the process using the directory
      config.json                 # the options of the run (TrainConfig)
      best.keras  last.keras      # best (validation accuracy) and last model
      backup/                     # BackupAndRestore: latest.weights.h5,
                                  #   training_metadata.json ({"epoch": N})
      logs/                       # TensorBoard
      history.csv                 # one row per finished epoch (CSVLogger)
      curves.png  confusion_matrix.png  evaluation.json
      summary.json                # results, class names, input shape

Every reader names the file it could not use and says what to do; nothing
here writes except through `keras_densenet._io` (temporary name, then
rename). `lock` keeps two processes out of one directory.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import math
import os
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from typing import Any

from keras_densenet import _io

CONFIG = "config.json"
SUMMARY = "summary.json"
HISTORY = "history.csv"
BEST = "best.keras"
LAST = "last.keras"
BACKUP = "backup"
BACKUP_WEIGHTS = "latest.weights.h5"
BACKUP_METADATA = "training_metadata.json"
LOGS = "logs"
CURVES = "curves.png"
CONFUSION = "confusion_matrix.png"
EVALUATION = "evaluation.json"
ROC = "roc_curves.png"
#: A multi-label run's decision thresholds, one per label, chosen on validation.
THRESHOLDS = "thresholds.json"
LOCK = ".lock"
#: The models a run directory holds, in the order loaders prefer them.
MODELS = (BEST, LAST)


class DirectoryInUseError(ValueError):
    """Another live process holds the directory's lock."""


@contextlib.contextmanager
def lock(directory: str | os.PathLike, what: str = "run directory") -> Iterator[None]:
    """Holds an exclusive lock on a directory for the block.

    The lock is an ``fcntl.flock`` on ``directory/.lock``, which records the
    holder's process id. The operating system releases it when the process
    ends, however it ends (``kill -9`` included), so a crashed run never
    leaves a stale lock. Where ``fcntl`` does not exist (Windows) the block
    runs unlocked.

    Args:
        directory: The directory (created if missing).
        what: What the directory is, for the message.

    Yields:
        Nothing.

    Raises:
        DirectoryInUseError: If another process holds the lock; the message
            names its process id.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux/macOS
        yield
        return
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, LOCK)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise DirectoryInUseError(
                f"The {what} {directory!r} is in use by process {holder}; wait for it to "
                "finish, or choose another directory."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def check_link(path: str | os.PathLike, name: str) -> None:
    """Refuses a symbolic link that leads nowhere, naming it as such.

    A dangling link or a loop of links reads as "not found" or "File exists"
    to the calls after it; say what it is instead.

    Raises:
        ValueError: For a dangling link or a loop of links in ``path``.
    """
    path = os.fspath(path)
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ValueError(f"`{name}` {path!r} is a loop of symbolic links.") from None
        if os.path.islink(path):
            raise ValueError(
                f"`{name}` {path!r} is a symbolic link to {os.readlink(path)!r}, which does not "
                "exist."
            ) from None


def ensure_writable_dir(path: str | os.PathLike, name: str = "out", *, keep: bool = True) -> str:
    """Creates a directory if needed and checks a file can be written in it.

    With ``keep=False`` it only checks, creating no directory: a file can be
    written in the directory, or else in its nearest existing ancestor (so
    the missing part can be created). A command can then refuse a bad output
    path before its expensive work and still leave the disk as it was when it
    refuses something else; processes checking the same path at once do not
    disturb each other.

    Args:
        path: The directory.
        name: The argument it came from, for the message.
        keep: Create the directory (False: only check that it could be).

    Returns:
        ``path`` as a string.

    Raises:
        ValueError: If it is not a directory, cannot be created or is not writable.
    """
    path = os.fspath(path)
    check_link(path, name)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"`{name}` {path!r} exists and is not a directory.")
    try:
        if keep:
            os.makedirs(path, exist_ok=True)
            probe = path
        else:  # the nearest existing ancestor, with symlinks and ".." resolved
            probe = os.path.realpath(path)
            while not os.path.lexists(probe):
                probe = os.path.dirname(probe)
            if not os.path.isdir(probe):
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), probe)
        fd, test = tempfile.mkstemp(prefix=".write-test-", dir=probe)
        os.close(fd)
        os.remove(test)
    except OSError as err:
        raise ValueError(f"`{name}` {path!r} is not writable: {err.strerror or err}.") from err
    return path


#: What a training run writes besides its config.json.
RUN_FILES = (SUMMARY, HISTORY, BEST, LAST, BACKUP)
#: What marks a tuning directory (`keras_densenet.tuning`'s own record of the search).
TUNING_MARKER = "tune_config.json"


def check_new_run_dir(path: str | os.PathLike) -> None:
    """Refuses to start a new run where a run or a search left its files.

    A directory without ``config.json`` may still hold an earlier run's
    backup, history or models (its config was removed or lost): a new run
    there would silently continue the old backup and drop its history. And a
    tuning directory is not a run directory.

    Raises:
        ValueError: Naming the directory and what is in it.
    """
    path = os.fspath(path)
    if os.path.isfile(os.path.join(path, TUNING_MARKER)):
        raise ValueError(
            f"`out` {path!r} is a tuning directory ({TUNING_MARKER}): a training run needs a "
            "directory of its own."
        )
    left = [name for name in RUN_FILES if os.path.lexists(os.path.join(path, name))]
    if left:
        raise ValueError(
            f"`out` {path!r} holds files of an earlier run ({', '.join(left)}) but no "
            f"{CONFIG}: a new run there would mix with them. Choose another directory, or "
            "move them away to start over."
        )


def check_tuning_dir(path: str | os.PathLike) -> None:
    """Refuses a tuning directory that is a training run's.

    Raises:
        ValueError: If ``path`` holds a run (its ``config.json``, summary,
            history or backup) and no tuning record.
    """
    path = os.fspath(path)
    if os.path.isfile(os.path.join(path, TUNING_MARKER)):
        return
    marks = [
        n for n in (CONFIG, SUMMARY, HISTORY, BACKUP) if os.path.lexists(os.path.join(path, n))
    ]
    if marks:
        raise ValueError(
            f"`out` {path!r} is a training run directory ({', '.join(marks)}): a search needs a "
            "directory of its own (--overwrite discards searches, never runs)."
        )


def first_missing(path: str | os.PathLike) -> str | None:
    """The outermost directory of ``path`` that does not exist yet (None: it exists)."""
    path = os.path.abspath(os.fspath(path))
    missing = None
    while not os.path.lexists(path):
        missing, path = path, os.path.dirname(path)
    return missing


def remove_if_unused(directory: str | os.PathLike, up_to: str | None = None) -> bool:
    """Removes a directory that holds nothing but its lock file, and its made parents.

    For a run refused after its directory was made (weights that do not fit
    the model, data that cannot be read): the disk is left as it was.

    Args:
        directory: The run directory.
        up_to: The outermost directory made for it (`first_missing` before
            it was made); empty parents up to it are removed too.

    Returns:
        Whether the directory was removed.
    """
    directory = os.path.abspath(os.fspath(directory))
    try:
        if set(os.listdir(directory)) - {LOCK}:
            return False
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(directory, LOCK))
        os.rmdir(directory)
    except OSError:
        return False
    parent = directory
    while up_to and parent != up_to and parent.startswith(os.path.abspath(up_to) + os.sep):
        parent = os.path.dirname(parent)
        try:
            os.rmdir(parent)  # only while empty
        except OSError:
            break
    return True


def is_run_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory holding a run's config or one of its models."""
    path = os.fspath(path)
    return os.path.isdir(path) and any(
        os.path.isfile(os.path.join(path, name)) for name in (CONFIG, *MODELS)
    )


def model_file(path: str | os.PathLike) -> str:
    """The ``.keras`` file a path stands for: itself, or a run's best (else last) model.

    Args:
        path: A ``.keras`` file or a run directory.

    Returns:
        The model file's path.

    Raises:
        ValueError: If there is no such file, or the directory holds no model.
    """
    path = os.fspath(path)
    check_link(path, "model")
    if os.path.isdir(path):
        for name in MODELS:
            candidate = os.path.join(path, name)
            if os.path.isfile(candidate):
                return candidate
        raise ValueError(
            f"Directory {path!r} is not a training run directory: it has none of "
            f"{', '.join(MODELS)}."
        )
    if not os.path.exists(path):
        raise ValueError(f"Model file or run directory not found: {path!r}.")
    if not path.endswith(".keras"):
        raise ValueError(f"Expected a Keras `.keras` model file or a run directory, got {path!r}.")
    return path


#: The largest ``config.json`` read from a ``.keras`` archive: a DenseNet-264's
#: is about 1 MB; a larger one is refused before it is decompressed.
MAX_CONFIG_BYTES = 256 * 2**20


def _carries_lambda(config: Any) -> bool:
    """Whether a model's config holds a serialized Python lambda.

    The top-level ``compile_config`` is left out: ``compile=False`` loads
    never deserialize it, and a compiling load lets Keras' safe mode refuse.
    """
    stack = [v for k, v in config.items() if k != "compile_config"]
    while stack:  # iterative: a deeply nested file cannot exhaust the stack
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("class_name") == "__lambda__":
                return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def check_model_file(path: str | os.PathLike, *, allow_unsafe: bool = False) -> str:
    """Checks a ``.keras`` file as far as it can be without TensorFlow.

    Reads the archive's ``config.json`` only (no weights, no Keras): a file
    that is not a zip archive or has no readable config is refused, and so
    is one whose model holds a Python ``lambda`` (what Keras' safe mode
    refuses, marked ``"class_name": "__lambda__"``) unless allowed. Keras'
    own safe mode still applies when the file is loaded.

    Args:
        path: A ``.keras`` file, or a run directory (its best, else last, model).
        allow_unsafe: Accept a file that carries a lambda.

    Returns:
        The model file's path.

    Raises:
        ValueError: If the file is missing, unreadable, truncated, corrupted,
            or carries code that was not allowed.
    """
    return _read_model_config(path, allow_unsafe=allow_unsafe)[0]


def _read_model_config(path: str | os.PathLike, *, allow_unsafe: bool) -> tuple[str, dict]:
    # check_model_file's work; also returns the archive's config.
    path = model_file(path)
    try:
        with zipfile.ZipFile(path) as archive:
            size = archive.getinfo("config.json").file_size
            if size > MAX_CONFIG_BYTES:
                raise ValueError(f"its config.json is {size:,} bytes uncompressed")
            config = json.loads(archive.read("config.json"))
        if not isinstance(config, dict):
            raise ValueError("its config.json is not a JSON object")
    except PermissionError as err:
        raise ValueError(f"Cannot read model file {path!r}: {err.strerror or err}.") from None
    except Exception as err:  # zip, zlib, JSON and encoding errors alike
        raise ValueError(
            f"{path!r} is not a valid .keras file ({type(err).__name__}: {err}): truncated or "
            "corrupted."
        ) from None
    if not allow_unsafe and _carries_lambda(config):
        raise ValueError(_UNSAFE.format(path=path))
    return path, config


def _mixed_policy_name(dtype: Any) -> str | None:
    if isinstance(dtype, dict) and dtype.get("class_name") == "DTypePolicy":
        dtype = (dtype.get("config") or {}).get("name")
    return dtype if isinstance(dtype, str) and dtype.startswith("mixed_") else None


def _saved_policy(config: dict) -> str | None:
    """The mixed dtype policy a saved model was built under, if any.

    The model's own ``dtype`` where its config has one (Sequential; Keras
    gives a loaded model the global policy, and compile wraps the optimizer
    by the model's), else the first mixed policy among its layers' (a
    functional model stores none of its own, and its head computes in float32
    whatever the policy).
    """
    model = config.get("config") or {}
    if "dtype" in model:
        return _mixed_policy_name(model["dtype"])
    stack: list[Any] = [model.get("layers")]
    while stack:  # iterative, as _carries_lambda
        item = stack.pop()
        if isinstance(item, dict):
            name = _mixed_policy_name(item.get("dtype"))
            if name:
                return name
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


@contextlib.contextmanager
def _global_policy(name: str | None) -> Iterator[None]:
    import keras

    previous = keras.config.dtype_policy()
    if name is None or name == previous.name:
        yield
        return
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


_UNSAFE = (
    "Refusing to load {path!r}: it contains code (e.g. a Lambda layer) that would run on "
    "load; pass `allow_unsafe=True` only for a file you trust."
)


def load_model(path: str | os.PathLike, *, allow_unsafe: bool = False, compile: bool = True) -> Any:
    """Loads a ``.keras`` model in safe mode (no ``custom_objects`` needed).

    Safe mode refuses files that would run arbitrary code when loaded (a
    ``Lambda`` layer's pickled function); only ``allow_unsafe=True`` turns it
    off, for files you trust.

    Args:
        path: A ``.keras`` file, or a run directory (its ``best.keras``, else
            ``last.keras``).
        allow_unsafe: Load ``Lambda`` layers and other code-carrying objects.
        compile: Restore the training configuration (optimizer, loss) too.

    Returns:
        The ``keras.Model``. With ``compile=True`` it is compiled under the
        dtype policy it was saved with, so a mixed_float16 model gets its
        ``LossScaleOptimizer`` back with its state (iterations, momenta, loss
        scale); the global dtype policy is left as it was.

    Raises:
        ValueError: If the file is missing, truncated, corrupted, or needs
            unsafe deserialization that was not allowed.
    """
    import keras

    from keras_densenet import layers, losses  # noqa: F401  (registers them with Keras)

    path, config = _read_model_config(path, allow_unsafe=allow_unsafe)
    try:
        # Compiled under the policy it was saved with: a mixed_float16 model's
        # optimizer is a LossScaleOptimizer, and only under that policy does
        # compile wrap it again, so its state (iterations, momenta) loads.
        with _global_policy(_saved_policy(config) if compile else None):
            return keras.saving.load_model(path, compile=compile, safe_mode=not allow_unsafe)
    except Exception as err:
        text = str(err)
        if "`safe_mode=False`" in text:  # every refusal of Keras' safe mode says so
            raise ValueError(_UNSAFE.format(path=path)) from err
        raise ValueError(f"Cannot load model {path!r}: {type(err).__name__}: {text}") from err


def read_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The options a run was started with (its ``config.json``).

    Raises:
        ValueError: If the file is missing, corrupted or not a JSON object.
    """
    path = os.path.join(os.fspath(run_dir), CONFIG)
    config = _io.read_json(path, "run config")
    if not isinstance(config, dict):
        raise ValueError(
            f"The run config {path!r} must hold a JSON object of training options, got "
            f"{type(config).__name__}: it is corrupted; restore it or start a new run."
        )
    return config


def read_summary(directory: str | os.PathLike) -> dict[str, Any] | None:
    """A run's ``summary.json``, or None if there is none.

    Raises:
        ValueError: If it exists but is corrupted.
    """
    path = os.path.join(os.fspath(directory), SUMMARY)
    if not os.path.isfile(path):
        return None
    summary = _io.read_json(path, "run summary")
    if not isinstance(summary, dict):
        raise ValueError(f"The run summary {path!r} must hold a JSON object: it is corrupted.")
    return summary


def class_names(path: str | os.PathLike) -> list[str] | None:
    """The class names stored with a model: the ``summary.json`` beside it, if any.

    Args:
        path: A run directory, or a ``.keras`` file (its directory is looked at).

    Returns:
        The names, or None when there is no summary.

    Raises:
        ValueError: If the summary is corrupted or its names are not strings.
    """
    path = os.fspath(path)
    directory = path if os.path.isdir(path) else os.path.dirname(path)
    summary = read_summary(directory)
    if summary is None or summary.get("class_names") is None:
        return None
    names = summary["class_names"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(
            f"`class_names` in {os.path.join(directory, SUMMARY)!r} must be a list of strings."
        )
    return names


def _history_rows(path: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and ``(line number, row)`` pairs; repeated headers are skipped."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            lines = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"Cannot read the training history {path!r}: {err}.") from err
    if not lines:
        return [], []
    header = lines[0]
    if not header or header[0] != "epoch":
        raise ValueError(
            f"The training history {path!r} is not a CSVLogger file (no `epoch` column first): "
            "it is corrupted; restore it or remove it."
        )
    # A row equal to the header is where an interrupted writer appended again.
    return header, [(i, row) for i, row in enumerate(lines[1:], 2) if row and row != header]


def read_history(path: str | os.PathLike) -> dict[str, list[float]]:
    """Reads a ``history.csv`` (CSVLogger) into ``{column: values}``.

    Tolerant of the repeated header a restarted writer leaves; when an epoch
    appears twice, its last row counts.

    Args:
        path: The CSV file, or a run directory.

    Returns:
        Column name -> list of floats, ``epoch`` included, in epoch order.

    Raises:
        ValueError: Naming the file (and line), if it is missing or a row is
            not numbers.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, HISTORY)
    if not os.path.isfile(path):
        raise ValueError(f"Training history not found: {path!r}.")
    header, rows = _history_rows(path)
    by_epoch: dict[int, list[float]] = {}
    for line, row in rows:
        try:
            values = [float(v) if v != "" else math.nan for v in row]
            epoch = int(values[0])
        except (ValueError, IndexError):
            raise ValueError(
                f"The training history {path!r} has a bad row at line {line}: {row!r}; "
                "remove that line."
            ) from None
        if len(values) != len(header) or epoch != values[0] or epoch < 0:
            raise ValueError(
                f"The training history {path!r} has a bad row at line {line}: {row!r}; "
                "remove that line."
            )
        by_epoch[epoch] = values
    ordered = [by_epoch[e] for e in sorted(by_epoch)]
    return {name: [row[i] for row in ordered] for i, name in enumerate(header)}


def trim_history(path: str | os.PathLike, epochs_done: int) -> None:
    """Keeps only the history rows of epochs a resumed run will not train again.

    Also repairs a file an interrupted or concurrent writer left: repeated
    headers go, and each epoch keeps one row.

    Args:
        path: The CSV file.
        epochs_done: Epochs the backup holds; later rows are dropped.

    Raises:
        ValueError: If the file is corrupted beyond that.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        return
    history = read_history(path)
    if not history:
        return
    header = list(history)
    keep = [i for i, epoch in enumerate(history["epoch"]) if epoch < epochs_done]
    lines = [header] + [[_csv_value(history[k][i], k) for k in header] for i in keep]
    import io

    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(lines)
    _io.write_text(path, buffer.getvalue())


def _csv_value(value: float, column: str) -> str:
    if column == "epoch":
        return str(int(value))
    return "" if math.isnan(value) else repr(value)


def epochs_done(run_dir: str | os.PathLike) -> int:
    """Epochs a run's backup holds (0 without a backup).

    Raises:
        ValueError: Naming the file, if the backup metadata or weights are
            corrupted (a truncated weights file included).
    """
    backup = os.path.join(os.fspath(run_dir), BACKUP)
    metadata = os.path.join(backup, BACKUP_METADATA)
    weights = os.path.join(backup, BACKUP_WEIGHTS)
    if not os.path.exists(metadata):
        return 0
    data = _io.read_json(metadata, "backup metadata")
    epoch = data.get("epoch") if isinstance(data, dict) else None
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(
            f'The backup metadata {metadata!r} must hold {{"epoch": <epochs done>}}, got '
            f"{data!r}: it is corrupted; remove the {BACKUP}/ directory to restart the run "
            "from scratch."
        )
    if epoch == 0:
        return 0
    check_weights_file(weights, "backup weights")
    return epoch


def check_weights_file(path: str, what: str) -> None:
    """Checks that a ``.weights.h5`` file exists and is a readable HDF5 file.

    Raises:
        ValueError: Naming the file, if it is missing, truncated or corrupted.
    """
    if not os.path.isfile(path):
        raise ValueError(f"The {what} file {path!r} is missing: the run cannot resume from it.")
    import h5py

    try:
        with h5py.File(path, "r") as f:
            f.visit(lambda name: None)
    except (OSError, RuntimeError, KeyError) as err:
        raise ValueError(
            f"The {what} file {path!r} is truncated or corrupted ({err}); remove the "
            f"{BACKUP}/ directory to restart the run from scratch."
        ) from err


def option_changes(
    previous: Mapping[str, Any], current: Mapping[str, Any], ignored: set[str] | frozenset[str]
) -> dict[str, tuple[Any, Any]]:
    """The options that differ between a stored run and a new request.

    Args:
        previous: The stored options.
        current: The options now.
        ignored: Options allowed to differ.

    Returns:
        Name -> ``(stored, now)`` for every difference.
    """
    names = (set(previous) | set(current)) - set(ignored)
    return {
        name: (previous.get(name), current.get(name))
        for name in sorted(names)
        if previous.get(name) != current.get(name)
    }


__all__ = [
    "BEST",
    "CONFIG",
    "HISTORY",
    "LAST",
    "MODELS",
    "SUMMARY",
    "DirectoryInUseError",
    "check_link",
    "check_model_file",
    "class_names",
    "ensure_writable_dir",
    "epochs_done",
    "is_run_dir",
    "load_model",
    "lock",
    "model_file",
    "option_changes",
    "read_config",
    "read_history",
    "read_summary",
    "trim_history",
]
