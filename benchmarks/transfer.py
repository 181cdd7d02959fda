"""Transfer on real data: fine-tuning from a source run against training from scratch.

The user's path, end to end, with the ``keras-densenet`` command:

1. Image folders are written from Fashion-MNIST's IDX files (Debian's
   dataset-fashion-mnist): the *source* task is classes 0-4 (T-shirt/top,
   Trouser, Pullover, Dress, Coat; all 30,000 training and 5,000 test images),
   the *target* task classes 5-9 (Sandal, Shirt, Sneaker, Bag, Ankle boot)
   with only ``--per-class`` labelled training images per class and all
   5,000 test images.
2. ``train`` on the source folder.
3. ``train --weights SOURCE_RUN`` on the target folder with each of
   ``--recipes`` (``FREEZE_EPOCHS:BACKBONE_LR_SCALE``: the head alone for that
   many epochs, then everything with the backbone at that fraction of the
   learning rate), and the same model, epochs and options from scratch, for
   each of ``--seeds``.
4. Throughput of an epoch from scratch, frozen and unfrozen, on the source
   folder (enough images for steady-state epochs).

    .venv/bin/python -m benchmarks.transfer --out benchmarks/results/transfer

Writes ``OUT.json`` and ``OUT.md`` (the table and the commands); the run
directories and image folders go to ``--work``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import markdown_table, write_outputs
from keras_densenet.data.idx import FASHION_MNIST_CLASSES

#: Folder names: Fashion-MNIST's class names ("T-shirt/top" has a slash).
CLASS_NAMES = tuple(name.replace("/", "_") for name in FASHION_MNIST_CLASSES)
SOURCE_CLASSES, TARGET_CLASSES = range(5), range(5, 10)
PROG = [sys.executable, "-m", "keras_densenet"]


def write_folder(
    root: Path,
    images: np.ndarray,
    labels: np.ndarray,
    classes: range,
    per_class: int | None,
    seed: int,
) -> int:
    """Writes ``root/<class>/<index>.png`` for the given classes; returns the count.

    A folder already complete (a ``.complete`` marker) is kept as it is.
    """
    from PIL import Image

    if (root / ".complete").exists():
        return sum(1 for _ in root.rglob("*.png"))
    rng = np.random.default_rng(seed)
    count = 0
    for label in classes:
        indices = np.flatnonzero(labels == label)
        if per_class is not None:
            indices = np.sort(rng.choice(indices, per_class, replace=False))
        folder = root / CLASS_NAMES[label]
        folder.mkdir(parents=True, exist_ok=True)
        for index in indices:
            Image.fromarray(images[index].reshape(28, 28)).save(folder / f"{index:05d}.png")
        count += len(indices)
    (root / ".complete").write_text("")
    return count


def run(args: list[str]) -> dict[str, Any]:
    """Runs ``keras-densenet ARGS`` (echoed), then reads the run's summary.json."""
    print("$ keras-densenet " + " ".join(args), flush=True)
    started = time.perf_counter()
    subprocess.run([*PROG, *args], check=True)
    out = args[args.index("--out") + 1]
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    summary["command"] = "keras-densenet " + " ".join(args)
    summary["process_s"] = round(time.perf_counter() - started, 1)
    return summary


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark.

    Args:
        argv: Command-line arguments.

    Returns:
        The exit code.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--work", default="runs/transfer", help="image folders and runs")
    parser.add_argument("--out", default="benchmarks/results/transfer")
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--source-epochs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30, help="fine-tuning and scratch")
    parser.add_argument(
        "--recipes",
        nargs="+",
        default=["0:1.0", "10:1.0", "10:0.1"],
        help="fine-tuning recipes FREEZE_EPOCHS:BACKBONE_LR_SCALE, each against scratch",
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=0.05)
    parser.add_argument("--architecture", default="--preset densenet_bc_100_12 --depth 40")
    parser.add_argument("--seed", type=int, default=0, help="the data's and the source's")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="target runs'")
    parser.add_argument("--timing-steps", type=int, default=30)
    args = parser.parse_args(argv)

    from keras_densenet.data.idx import read_idx_split

    work = Path(args.work)
    train_images, train_labels = read_idx_split(args.data_dir, "train", 10)
    test_images, test_labels = read_idx_split(args.data_dir, "test", 10)
    source, target = work / "source_images", work / "target_images"
    sizes = {
        "source_train": write_folder(
            source / "train", train_images, train_labels, SOURCE_CLASSES, None, args.seed
        ),
        "source_test": write_folder(
            source / "test", test_images, test_labels, SOURCE_CLASSES, None, args.seed
        ),
        "target_train": write_folder(
            target / "train",
            train_images,
            train_labels,
            TARGET_CLASSES,
            args.per_class,
            args.seed,
        ),
        "target_test": write_folder(
            target / "test", test_images, test_labels, TARGET_CLASSES, None, args.seed
        ),
    }
    print(json.dumps(sizes), flush=True)
    arch = args.architecture.split()
    common = ["--seed", str(args.seed), "--quiet", "--resume"]
    source_run = run(
        [
            "train",
            *arch,
            "--dataset",
            str(source),
            "--epochs",
            str(args.source_epochs),
            "--batch-size",
            "64",
            *common,
            "--out",
            str(work / "source"),
        ]
    )
    target_args = [
        *arch,
        "--dataset",
        str(target),
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(args.batch_size),
        "--learning-rate",
        str(args.learning_rate),
        "--validation-fraction",
        "0.2",
        "--quiet",
        "--resume",
    ]
    pretrained = ["--weights", str(work / "source")]
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for seed in args.seeds:
        seeded = [*target_args, "--seed", str(seed)]
        runs.setdefault("scratch", {})[seed] = run(
            ["train", *seeded, "--out", str(work / f"scratch_s{seed}")]
        )
        for recipe in args.recipes:
            freeze, scale = recipe.split(":")
            name = f"fine-tuned, {freeze} frozen epochs, backbone lr x{scale}"
            recipe_flags = ["--freeze-epochs", freeze, "--backbone-lr-scale", scale]
            out = str(work / f"ft_f{freeze}_x{scale}_s{seed}")
            runs.setdefault(name, {})[seed] = run(
                ["train", *seeded, *pretrained, *recipe_flags, "--out", out]
            )

    # Throughput: 3 epochs of --timing-steps on the big source folder, the first left out.
    timing = ["--dataset", str(source), "--epochs", "3", "--steps-per-epoch"]
    timing += [str(args.timing_steps), "--batch-size", "64", "--bn-recalibrate-steps", "1"]
    frozen_out = str(work / "t_frozen")
    speed = {
        "scratch": run(["train", *arch, *timing, *common, "--out", str(work / "t_scratch")]),
        "frozen": run(
            [
                "train",
                *arch,
                *timing,
                *common,
                *pretrained,
                "--freeze-epochs",
                "3",
                "--out",
                frozen_out,
            ]
        ),
        "unfrozen": run(
            ["train", *arch, *timing, *common, *pretrained, "--out", str(work / "t_unfrozen")]
        ),
    }
    rates = {name: s["images_per_second"] for name, s in speed.items()}
    accuracy = {
        name: {seed: r["test_accuracy"] for seed, r in by_seed.items()}
        for name, by_seed in runs.items()
    }
    scratch = accuracy["scratch"]
    rows = [["source (classes 0-4, all images)", f"{source_run['test_accuracy']:.4f}", "", ""]]
    for name, by_seed in accuracy.items():
        gains = [by_seed[seed] - scratch[seed] for seed in by_seed]
        rows.append(
            [
                f"{name} (classes 5-9)",
                " / ".join(f"{v:.4f}" for v in by_seed.values()),
                f"{np.mean(list(by_seed.values())):.4f}",
                "" if name == "scratch" else " / ".join(f"{g * 100:+.1f}" for g in gains),
            ]
        )
    seeds = " / ".join(f"seed {seed}" for seed in args.seeds)
    table = markdown_table(
        ["run", f"test accuracy ({seeds})", "mean", "points above scratch"], rows
    )
    speed_table = markdown_table(
        ["epoch", "images/s", "vs scratch"],
        [[k, f"{v:.1f}", f"{v / rates['scratch']:.2f}x"] for k, v in rates.items()],
    )
    commands = "\n".join(
        [source_run["command"]]
        + [r["command"] for by_seed in runs.values() for r in by_seed.values()]
        + [s["command"] for s in speed.values()]
    )
    markdown = (
        f"# Transfer: {args.per_class} labelled images per class, {args.epochs} epochs\n\n"
        f"{table}\n\n{speed_table}\n\n```\n{commands}\n```\n"
    )
    payload = {
        "benchmark": "transfer",
        "sizes": sizes,
        "args": vars(args),
        "source": source_run,
        "runs": runs,
        "test_accuracy": accuracy,
        "images_per_second": rates,
    }
    for path in write_outputs(Path(args.out), payload, markdown):
        print(f"wrote {path}")
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
