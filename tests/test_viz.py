"""Plots: real PNGs with the content they claim."""

from __future__ import annotations

import shutil

import matplotlib.image
import numpy as np
import pytest
from conftest import TINY

from keras_densenet import build_densenet
from keras_densenet.viz import (
    confusion_matrix,
    plot_confusion_matrix,
    plot_feature_maps,
    plot_history,
    plot_model_diagram,
    read_history_csv,
)


def _png(path):
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(path)
    assert pixels.std() > 0.05  # not a blank canvas
    return pixels


def test_plot_history_from_csv(tmp_path):
    csv_path = tmp_path / "history.csv"
    csv_path.write_text(
        "epoch,accuracy,loss,val_accuracy,val_loss\n0,0.5,1.2,0.4,3.0\n1,0.7,0.8,0.6,1.0\n"
    )
    history = read_history_csv(csv_path)
    assert history["val_loss"] == [3.0, 1.0]
    pixels = _png(plot_history(history, tmp_path / "curves.png", title="t"))
    assert pixels.shape[1] > pixels.shape[0]  # two panels side by side
    with pytest.raises(ValueError, match="loss"):
        plot_history({"accuracy": [0.1]}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="not found"):
        read_history_csv(tmp_path / "missing.csv")


def test_confusion_matrix_counts_and_plot(tmp_path):
    matrix = confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0], 3)
    np.testing.assert_array_equal(matrix, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    _png(plot_confusion_matrix(matrix, ["a", "b", "c"], tmp_path / "cm.png"))
    with pytest.raises(ValueError, match="class_names"):
        plot_confusion_matrix(matrix, ["a", "b"], tmp_path / "bad.png")


def test_plot_feature_maps(tmp_path):
    model = build_densenet(**TINY)
    image = np.random.default_rng(0).uniform(0, 255, (28, 28, 1)).astype("float32")
    _png(plot_feature_maps(model, image, ["conv1_conv", "conv2"], tmp_path / "fm.png", 8))
    with pytest.raises(ValueError, match="layer_names"):
        plot_feature_maps(model, image, ["nope"], tmp_path / "fm2.png")
    with pytest.raises(ValueError, match="image"):
        plot_feature_maps(model, image[..., 0], ["conv2"], tmp_path / "fm3.png")


def test_plot_model_diagram(tmp_path):
    if shutil.which("dot") is None:
        pytest.fail("Graphviz's dot is required: bash .ci/setup installs graphviz (as root)")
    _png(plot_model_diagram(build_densenet(**TINY), tmp_path / "model.png"))


def test_plot_model_diagram_without_graphviz(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="Graphviz"):
        plot_model_diagram(build_densenet(**TINY), tmp_path / "model.png")


def test_precision_recall_and_f1_equal_scikit_learn_s():
    from sklearn.metrics import confusion_matrix as sk_matrix
    from sklearn.metrics import precision_recall_fscore_support

    from keras_densenet.evaluation import confusion_matrix, precision_recall_f1

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, 200)
    predictions = np.where(rng.random(200) < 0.6, labels, rng.integers(0, 4, 200))
    predictions[predictions == 3] = 2  # class 3 is never predicted: precision 0, not NaN
    matrix = confusion_matrix(labels, predictions, 5)  # class 4 is absent
    np.testing.assert_array_equal(matrix[:4, :4], sk_matrix(labels, predictions, labels=range(4)))
    ours = precision_recall_f1(matrix)
    theirs = precision_recall_fscore_support(labels, predictions, labels=range(5), zero_division=0)
    for key, values in zip(("precision", "recall", "f1", "support"), theirs, strict=True):
        np.testing.assert_allclose(ours[key], values, rtol=1e-12, err_msg=key)
    assert ours["precision"][3] == 0 and ours["support"][4] == 0
