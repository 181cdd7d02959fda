"""Train a preset on the full Fashion-MNIST and print one JSON line of results.

Uses the local IDX files (Debian's dataset-fashion-mnist) or a prepared TFDS
directory; nothing is downloaded unless --download is given.

    .venv/bin/python benchmarks/fashion_mnist.py --preset densenet_bc_100_12 --depth 40 \
        --epochs 3 --out runs/fmnist_bc40

Published reference on this data set (Fashion-MNIST benchmark table):
DenseNet-BC with 768K parameters 95.4% test accuracy, WRN40-4 96.7%.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark.

    Args:
        argv: Command-line arguments.

    Returns:
        The exit code.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="densenet_bc_100_12")
    parser.add_argument("--depth", type=int)
    parser.add_argument("--growth-rate", type=int)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--jit-compile", default="auto")
    parser.add_argument("--schedule", default="step")
    parser.add_argument("--data-dir")
    parser.add_argument("--download", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/fashion_mnist_benchmark")
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from keras_densenet.training import train

    options = {
        "preset": args.preset,
        "depth": args.depth,
        "growth_rate": args.growth_rate,
        "dataset": "fashion_mnist",
        "data_dir": args.data_dir,
        "download": args.download,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "precision": args.precision,
        "jit_compile": args.jit_compile,
        "schedule": args.schedule,
        "seed": args.seed,
        "validation_fraction": 0.1,
        "out": args.out,
        "resume": os.path.exists(os.path.join(args.out, "config.json")),
        "verbose": 2,
    }
    summary = train({k: v for k, v in options.items() if v is not None})
    print(
        json.dumps(
            {
                "benchmark": "fashion_mnist",
                "preset": args.preset,
                "depth": args.depth,
                "growth_rate": args.growth_rate,
                "test_accuracy": summary["test_accuracy"],
                "params": summary["params"],
                "trainable_params": summary["trainable_params"],
                "epochs": summary["epochs"],
                "batch_size": args.batch_size,
                "images_per_second": summary["images_per_second"],
                "wall_time_s": summary["wall_time_s"],
                "source": summary["source"],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
