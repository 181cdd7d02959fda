"""Every notebook in notebooks/ runs top to bottom (stored without outputs)."""

from __future__ import annotations

import glob
import os

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "notebooks", "*.ipynb")))


#: What each notebook must print (its results, not just that it ran).
EXPECTED = {
    "01_quickstart.ipynb": ('"test_accuracy"', "exported", "serving_default"),
    "02_dense_connectivity.ipynb": ("block output channels", "= L(L+1)/2"),
    "03_tuning.ipynb": ("'completed'", "ready to train"),
    "04_memory.ipynb": ("| BC-10-12 | normal | 16 |", "| BC-10-12 | efficient | 16 |", "wrote "),
    "05_fine_tuning.ipynb": (
        "source test accuracy",
        "fine-tuned test accuracy (classes 5-9)",
        "from scratch test accuracy (classes 5-9)",
    ),
    "06_multilabel_and_gradcam.ipynb": (
        "test macro AUROC",
        "pointing game: Grad-CAM",
        "predicted [",
    ),
}


#: The text an output can carry besides printed streams (a cell's last value, display()).
TEXT_KINDS = ("text/plain", "text/markdown")


def _joined(text: str | list[str]) -> str:
    """An output's text, which nbformat stores as one string or as a list of lines."""
    return text if isinstance(text, str) else "".join(text)


def test_notebooks_exist():
    names = [os.path.basename(p) for p in NOTEBOOKS]
    assert names == [
        "01_quickstart.ipynb",
        "02_dense_connectivity.ipynb",
        "03_tuning.ipynb",
        "04_memory.ipynb",
        "05_fine_tuning.ipynb",
        "06_multilabel_and_gradcam.ipynb",
    ]


#: Notebooks that explain (the dense connectivity, the memory figures) rather than run a
#: user's path: executed by the slow layer, which CI runs after the default one.
EXPLAINERS = ("02_dense_connectivity.ipynb", "04_memory.ipynb")


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(p, marks=pytest.mark.slow) if os.path.basename(p) in EXPLAINERS else p
        for p in NOTEBOOKS
    ],
    ids=[os.path.basename(p) for p in NOTEBOOKS],
)
def test_notebook_runs(path, monkeypatch):
    monkeypatch.setenv("NOTEBOOK_QUICK", "1")  # the kernel inherits it: smaller searches
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        assert not cell.get("outputs"), f"{path} is stored with outputs"
    client = NotebookClient(
        notebook,
        timeout=900,
        kernel_name="python3",
        resources={"metadata": {"path": os.path.dirname(path)}},
    )
    client.execute()  # raises CellExecutionError on any failing cell
    text = "\n".join(
        _joined(output.get("text", ""))
        + "".join(_joined(output.get("data", {}).get(kind, "")) for kind in TEXT_KINDS)
        for cell in notebook.cells
        for output in cell.get("outputs", [])
    )
    images = sum(
        "image/png" in output.get("data", {})
        for cell in notebook.cells
        for output in cell.get("outputs", [])
    )
    for needle in EXPECTED[os.path.basename(path)]:
        assert needle in text, f"{path}: {needle!r} not in its output"
    assert images >= 1, f"{path} showed no figure"
