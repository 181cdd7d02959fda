"""Plots users want from a DenseNet run, written as PNG files with matplotlib.

Every function writes atomically (a temporary name, then a rename) and returns
the path it wrote. matplotlib is imported lazily with the non-interactive Agg
backend, so the functions work on machines with no screen.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from keras_densenet.evaluation import confusion_matrix  # noqa: F401  (moved; kept importable)


def pyplot() -> Any:
    """matplotlib.pyplot with the non-interactive Agg backend (imported on first use).

    Raises:
        ImportError: If matplotlib is not installed, saying how to install it.
    """
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError(
            "Plotting needs matplotlib: pip install 'keras-densenet[plots]'."
        ) from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike) -> str:
    """Writes a figure as PNG atomically, closes it, and returns ``path``."""
    from keras_densenet import _io

    path = os.fspath(path)
    try:
        with _io.atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    finally:
        fig.clf()
        pyplot().close(fig)
    return path


def read_history_csv(path: str | os.PathLike) -> dict[str, list[float]]:
    """Reads a ``keras.callbacks.CSVLogger`` file into ``{metric: values}``.

    See `keras_densenet.rundir.read_history`, which this is.

    Args:
        path: The CSV file.

    Returns:
        Column name -> list of floats (the ``epoch`` column included).

    Raises:
        ValueError: If the file is missing or not a CSV history.
    """
    from keras_densenet.rundir import read_history

    return read_history(path)


def plot_history(
    history: Mapping[str, Sequence[float]] | Any, path: str | os.PathLike, title: str = ""
) -> str:
    """Plots loss and accuracy curves (training and validation) per epoch.

    Args:
        history: A ``keras.callbacks.History``, its ``.history`` dict, or the
            dict `read_history_csv` returns.
        path: The PNG file to write.
        title: Optional figure title.

    Returns:
        ``path``.

    Raises:
        ValueError: If the history has no loss values.
    """
    history = dict(getattr(history, "history", history))
    if not history.get("loss"):
        raise ValueError("`history` has no `loss` values to plot.")
    epochs = history.get("epoch") or list(range(len(history["loss"])))
    epochs = [int(e) + 1 for e in epochs]
    plt = pyplot()
    panels = [m for m in ("loss", "accuracy") if history.get(m)]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, metric in zip(axes[0], panels, strict=True):
        ax.plot(epochs, history[metric], "o-", label=f"train {metric}")
        if history.get(f"val_{metric}"):
            ax.plot(epochs, history[f"val_{metric}"], "s--", label=f"validation {metric}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        if metric == "loss" and min(min(history[k]) for k in history if k.endswith("loss")) > 0:
            ax.set_yscale("log")  # early validation losses can be 50x the final ones
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_confusion_matrix(
    matrix: np.ndarray,
    class_names: Sequence[str],
    path: str | os.PathLike,
    title: str = "Confusion matrix",
) -> str:
    """Draws a confusion matrix with counts, rows normalized for the colours.

    Args:
        matrix: ``[num_classes, num_classes]`` counts, rows true classes.
        class_names: One name per class.
        path: The PNG file to write.
        title: Figure title.

    Returns:
        ``path``.

    Raises:
        ValueError: If the matrix is not square or names do not match it.
    """
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"`matrix` must be square, got shape {matrix.shape}.")
    if len(class_names) != matrix.shape[0]:
        raise ValueError(
            f"`class_names` has {len(class_names)} names for a {matrix.shape[0]}-class matrix."
        )
    plt = pyplot()
    n = matrix.shape[0]
    size = max(5.0, 0.6 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                colour = "white" if rates[i, j] > 0.5 else "black"
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", color=colour, fontsize=8)
    accuracy = np.trace(matrix) / max(matrix.sum(), 1)
    ax.set_title(f"{title} (accuracy {accuracy:.1%})")
    return save_figure(fig, path)


def plot_roc_curves(
    targets: np.ndarray,
    probabilities: np.ndarray,
    label_names: Sequence[str],
    path: str | os.PathLike,
    title: str = "ROC curves",
) -> str:
    """Draws one ROC curve per label, its AUROC in the legend.

    Args:
        targets: ``(N, labels)`` 0/1 truth.
        probabilities: ``(N, labels)`` scores.
        label_names: One name per label.
        path: The PNG file to write.
        title: Figure title.

    Returns:
        ``path``.

    Raises:
        ValueError: If the shapes and names do not match.
    """
    from keras_densenet.scores import roc_auc, roc_curve

    targets, probabilities = np.asarray(targets), np.asarray(probabilities)
    if targets.shape != probabilities.shape or targets.ndim != 2:
        raise ValueError(
            f"`targets` and `probabilities` must be (examples, labels) of one shape, got "
            f"{targets.shape} and {probabilities.shape}."
        )
    if len(label_names) != targets.shape[1]:
        raise ValueError(
            f"`label_names` has {len(label_names)} names for {targets.shape[1]} labels."
        )
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 6))
    areas = []
    for i, name in enumerate(label_names):
        fpr, tpr = roc_curve(targets[:, i], probabilities[:, i])
        if fpr.size:
            areas.append(roc_auc(targets[:, i], probabilities[:, i]))
            ax.plot(fpr, tpr, lw=1.2, label=f"{name} ({areas[-1]:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    ax.set_title(f"{title} (macro AUROC {np.mean(areas) if areas else float('nan'):.3f})")
    return save_figure(fig, path)


def plot_feature_maps(
    model: Any,
    image: np.ndarray,
    layer_names: Sequence[str],
    path: str | os.PathLike,
    max_maps: int = 16,
    newest: bool = False,
) -> str:
    """Draws the feature maps of some layers for one image as image grids.

    Args:
        model: A functional Keras model (e.g. from `build_densenet`).
        image: One image ``(H, W, C)`` as the model takes it.
        layer_names: Top-level layers whose outputs to draw, e.g.
            ``["conv1_conv", "conv2"]``.
        path: The PNG file to write.
        max_maps: At most this many channels per layer.
        newest: Draw each layer's last channels instead of its first; for a
            `DenseBlock` those are the maps its layers added (the first ones
            are its input, passed through).

    Returns:
        ``path``.

    Raises:
        ValueError: For an unknown layer name or an image of the wrong rank.
    """
    import keras

    image = np.asarray(image, dtype="float32")
    if image.ndim != 3:
        raise ValueError(f"`image` must be (height, width, channels), got shape {image.shape}.")
    names = {layer.name for layer in model.layers}
    unknown = [n for n in layer_names if n not in names]
    if unknown or not layer_names:
        raise ValueError(f"Unknown `layer_names` {unknown}; the model's layers: {sorted(names)}.")
    probe = keras.Model(model.inputs, [model.get_layer(n).output for n in layer_names])
    outputs = probe.predict(image[None], verbose=0)
    if len(layer_names) == 1:
        outputs = [outputs]
    plt = pyplot()
    cols = min(max_maps, 8)
    rows_per = [math.ceil(min(max_maps, out.shape[-1]) / cols) for out in outputs]
    fig, axes = plt.subplots(
        sum(rows_per) + 1, cols, figsize=(1.6 * cols, 1.6 * (sum(rows_per) + 1)), squeeze=False
    )
    for ax in axes.ravel():
        ax.axis("off")
    shown = image if image.shape[-1] == 3 else image[..., 0]
    low, high = float(shown.min()), float(shown.max())
    axes[0, 0].imshow(
        (shown - low) / max(high - low, 1e-6), cmap=None if shown.ndim == 3 else "gray"
    )
    axes[0, 0].set_title("input", fontsize=8)
    row = 1
    for name, out, nrows in zip(layer_names, outputs, rows_per, strict=True):
        maps = out[0]
        count = min(max_maps, maps.shape[-1])
        first = maps.shape[-1] - count if newest else 0
        for k in range(count):
            ax = axes[row + k // cols, k % cols]
            ax.imshow(maps[..., first + k], cmap="viridis")
            ax.set_title(f"{name}[{first + k}]", fontsize=7)
        row += nrows
    return save_figure(fig, path)


def plot_model_diagram(model: Any, path: str | os.PathLike, **kwargs: Any) -> str:
    """Draws the model graph with ``keras.utils.plot_model``.

    Args:
        model: A Keras model.
        path: The PNG file to write.
        **kwargs: Passed to ``keras.utils.plot_model`` (e.g. ``show_shapes``).

    Returns:
        ``path``.

    Raises:
        RuntimeError: If pydot or Graphviz's ``dot`` is missing, saying how to
            install them.
    """
    import shutil

    import keras

    try:
        import pydot  # noqa: F401
    except ImportError as err:
        raise RuntimeError(
            "plot_model_diagram needs pydot and Graphviz: pip install pydot and install "
            "Graphviz (e.g. apt-get install graphviz)."
        ) from err
    if shutil.which("dot") is None:
        raise RuntimeError(
            "plot_model_diagram needs Graphviz's `dot` program: install Graphviz "
            "(e.g. apt-get install graphviz)."
        )
    from keras_densenet import _io

    path = os.fspath(path)
    kwargs.setdefault("show_shapes", True)
    with _io.atomic_path(path) as tmp:
        keras.utils.plot_model(model, to_file=tmp, **kwargs)
    return path
