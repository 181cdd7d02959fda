"""Which training defaults give the best test accuracy in a short CPU run?

Trains one small DenseNet-BC per configuration of a grid (BatchNorm momentum x
BN recalibration x learning-rate schedule x warm-up x label smoothing), each in
a fresh subprocess with the same seed, and records for each: test accuracy
before and after BN recalibration (PreciseBN), the last epoch's training and
validation accuracy, and the wall time. Writes a markdown table and JSON under
``benchmarks/results/``.

    # the issue's 2-epoch command, on the embedded sample (about 20 min on 2 cores)
    python -m benchmarks.recipe --dataset fashion_mnist_sample --epochs 2 --tag sample_2ep
    # only some axes, e.g. the README's 10-epoch job
    python -m benchmarks.recipe --epochs 10 --bn-momentum 0.9 --recalibrate 50 \
        --schedule step cosine --warmup 0 1 --label-smoothing 0 0.1 --tag sample_10ep
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
    parser.add_argument("--growth-rate", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps-per-epoch", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bn-momentum", type=float, nargs="+", default=[0.99, 0.9])
    parser.add_argument("--recalibrate", type=int, nargs="+", default=[0, 50])
    parser.add_argument("--schedule", nargs="+", default=["step", "cosine"])
    parser.add_argument("--warmup", type=float, nargs="+", default=[0.0])
    parser.add_argument("--label-smoothing", type=float, nargs="+", default=[0.0, 0.1])
    parser.add_argument("--precision", nargs="+", default=["float32"])
    parser.add_argument("--tag", default="recipe")
    args = parser.parse_args(argv)
    if args.worker:
        _worker(json.loads(args.worker))
        return 0

    base = {
        "preset": args.preset,
        "depth": args.depth,
        "growth_rate": args.growth_rate,
        "dataset": args.dataset,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "steps_per_epoch": args.steps_per_epoch,
        "seed": args.seed,
    }
    base = {k: v for k, v in base.items() if v is not None}
    rows, results = [], []
    grid = itertools.product(
        args.bn_momentum,
        args.recalibrate,
        args.schedule,
        args.warmup,
        args.label_smoothing,
        args.precision,
    )
    for momentum, steps, schedule, warmup, smoothing, precision in grid:
        config = {
            **base,
            "bn_momentum": momentum,
            "bn_recalibrate_steps": steps,
            "schedule": schedule,
            "warmup_epochs": warmup,
            "label_smoothing": smoothing,
            "precision": precision,
        }
        result = run_worker("benchmarks.recipe", config, timeout=6 * 3600)
        results.append({"config": config, **result})
        if "error" in result:
            print(f"failed: {config}: {result['error'][-300:]}", file=sys.stderr)
            continue
        before = result["test_accuracy_before_recalibration"]
        row = [
            momentum,
            steps,
            schedule,
            warmup,
            smoothing,
            precision,
            f"{result['train_accuracy']:.4f}",
            f"{result['val_accuracy']:.4f}",
            "-" if before is None else f"{before:.4f}",
            f"{result['test_accuracy']:.4f}",
            f"{result['wall_time_s']:.0f}",
        ]
        rows.append(row)
        print(" | ".join(map(str, row)), flush=True)
    headers = [
        "bn momentum",
        "recalibration steps",
        "schedule",
        "warm-up epochs",
        "label smoothing",
        "precision",
        "final train acc",
        "final val acc",
        "test acc before recal.",
        "test acc",
        "wall s",
    ]
    title = (
        f"# Recipe grid: {args.dataset}, {args.preset} L={args.depth} k={args.growth_rate}, "
        f"{args.epochs} epochs, batch {args.batch_size}, seed {args.seed}\n\n"
    )
    table = markdown_table(headers, rows)
    print(table)
    payload = {"arguments": vars(args), "results": results}
    write_outputs(RESULTS_DIR / f"recipe_{args.tag}", payload, title + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
