"""The results of a search: one row per trial, a CSV/JSON table and a plot."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import keras_tuner

from keras_densenet import _io
from keras_densenet._io import write_json
from keras_densenet.architecture import resolve_config
from keras_densenet.tuning.hypermodel import DenseNetHyperModel, PrunedTrialError
from keras_densenet.tuning.space import ARCH_FIELDS
from keras_densenet.tuning.tuners import TRIAL_INFO, is_pruned

_CSV_COLUMNS = (
    "rank",
    "trial_id",
    "status",
    "objective",
    "score",
    "trainable_params",
    "epochs",
    "time_s",
    *ARCH_FIELDS,
    "tuner_id",
    "note",
)


def _read_json(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def _last_line(message: str | None) -> str:
    lines = [line.strip() for line in (message or "").splitlines() if line.strip()]
    if not lines:
        return ""
    line = lines[-1]
    prefix = f"{PrunedTrialError.__module__}.{PrunedTrialError.__name__}: "
    return line[len(prefix) :] if line.startswith(prefix) else line


def collect_results(tuner: keras_tuner.Tuner, hypermodel: DenseNetHyperModel) -> list[dict]:
    """One row per trial of a (chief's or standalone) tuner, best first.

    Completed trials come first, by their score (validation accuracy, or
    the macro AUROC for multi-label data; then fewer
    parameters); failed, pruned and unfinished ones follow by trial id.

    Args:
        tuner: A tuner `make_tuner` made (not a distributed worker's).
        hypermodel: Its hypermodel.

    Returns:
        Rows with ``rank``, ``trial_id``, ``status`` (``COMPLETED``,
        ``PRUNED``, ``FAILED``, ``RUNNING``, ...), ``objective`` (the
        metric: ``val_accuracy``, or ``val_auroc`` for multi-label data),
        ``score`` and the same value under the objective's name,
        ``trainable_params``, ``epochs``, ``time_s``, ``tuner_id``,
        ``note``, ``architecture`` and ``hyperparameters``.
    """
    rows = []
    for trial in tuner.oracle.trials.values():
        hp = trial.hyperparameters.copy()
        architecture = hypermodel.architecture(hp)
        config = hypermodel.trial_config(hp)
        info = _read_json(os.path.join(tuner.get_trial_dir(trial.trial_id), TRIAL_INFO)) or {}
        status = "PRUNED" if is_pruned(trial) else str(trial.status)
        completed = status == "COMPLETED"
        epochs = info.get("epochs") if completed else None
        if completed and epochs is None:
            epochs = trial.hyperparameters.values.get("tuner/epochs", hypermodel.base.epochs)
        resolved = resolve_config(None, **config.architecture())
        rows.append(
            {
                "rank": None,
                "trial_id": trial.trial_id,
                "status": status,
                "objective": hypermodel.objective,
                "score": float(trial.score) if completed else None,
                hypermodel.objective: float(trial.score) if completed else None,
                "trainable_params": hypermodel.trainable_params(config),
                "epochs": epochs,
                "time_s": info.get("time_s"),
                "tuner_id": info.get("tuner_id"),
                "note": "" if completed else _last_line(trial.message),
                "architecture": {
                    **architecture,
                    "depth": config.depth,
                    "blocks": list(resolved["blocks"]),
                },
                "hyperparameters": dict(trial.hyperparameters.values),
            }
        )
    done = sorted(
        (r for r in rows if r["status"] == "COMPLETED"),
        key=lambda r: (-r["score"], r["trainable_params"], r["trial_id"]),
    )
    for rank, row in enumerate(done, 1):
        row["rank"] = rank
    rest = sorted((r for r in rows if r["status"] != "COMPLETED"), key=lambda r: r["trial_id"])
    return done + rest


def write_results(rows: Sequence[Mapping[str, Any]], out: str | os.PathLike) -> tuple[str, str]:
    """Writes ``results.csv`` and ``results.json`` atomically.

    Args:
        rows: Rows from `collect_results`.
        out: The tuning directory.

    Returns:
        The paths of the CSV and JSON files.
    """
    out = os.fspath(out)
    json_path = os.path.join(out, "results.json")
    write_json(json_path, list(rows))
    csv_path = os.path.join(out, "results.csv")
    # The objective's own column too (val_accuracy, or val_auroc for multi-label data).
    objective = rows[0].get("objective", "val_accuracy") if rows else "val_accuracy"
    at = _CSV_COLUMNS.index("score") + 1
    columns = [*_CSV_COLUMNS[:at], objective, *_CSV_COLUMNS[at:]]
    with _io.atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            flat = {k: row.get(k) for k in columns}
            arch = row["architecture"]
            flat.update({k: arch.get(k) for k in columns if k in arch})
            flat["blocks"] = "-".join(map(str, arch["blocks"]))
            writer.writerow({k: "" if v is None else v for k, v in flat.items()})
    return csv_path, json_path


def _plot_completed(fig: Any, ax: Any, plt: Any, done: Sequence[Mapping[str, Any]]) -> None:
    """The completed trials, coloured by growth rate, labelled, the best starred."""
    growth = [r["architecture"]["growth_rate"] for r in done]
    points = ax.scatter(
        [r["trainable_params"] for r in done],
        [r["score"] for r in done],
        c=growth,
        cmap="viridis",
        vmin=min(growth) - (min(growth) == max(growth)) * 2,  # one k: a readable bar
        vmax=max(growth) + (min(growth) == max(growth)) * 2,
        s=45,
        edgecolors="black",
        linewidths=0.5,
        label=f"completed trials ({len(done)})",
    )
    colorbar = fig.colorbar(points, ax=ax, label="growth rate k")
    colorbar.locator = plt.MaxNLocator(integer=True)
    colorbar.update_ticks()
    if len(done) <= 30:  # label points while that stays readable
        for r in done:
            ax.annotate(
                r["trial_id"],
                (r["trainable_params"], r["score"]),
                xytext=(4, 4),
                textcoords="offset points",
                fontsize=7,
            )
    best = done[0]
    ax.scatter(
        [best["trainable_params"]],
        [best["score"]],
        marker="*",
        s=320,
        c="red",
        edgecolors="black",
        zorder=3,
        label=f"best: trial {best['trial_id']} ({best['score']:.4f})",
    )


def plot_results(
    rows: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    *,
    max_params: int | None = None,
    title: str = "",
) -> str:
    """Scatter of validation accuracy against trainable parameters.

    Completed trials are coloured by growth rate; the best is starred; the
    parameter budget, if any, is a dashed line and pruned trials are counted
    in the legend. Written atomically with matplotlib's Agg backend.

    Args:
        rows: Rows from `collect_results`.
        path: The PNG file.
        max_params: The parameter budget to draw, if any.
        title: Figure title.

    Returns:
        ``path``.
    """
    from keras_densenet.viz import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    done = [r for r in rows if r["status"] == "COMPLETED"]
    if done:
        _plot_completed(fig, ax, plt, done)
    pruned = [r for r in rows if r["status"] == "PRUNED"]
    if pruned:  # no accuracy: marked along the bottom edge at their size
        ax.scatter(
            [r["trainable_params"] for r in pruned],
            [0.03] * len(pruned),
            transform=ax.get_xaxis_transform(),
            marker="x",
            c="gray",
            label=f"pruned before building ({len(pruned)})",
        )
    if max_params is not None:
        ax.axvline(max_params, color="gray", linestyle="--", label=f"budget {max_params:,}")
    sizes = [r["trainable_params"] for r in (*done, *pruned)] + (
        [max_params] if max_params is not None else []
    )
    if sizes:  # the pruned marks do not widen the axis on their own
        ax.set_xscale("log")
        ax.set_xlim(min(sizes) / 1.6, max(sizes) * 1.6)
    if not done:
        ax.set_ylim(0.0, 1.0)
    failed = sum(r["status"] not in ("COMPLETED", "PRUNED") for r in rows)
    if failed:
        ax.plot([], [], " ", label=f"failed or unfinished: {failed}")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel(f"best {done[0]['objective'] if done else 'val_accuracy'}")
    ax.grid(alpha=0.3, which="both")
    ax.margins(y=0.12)
    ax.legend(loc="best", fontsize=8, framealpha=0.8)
    ax.set_title(title or f"{len(rows)} trials")
    return save_figure(fig, path)


__all__ = ["collect_results", "plot_results", "write_results"]
