"""The install paths: every extra resolves to exactly one TensorFlow distribution.

Each resolution asks the package registry (``pip install --dry-run --report``),
so these tests are ``slow``: ``.venv/bin/python -m pytest -m slow tests/test_install.py``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TENSORFLOWS = {"tensorflow", "tensorflow-cpu", "tensorflow-intel", "tensorflow-macos"}


def _resolve(requirement: str, report: str, ignore_installed: bool = True) -> set[str]:
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", report]
    if ignore_installed:
        command.append("--ignore-installed")
    proc = subprocess.run(
        [*command, requirement], capture_output=True, text=True, timeout=900, cwd=ROOT
    )
    assert proc.returncode == 0, f"{requirement} does not resolve: {proc.stderr[-3000:]}"
    with open(report) as f:
        # Names as PEP 503 normalizes them (tensorflow_cpu is tensorflow-cpu).
        return {
            re.sub(r"[-_.]+", "-", item["metadata"]["name"]).lower()
            for item in json.load(f)["install"]
        }


@pytest.mark.slow
def test_each_extra_resolves_to_one_tensorflow(tmp_path):
    extras = {
        "cpu": ".[cpu,datasets,tuning,plots,test]",
        "gpu": ".[gpu,datasets,tuning,plots,test]",
        "tensorflow": ".[tensorflow,datasets,tuning,plots]",
    }
    with ThreadPoolExecutor(len(extras)) as pool:
        futures = {
            name: pool.submit(_resolve, requirement, str(tmp_path / f"{name}.json"))
            for name, requirement in extras.items()
        }
        resolved = {name: future.result() for name, future in futures.items()}
    for name, packages in resolved.items():
        found = packages & TENSORFLOWS
        assert len(found) == 1, f"extra {name!r} installs {sorted(found)}: two distributions"
    assert resolved["cpu"] & TENSORFLOWS == {"tensorflow-cpu"}
    assert resolved["tensorflow"] & TENSORFLOWS == {"tensorflow"}
    gpu = resolved["gpu"]
    assert gpu & TENSORFLOWS == {"tensorflow"}
    assert {"nvidia-cudnn-cu12", "nvidia-cublas-cu12"} <= gpu  # tensorflow[and-cuda]
    assert {"jax-cuda12-plugin", "jax-cuda12-pjrt"} <= gpu  # jax[cuda12]
    assert not any(p.startswith("jax-cuda") for p in resolved["cpu"])


@pytest.mark.slow
def test_install_on_top_of_an_existing_tensorflow_adds_no_second_one(tmp_path):
    # This venv already has a TensorFlow: the package's extras without a
    # cpu/gpu/tensorflow build must not bring another one.
    packages = _resolve(".[datasets,tuning,plots]", str(tmp_path / "on_top.json"), False)
    assert not packages & TENSORFLOWS, sorted(packages & TENSORFLOWS)
