"""Helpers shared by the benchmarks: workers, memory probes, timing and reports.

Every measured configuration runs in a fresh subprocess (``run_worker``), so
its peak memory is its own and nothing warmed up by an earlier configuration
carries over. Nothing here imports TensorFlow at module level: the GPU
benchmark must also run on the JAX backend without TensorFlow installed.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: Repository root: workers run as ``python -m benchmarks.<name>`` from here.
REPO_ROOT = Path(__file__).resolve().parent.parent
#: Default folder for JSON, markdown and PNG outputs.
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
#: A worker prints its result as one line starting with this.
RESULT_PREFIX = "BENCH_RESULT "

_PACKAGES = (
    "tensorflow",
    "tensorflow-cpu",
    "keras",
    "jax",
    "jaxlib",
    "torch",
    "torchvision",
    "numpy",
)


def environment() -> dict[str, Any]:
    """Describes the machine and package versions without importing the packages.

    Returns:
        Python and platform strings, CPU counts and installed package versions
        (``None`` for packages that are not installed).
    """
    versions: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    try:
        usable_cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable_cpus = os.cpu_count()
    try:
        load_average = list(os.getloadavg())
    except OSError:
        load_average = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpus,
        "memory_total_bytes": _memory_total(),
        # Other processes on the same cores make timings noisy; this says how busy.
        "load_average_1_5_15_min": load_average,
        "keras_backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
        "packages": versions,
    }


# ----------------------------------------------------------------------------
# Host memory (Linux /proc; portable fallbacks).


def _memory_total() -> int | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_bytes() -> int:
    """Current resident set size of this process in bytes."""
    kib = _proc_status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    import psutil

    return int(psutil.Process().memory_info().rss)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process since start or the last reset."""
    kib = _proc_status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    # ru_maxrss is KiB on Linux and bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def reset_peak_rss() -> bool:
    """Resets the kernel's peak-RSS mark (Linux >= 4.0, ``clear_refs`` = 5).

    Returns:
        Whether the reset worked; if not, later peaks include everything before.
    """
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


# ----------------------------------------------------------------------------
# Allocator (tensor) memory, per backend; imports happen only when asked.

#: Set to ``true`` to make TensorFlow use a BFC allocator on the CPU, which
#: then reports its tensor memory like a GPU's (``get_memory_info("CPU:0")``).
TF_CPU_BFC_ENV = "TF_CPU_ALLOCATOR_USE_BFC"


def allocator_device(backend: str) -> str | None:
    """The device whose allocator reports tensor memory, or None.

    ``"GPU:0"`` where the backend sees a GPU; ``"CPU:0"`` for TensorFlow on a
    CPU-only machine run with ``TF_CPU_ALLOCATOR_USE_BFC=true``; else None.
    """
    if backend == "tensorflow":
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            return "GPU:0"
        return "CPU:0" if os.environ.get(TF_CPU_BFC_ENV, "").lower() == "true" else None
    if backend == "jax":
        import jax

        return "GPU:0" if jax.default_backend() in ("gpu", "cuda", "rocm") else None
    if backend == "torch":
        import torch

        return "GPU:0" if torch.cuda.is_available() else None
    return None


def reset_allocator_peak(backend: str) -> None:
    """Resets the allocator's peak counter where the backend can (not JAX)."""
    device = allocator_device(backend)
    if device is None:
        return
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.reset_memory_stats(device)
    elif backend == "torch":
        import torch

        torch.cuda.reset_peak_memory_stats()


def allocator_stats(backend: str) -> dict[str, int] | None:
    """``{"current", "peak"}`` bytes of tensor memory, or None if not available."""
    device = allocator_device(backend)
    if device is None:
        return None
    if backend == "tensorflow":
        import tensorflow as tf

        info = tf.config.experimental.get_memory_info(device)
        return {"current": int(info["current"]), "peak": int(info["peak"])}
    if backend == "jax":
        import jax

        stats = jax.local_devices()[0].memory_stats() or {}
        if "peak_bytes_in_use" not in stats:
            return None
        return {"current": int(stats["bytes_in_use"]), "peak": int(stats["peak_bytes_in_use"])}
    if backend == "torch":
        import torch

        return {
            "current": int(torch.cuda.memory_allocated()),
            "peak": int(torch.cuda.max_memory_allocated()),
        }
    return None


# ----------------------------------------------------------------------------
# Workers.


def emit_result(result: dict[str, Any]) -> None:
    """Prints a worker's result line for `run_worker` to parse."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def run_worker(
    module: str,
    config: dict[str, Any],
    *,
    env: dict[str, str] | None = None,
    timeout: float = 1800.0,
) -> dict[str, Any]:
    """Runs ``python -m module --worker CONFIG_JSON`` and returns its result.

    Args:
        module: The benchmark module, e.g. ``"benchmarks.memory_scaling"``.
        config: The configuration, passed as JSON.
        env: Extra environment variables for the subprocess.
        timeout: Seconds before the worker is killed.

    Returns:
        The worker's result dict, or ``{"error": ..., "returncode": ...}``
        if it failed (a returncode of -9 usually means it ran out of memory).
    """
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    command = [sys.executable, "-m", module, "--worker", json.dumps(config)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            command,
            cwd=REPO_ROOT,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", "returncode": None}
    wall = time.perf_counter() - start
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX) :])
            result["worker_wall_s"] = wall
            return result
    tail = (proc.stderr or proc.stdout)[-2000:]
    return {"error": tail, "returncode": proc.returncode, "worker_wall_s": wall}


# ----------------------------------------------------------------------------
# Timing and statistics.


def time_calls(fn: Callable[[], Any], count: int) -> list[float]:
    """Wall-clock seconds of ``count`` calls of ``fn`` (which must synchronize)."""
    times = []
    for _ in range(count):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def cpu_seconds() -> float:
    """User + system CPU seconds used by this process so far (all threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def median(values: Iterable[float | None]) -> float | None:
    """Median of the non-None values, or None if there are none."""
    kept = [v for v in values if v is not None]
    return statistics.median(kept) if kept else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or None if either is missing or zero."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def synthetic_batch(
    batch_size: int, input_shape: Sequence[int], num_classes: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A fixed random float32 image batch and int32 labels."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch_size, *input_shape), dtype=np.float32)
    y = rng.integers(0, num_classes, size=(batch_size,), dtype=np.int32)
    return x, y


def measure_training(
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    *,
    steps: int,
    warmup: int,
    inference_steps: int = 0,
    backend: str = "tensorflow",
) -> dict[str, Any]:
    """Times training (and optionally inference) steps of a compiled Keras model.

    Memory: ``baseline_rss`` is the RSS after building and compiling, before
    any step; ``warmup_peak_rss`` the process peak through tracing,
    compilation and the warm-up steps; then the peak is reset and
    ``step_peak_rss`` is the peak over the timed training steps only.
    ``train_memory = step_peak_rss - baseline_rss`` is what training adds
    (activations, gradients, optimizer slots, workspace, and whatever the C
    allocator keeps from the warm-up). Where the allocator reports tensor
    memory (`allocator_stats`), ``tensor_peak`` is its peak over the timed
    steps and ``tensor_train_memory`` that peak minus the tensors alive
    between steps (weights and optimizer slots).

    Args:
        model: A compiled ``keras.Model``.
        x: One input batch.
        y: Its labels.
        steps: Timed training steps.
        warmup: Untimed training steps first (at least 1: tracing).
        inference_steps: Timed ``predict_on_batch`` calls after training.
        backend: The Keras backend name, for allocator statistics.

    Returns:
        A dict of per-step times, images/s (from the median and from the
        fastest step), CPU seconds per step and memory.
    """
    batch = int(x.shape[0])
    out: dict[str, Any] = {"baseline_rss": rss_bytes()}
    start = time.perf_counter()
    model.train_on_batch(x, y)
    out["first_step_s"] = time.perf_counter() - start
    for _ in range(max(warmup, 1) - 1):
        model.train_on_batch(x, y)
    out["rest_rss_after_warmup"] = rss_bytes()
    out["warmup_peak_rss"] = peak_rss_bytes()
    out["peak_reset"] = reset_peak_rss()
    before = allocator_stats(backend)
    reset_allocator_peak(backend)
    cpu = cpu_seconds()
    out["train_step_s"] = time_calls(lambda: model.train_on_batch(x, y), steps)
    # CPU seconds per step: less sensitive than wall time to other processes
    # sharing the cores (but it counts the thread pools' spinning too).
    out["train_cpu_s_per_step"] = (cpu_seconds() - cpu) / max(steps, 1)
    out["step_peak_rss"] = peak_rss_bytes()
    out["peak_rss"] = max(out["warmup_peak_rss"], out["step_peak_rss"])
    out["train_memory"] = out["step_peak_rss"] - out["baseline_rss"]
    after = allocator_stats(backend)
    # Tensor memory from the allocator (GPU, or TF's CPU BFC allocator): the
    # peak over the timed steps, and what it adds to the weights and slots.
    out["tensor_peak"] = after and after["peak"]
    out["tensor_train_memory"] = after and before and after["peak"] - before["current"]
    step = median(out["train_step_s"])
    out["train_images_per_s"] = batch / step if step else None
    # The fastest step is the one least disturbed by other processes.
    out["train_images_per_s_best"] = batch / min(out["train_step_s"]) if steps else None
    if inference_steps:
        model.predict_on_batch(x)
        out["infer_step_s"] = time_calls(lambda: model.predict_on_batch(x), inference_steps)
        infer = median(out["infer_step_s"])
        out["infer_images_per_s"] = batch / infer if infer else None
    return out


# ----------------------------------------------------------------------------
# Reports.


def mib(value: float | None) -> str:
    """Bytes as MiB text, ``-`` for None."""
    return "-" if value is None else f"{value / 2**20:,.0f}"


def fmt(value: float | None, spec: str = ".2f") -> str:
    """A number with ``spec``, ``-`` for None."""
    return "-" if value is None else format(value, spec)


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_outputs(prefix: Path, payload: dict[str, Any], markdown: str) -> list[Path]:
    """Writes ``prefix.json`` (payload plus environment) and ``prefix.md``.

    Returns:
        The written paths.
    """
    prefix.parent.mkdir(parents=True, exist_ok=True)
    payload = {"environment": environment(), **payload}
    json_path = prefix.with_suffix(".json")
    md_path = prefix.with_suffix(".md")
    json_path.write_text(json.dumps(payload, indent=2) + "\n")
    md_path.write_text(markdown.rstrip() + "\n")
    return [json_path, md_path]
