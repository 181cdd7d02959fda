"""Several labels per image on real data: 2x2 mosaics of Fashion-MNIST items.

The user's path, end to end, with the ``keras-densenet`` command:

1. `keras_densenet.data.mosaics.make_mosaics` writes 56x56 mosaics of 1-4
   real Fashion-MNIST items (training mosaics from the training images, test
   mosaics from the test images) and their label file; ``--rare`` writes a
   second set where one class is in only 5% of the mosaics.
2. ``train --labels labels.csv`` on the balanced set (the macro AUROC
   target), and on the rare set without and with ``--class-weight balanced``
   (that class's recall at its tuned threshold).
3. The pointing game on the balanced run's test mosaics: for each mosaic, the
   Grad-CAM of its highest-scoring true label; a hit when the heatmap's
   maximum is in a quadrant that holds that class; against random heatmaps.

    .venv/bin/python -m benchmarks.multilabel --out benchmarks/results/multilabel

Writes ``OUT.json`` and ``OUT.md``; mosaics and run directories go to ``--work``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import environment, markdown_table, write_outputs

PROG = [sys.executable, "-m", "keras_densenet"]
RARE_CLASS = 0  # T-shirt/top
RARE_NAME = "T-shirt-top"


def _mosaics(
    work: Path, name: str, train: int, test: int, rare: bool, rare_in_test: bool = True
) -> Path:
    from keras_densenet.data.mosaics import LABELS_FILE, make_mosaics

    directory = work / name
    if (directory / LABELS_FILE).is_file():
        return directory / LABELS_FILE
    return Path(
        make_mosaics(
            directory,
            train,
            test,
            seed=0,
            rare_class=RARE_CLASS if rare else None,
            rare_fraction=0.05,
            rare_in_test=rare_in_test,
        )
    )


def _train(labels: Path, out: Path, args: argparse.Namespace, *extra: str) -> dict[str, Any]:
    command = [
        *PROG, "train", "--labels", str(labels), "--out", str(out),
        *args.arch.split(), "--epochs", str(args.epochs),
        "--batch-size", str(args.batch_size), "--seed", "0", *extra,
    ]  # fmt: skip
    if not (out / "summary.json").is_file():  # a finished run is reported as it is
        subprocess.run(command, check=True)
    summary = json.loads((out / "summary.json").read_text())
    evaluation = json.loads((out / "evaluation.json").read_text())
    import tempfile

    from keras_densenet.evaluation import evaluate

    with tempfile.TemporaryDirectory() as scratch:  # the run's own evaluation.json stays
        half = [0.5] * len(summary["class_names"])
        at_half = evaluate(str(out), out=scratch, thresholds=half)
    return {
        "recall_at_0.5": {n: s["recall"] for n, s in at_half["per_label"].items()},
        "precision_at_0.5": {n: s["precision"] for n, s in at_half["per_label"].items()},
        "command": " ".join(command[2:]),
        "wall_minutes": round(summary["wall_time_s"] / 60, 2),
        "test_macro_auroc": summary["test_macro_auroc"],
        "test_auroc": summary["test_auroc"],
        "per_label": evaluation["per_label"],
        "params": summary["params"],
        "images_per_second": summary["images_per_second"],
    }


def pointing(run: Path, mosaics: Path, count: int) -> dict[str, float]:
    """Grad-CAM pointing-game hit rate on ``count`` test mosaics, and random heatmaps'."""
    from PIL import Image

    from keras_densenet import rundir
    from keras_densenet.data.mosaics import pointing_game, read_quadrants
    from keras_densenet.explain import grad_cam

    model = rundir.load_model(run / "best.keras", compile=False)
    names = json.loads((run / "summary.json").read_text())["class_names"]
    layout = read_quadrants(mosaics.parent)
    files = sorted(k for k in layout if k.startswith("test/"))[:count]
    images = np.stack([np.asarray(Image.open(mosaics.parent / f))[..., None] for f in files])
    scores = np.asarray(model.predict(images, verbose=0))
    targets, classes = [], []
    for row, file in zip(scores, files, strict=True):
        present = [names.index(c) for c in layout[file] if c is not None]
        best = max(present, key=lambda i: row[i])
        classes.append(best)
        targets.append(names[best])
    heatmaps = np.concatenate(
        [
            grad_cam(model, images[i : i + 64], class_index=classes[i : i + 64])
            for i in range(0, len(images), 64)
        ]
    )
    cells = [layout[f] for f in files]
    rng = np.random.default_rng(0)
    random = rng.random(heatmaps.shape)
    return {
        "mosaics": len(files),
        "grad_cam_hit_rate": pointing_game(heatmaps, cells, targets),
        "random_hit_rate": pointing_game(random, cells, targets),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/multilabel")
    parser.add_argument("--work", default="/tmp/bench/multilabel")
    parser.add_argument("--train", type=int, default=12000, help="training mosaics")
    parser.add_argument("--test", type=int, default=2000, help="test mosaics")
    parser.add_argument(
        "--arch",
        default="--preset densenet121 --blocks 6,12,12 --growth-rate 16",
        help="architecture flags of `train` (default: three blocks on the ImageNet stem)",
    )
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rare", action="store_true", help="also the rare-class pair")
    parser.add_argument("--rare-epochs", type=int, default=8)
    parser.add_argument(
        "--rare-train-only",
        action="store_true",
        help="also the pair where the class is rare in training only (a balanced test set)",
    )
    parser.add_argument("--pointing", type=int, default=1000, help="test mosaics for pointing")
    args = parser.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    labels = _mosaics(work, "mosaics", args.train, args.test, rare=False)
    results: dict[str, Any] = {"environment": environment(), "args": vars(args)}
    results["balanced"] = _train(labels, work / "run-balanced", args)
    results["pointing"] = pointing(work / "run-balanced", labels, args.pointing)
    if args.rare:
        rare = _mosaics(work, "mosaics-rare", args.train, args.test, rare=True)
        short = argparse.Namespace(**{**vars(args), "epochs": args.rare_epochs})
        results["rare_plain"] = _train(rare, work / "run-rare", short)
        results["rare_weighted"] = _train(
            rare, work / "run-rare-weighted", short, "--class-weight", "balanced"
        )
        if args.rare_train_only:
            rare = _mosaics(work, "mosaics-rare-train", args.train, args.test, True, False)
            results["rare_train_plain"] = _train(rare, work / "run-rare-train", short)
            results["rare_train_weighted"] = _train(
                rare, work / "run-rare-train-weighted", short, "--class-weight", "balanced"
            )
    write_outputs(Path(args.out), results, _markdown(results))
    print(_markdown(results))
    return 0


def _markdown(results: dict[str, Any]) -> str:
    balanced = results["balanced"]
    rows = [
        [name, f"{scores['auroc']:.4f}", f"{scores['recall']:.3f}", f"{scores['precision']:.3f}",
         f"{scores['threshold']:.3f}", scores["support"]]
        for name, scores in balanced["per_label"].items()
    ]  # fmt: skip
    text = [
        f"`{balanced['command']}`: test macro AUROC **{balanced['test_macro_auroc']:.4f}** in "
        f"{balanced['wall_minutes']} min ({balanced['images_per_second']:.0f} images/s, "
        f"{balanced['params']:,} params)",
        "",
        markdown_table(["label", "AUROC", "recall", "precision", "threshold", "positives"], rows),
        "",
        "Pointing game: Grad-CAM {grad_cam_hit_rate:.3f}, random heatmaps {random_hit_rate:.3f} "
        "({mosaics} test mosaics)".format(**results["pointing"]),
    ]
    if "rare_plain" in results:
        rows = []
        keys = ("rare_plain", "rare_weighted", "rare_train_plain", "rare_train_weighted")
        for key in (k for k in keys if k in results):
            run = results[key]
            rare = run["per_label"][RARE_NAME]
            half = (run["recall_at_0.5"][RARE_NAME], run["precision_at_0.5"][RARE_NAME])
            rows.append(
                [f"`{run['command']}`", f"{run['test_macro_auroc']:.4f}", f"{rare['auroc']:.4f}",
                 f"{rare['recall']:.3f} / {rare['precision']:.3f} at {rare['threshold']:.3f}",
                 f"{half[0]:.3f} / {half[1]:.3f}",
                 run["wall_minutes"]]
            )  # fmt: skip
        text += [
            "",
            f"Rare class {RARE_NAME} in 5% of the mosaics (the last two rows, if any: in 5% of "
            "the training mosaics only, the test mosaics balanced):",
            "",
            markdown_table(
                [
                    "command",
                    "macro AUROC",
                    "rare AUROC",
                    "rare recall / precision at its tuned threshold",
                    "rare recall / precision at 0.5",
                    "minutes",
                ],
                rows,
            ),
        ]
    return "\n".join(text) + "\n"


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    raise SystemExit(main())
