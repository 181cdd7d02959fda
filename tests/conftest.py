"""Shared fixtures and helpers for the keras_densenet tests."""

from __future__ import annotations

import os
import pathlib
import subprocess

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    # One core's worth of TensorFlow threads per pytest-xdist worker (and the
    # CLI processes it starts): with a worker per core, TensorFlow's default
    # of one thread per core in every process oversubscribes the machine.
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

import keras
import numpy as np
import pytest

#: The smallest useful DenseNet: two blocks of two layers on 28x28x1.
TINY = {
    "blocks": (2, 2),
    "growth_rate": 4,
    "num_init_features": 8,
    "stem": "cifar",
    "input_shape": (28, 28, 1),
    "num_classes": 10,
}


def same_package_env(module, **extra: str) -> dict:
    """This process's environment, with ``PYTHONPATH`` at the package ``module`` came from.

    A child process then imports this very copy of the package (a mutation
    run's mutated copy included, which the editable install would bypass).
    """
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(module.__file__)))
    return dict(os.environ, PYTHONPATH=package_root, **extra)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a coordinator)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def c_locale_env(module) -> dict:
    """An environment whose default encoding is ASCII (C locale, no UTF-8 mode),
    importing this copy of the package (`same_package_env`)."""
    return same_package_env(module, LC_ALL="C", LANG="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0")


def run_command(capsys, *args: str) -> subprocess.CompletedProcess:
    """Runs ``keras-densenet ARGS`` in this process, as `main` runs it.

    For tests of what a command does; a test of the process itself (its exit
    status after a crash, a kill or a lock, its start-up without TensorFlow,
    what a fresh interpreter loads) starts a real one. ``capsys`` is the test's
    fixture: stdout and stderr come back as a finished process's would.
    """
    from keras_densenet.cli import main

    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["keras-densenet", *args], code, out, err)


@pytest.fixture(autouse=True, scope="session")
def _full_float32_on_gpus():
    """Float32 computed as float32 on GPUs too.

    On Ampere and newer GPUs TensorFlow runs float32 convolutions and matrix
    products in TF32 (a 10-bit mantissa) by default; the tests compare float32
    results at about 1e-5. No effect on a CPU.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_tensor_float_32_execution(False)
    yield


@pytest.fixture(autouse=True)
def _float32_policy():
    """Every test starts and ends under the float32 policy."""
    keras.mixed_precision.set_dtype_policy("float32")
    yield
    keras.mixed_precision.set_dtype_policy("float32")


def assert_close(actual, expected, rtol: float, err_msg: str = "") -> None:
    """``actual`` equals ``expected`` to ``rtol`` of the largest magnitude in ``expected``.

    A float32 network's rounding error scales with the values it adds up, not
    with each output: an output near 0 (a feature, a logit, a mean) carries the
    absolute error of its larger terms, and oneDNN's kernels round differently
    from one CPU to the next. So the tolerance is relative to the output's
    scale (``atol = rtol x max |expected|``), never ``rtol`` alone.
    """
    expected = np.asarray(expected)
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    np.testing.assert_allclose(
        np.asarray(actual), expected, rtol=rtol, atol=rtol * scale, err_msg=err_msg
    )


def assert_saved_model_round_trip(model: keras.Model, path: str, inputs: np.ndarray) -> keras.Model:
    """Saves ``model`` as ``.keras``, reloads it in safe mode, checks predictions."""
    before = model.predict(inputs, verbose=0)
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(reloaded.predict(inputs, verbose=0), before, rtol=1e-5, atol=1e-6)
    return reloaded


#: The hand-set "levels" classifier: logits = mean grey level (0..1) x W + B.
LEVELS_W = np.array([[-4.0, 0.0, 4.0]], np.float32)
LEVELS_B = np.array([2.0, 0.5, -2.0], np.float32)
LEVELS_NAMES = ["dark", "grey", "light"]


def levels_model(channels: int = 1, size: int = 4) -> keras.Model:
    """A classifier of raw pixels whose probabilities `levels_probabilities` knows.

    It answers from the mean grey level alone ("dark", "grey", "light"), so
    predictions and exports are checked against numbers computed in numpy.
    """
    inputs = keras.Input((size, size, channels))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    # Active only in training mode: a prediction path that forgets
    # training=False answers at random.
    x = keras.layers.Dropout(0.5, seed=0)(x)
    if channels > 1:
        x = keras.layers.Dense(1, use_bias=False, name="mix")(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, outputs, name="levels")
    model.get_layer("predictions").set_weights([LEVELS_W, LEVELS_B])
    if channels > 1:
        model.get_layer("mix").set_weights([np.full((channels, 1), 1 / channels, np.float32)])
    return model


def levels_lambda_file(directory) -> str:
    """`levels_model` behind a ``Lambda`` layer, saved: a ``.keras`` file that carries code."""
    inputs = keras.Input((4, 4, 1))
    model = keras.Model(inputs, levels_model()(keras.layers.Lambda(lambda x: x * 1.0)(inputs)))
    path = os.path.join(directory, "lambda.keras")
    model.save(path)
    return path


def levels_probabilities(level: float) -> np.ndarray:
    """`levels_model`'s probabilities for an image of one grey level (0..255)."""
    logits = level / 255 * LEVELS_W[0] + LEVELS_B
    e = np.exp(logits - logits.max())
    return e / e.sum()


# ---------------------------------------------------------------------------
# tests/RELIABILITY.md: generated from the reliability tests of each full run.

_RELIABILITY: list[tuple[str, str, str]] = []


def pytest_addoption(parser):
    parser.addoption(
        "--reliability-report",
        metavar="PATH",
        help="write the reliability figures (cases tried and held, by category) to PATH, "
        "e.g. tests/RELIABILITY.md; only a run of every reliability case writes it",
    )


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "reliability(category): a fault, bad-input, security or determinism case"
    )


#: The test files that take longest, longest first (worker-seconds of a full run on
#: 2 cores, 2026-12-02). pytest-xdist hands whole files to its workers in
#: collection order (``--dist loadfile --no-loadscope-reorder``): starting with
#: the long ones keeps a long file from running alone at the end.
LONGEST_FIRST = (
    "test_reliability.py",
    "test_training.py",
    "test_export.py",
    "test_notebooks.py",
    "test_tuning.py",
    "test_cli.py",
    "test_finetune.py",
    "test_weights_torch.py",
    "test_models.py",
    "test_weights.py",
    "test_memory.py",
    "test_backends.py",
    "test_batchnorm.py",
    "test_properties.py",
    "test_folding.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept
    # The category travels in the report's user_properties, so the reports
    # that pytest-xdist's workers send back carry it to the controller.
    for item in items:
        marker = item.get_closest_marker("reliability")
        if marker is not None:
            item.user_properties.append(("reliability", marker.args[0] if marker.args else "other"))


#: Node ids of the reliability cases that started (sent a setup report).
_RELIABILITY_STARTED: set[str] = set()


def pytest_runtest_logreport(report):
    category = dict(report.user_properties).get("reliability")
    if category is None:
        return
    if report.when == "setup":
        _RELIABILITY_STARTED.add(report.nodeid)
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        _RELIABILITY.append((category, report.nodeid.split("::", 1)[-1], report.outcome))


def _reliability_report_path(config) -> str | None:
    """Where to write RELIABILITY.md, or None unless the run selects every case."""
    path = config.getoption("--reliability-report")
    tests_dir = pathlib.Path(__file__).resolve().parent
    whole_folder = all(
        pathlib.Path(config.invocation_params.dir, arg).resolve() == tests_dir
        for arg in config.args
    )
    narrowing = ("keyword", "deselect", "maxfail", "lf", "stepwise", "ignore", "ignore_glob")
    if (
        not path
        # a pytest-xdist worker runs only its share: the controller writes the report
        or hasattr(config, "workerinput")
        or (config.getoption("markexpr") or "") != "reliability"
        or any(config.getoption(name, None) for name in narrowing)
        or not whole_folder
    ):
        return None
    return path


def pytest_sessionfinish(session, exitstatus):
    # Only when asked, only from a run that selected every reliability case
    # (``-m reliability`` over the whole tests folder: no -k, no paths or node
    # ids, no --deselect/--ignore, no -x/--maxfail/--lf/--sw) and finished each one
    # it started: a test run never rewrites a tracked file on its own, nor with
    # partial figures.
    path = _reliability_report_path(session.config)
    if path is None or not _RELIABILITY or len(_RELIABILITY) < len(_RELIABILITY_STARTED):
        return
    import platform
    import time

    import keras as _keras

    lines = [
        "# Reliability figures",
        "",
        "Generated from the tests marked `@pytest.mark.reliability` by",
        "`.venv/bin/python -m pytest -q -m reliability --reliability-report tests/RELIABILITY.md`;",
        "do not edit by hand.",
        f"Last run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, Python "
        f"{platform.python_version()}, Keras {_keras.__version__}.",
        "",
        "| category | cases tried | held |",
        "|---|---|---|",
    ]
    by_category: dict[str, list[tuple[str, str]]] = {}
    for category, name, outcome in _RELIABILITY:
        by_category.setdefault(category, []).append((name, outcome))
    for category in sorted(by_category):
        cases = by_category[category]
        held = sum(outcome == "passed" for _, outcome in cases)
        lines.append(f"| {category} | {len(cases)} | {held} |")
    lines += ["", "| category | case | result |", "|---|---|---|"]
    for category in sorted(by_category):
        for name, outcome in by_category[category]:
            lines.append(
                f"| {category} | `{name}` | {'held' if outcome == 'passed' else outcome} |"
            )
    from keras_densenet import _io

    _io.write_text(path, "\n".join(lines) + "\n")
