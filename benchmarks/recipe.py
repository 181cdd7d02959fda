"""Which training defaults give the best test accuracy in a short CPU run?

Trains one small DenseNet-BC per configuration of a grid (BatchNorm momentum x
BN recalibration x learning-rate schedule x warm-up x label smoothing, and
growth rate, batch size, learning rate, weight decay, precision), each in
a fresh subprocess with the same seed, and records for each: test accuracy
before and after BN recalibration (PreciseBN), the last epoch's training and
validation accuracy, the statistics validation kept for the final model, and
the wall time. Writes a markdown table and JSON under
``benchmarks/results/``.

    # the issue's 2-epoch command, on the embedded sample (about 20 min on 2 cores)
    python -m benchmarks.recipe --dataset fashion_mnist_sample --epochs 2 --tag sample_2ep
    # one epoch of full Fashion-MNIST (the Debian IDX files), L=22 (about 27 min)
    python -m benchmarks.recipe --dataset fashion_mnist --depth 22 --epochs 1 --recalibrate 30 \
        --tag fashion_mnist_1ep
    # only some axes, e.g. the README's 10-epoch job; every axis takes several values
    python -m benchmarks.recipe --epochs 10 --batch-size 32 --bn-momentum 0.9 \
        --recalibrate 30 --schedule step cosine --warmup 0 1 --label-smoothing 0 0.1 \
        --tag sample_10ep
    python -m benchmarks.recipe --epochs 10 --batch-size 16 32 --learning-rate default 0.1 \
        --bn-momentum 0.9 --recalibrate 30 --schedule cosine --label-smoothing 0.1 --tag lr
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
import tempfile
from typing import Any

from benchmarks.common import (
    RESULTS_DIR,
    emit_result,
    markdown_table,
    run_worker,
    write_outputs,
)


def _worker(config: dict[str, Any]) -> None:
    from keras_densenet.training import train

    out = tempfile.mkdtemp(prefix="recipe-")
    try:
        summary = train({**config, "out": os.path.join(out, "run"), "verbose": 0})
    finally:
        shutil.rmtree(out, ignore_errors=True)
    emit_result(
        {
            "test_accuracy": summary["test_accuracy"],
            "test_accuracy_before_recalibration": summary["test_accuracy_before_recalibration"],
            "test_accuracy_after_recalibration": summary["test_accuracy_after_recalibration"],
            "bn_statistics": summary["bn_statistics"],
            "train_accuracy": summary["final"]["accuracy"],
            "val_accuracy": summary["final"].get("val_accuracy"),
            "images_per_second": summary["images_per_second"],
            "wall_time_s": summary["wall_time_s"],
            "params": summary["params"],
        }
    )


def main(argv: list[str] | None = None) -> int:
    """Runs the grid and writes the report.

    Args:
        argv: Command-line arguments.

    Returns:
        The exit code.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--dataset", default="fashion_mnist_sample")
    parser.add_argument("--preset", default="densenet_bc_100_12")
    parser.add_argument("--depth", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps-per-epoch", type=int)
    parser.add_argument("--seed", type=int, default=0)
    for flag, kind, default in _AXES:
        parser.add_argument(f"--{flag}", type=kind, nargs="+", default=default)
    parser.add_argument("--tag", default="recipe")
    args = parser.parse_args(argv)
    if args.worker:
        _worker(json.loads(args.worker))
        return 0

    base = {
        "preset": args.preset,
        "depth": args.depth,
        "dataset": args.dataset,
        "epochs": args.epochs,
        "steps_per_epoch": args.steps_per_epoch,
        "seed": args.seed,
    }
    base = {k: v for k, v in base.items() if v is not None}
    keys = [_CONFIG_KEYS[flag] for flag, _, _ in _AXES]
    values = [getattr(args, flag.replace("-", "_")) for flag, _, _ in _AXES]
    rows, results = [], []
    for combination in itertools.product(*values):
        config = {**base, **dict(zip(keys, combination, strict=True))}
        config = {k: v for k, v in config.items() if v is not None}
        result = run_worker("benchmarks.recipe", config, timeout=6 * 3600)
        results.append({"config": config, **result})
        if "error" in result:
            print(f"failed: {config}: {result['error'][-300:]}", file=sys.stderr)
            continue
        before = result["test_accuracy_before_recalibration"]
        after = result["test_accuracy_after_recalibration"]
        row = [
            *("default" if v is None else v for v in combination),
            f"{result['train_accuracy']:.4f}",
            f"{result['val_accuracy']:.4f}",
            "-" if before is None else f"{before:.4f}",
            "-" if after is None else f"{after:.4f}",
            result["bn_statistics"],
            f"{result['test_accuracy']:.4f}",
            f"{result['wall_time_s']:.0f}",
        ]
        rows.append(row)
        print(" | ".join(map(str, row)), flush=True)
    headers = [
        *(flag.replace("-", " ") for flag, _, _ in _AXES),
        "final train acc",
        "final val acc",
        "test acc before recal.",
        "test acc after recal.",
        "statistics kept (by validation)",
        "test acc",
        "wall s",
    ]
    title = (
        f"# Recipe grid: {args.dataset}, {args.preset} L={args.depth}, "
        f"{args.epochs} epochs, seed {args.seed}\n\n"
    )
    table = markdown_table(headers, rows)
    print(table)
    payload = {"arguments": vars(args), "results": results}
    write_outputs(RESULTS_DIR / f"recipe_{args.tag}", payload, title + table)
    return 0


def _optional_float(text: str) -> float | None:
    return None if text == "default" else float(text)


#: The grid's axes: flag, type, default values. Every combination is trained.
_AXES: list[tuple[str, Any, list[Any]]] = [
    ("growth-rate", int, [12]),
    ("batch-size", int, [64]),
    ("learning-rate", _optional_float, [None]),
    ("weight-decay", float, [1e-4]),
    ("bn-momentum", float, [0.99, 0.9]),
    ("recalibrate", int, [0, 50]),
    ("schedule", str, ["step", "cosine"]),
    ("warmup", float, [0.0]),
    ("label-smoothing", float, [0.0, 0.1]),
    ("precision", str, ["float32"]),
]
_CONFIG_KEYS = {
    "growth-rate": "growth_rate",
    "batch-size": "batch_size",
    "learning-rate": "learning_rate",
    "weight-decay": "weight_decay",
    "bn-momentum": "bn_momentum",
    "recalibrate": "bn_recalibrate_steps",
    "schedule": "schedule",
    "warmup": "warmup_epochs",
    "label-smoothing": "label_smoothing",
    "precision": "precision",
}


if __name__ == "__main__":
    sys.exit(main())
