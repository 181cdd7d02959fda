"""float32 against mixed_bfloat16 (and mixed_float16) training throughput, side by side.

Each (model, precision, repetition) runs in its own subprocess; precisions
alternate order between repetitions and the ratios against float32 are
taken within a repetition, so background load affects both sides alike. The
models are build_densenet's with the package's own optimizer (SGD, Nesterov,
weight decay), on a fixed synthetic batch. The CPU here has AVX512-BF16, so
oneDNN runs bfloat16 convolutions natively; mixed_float16 is emulated on CPUs.

    python -m benchmarks.precision --models densenet121 bc_100_12 bc_40_12_fmnist \
        --precisions float32 mixed_bfloat16 --repetitions 3
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from benchmarks.common import (
    RESULTS_DIR,
    emit_result,
    fmt,
    markdown_table,
    measure_training,
    median,
    ratio,
    run_worker,
    synthetic_batch,
    write_outputs,
)

MODULE = "benchmarks.precision"

#: Name -> (build_densenet arguments, batch size).
MODELS: dict[str, tuple[dict[str, Any], int]] = {
    "densenet121": ({"preset": "densenet121", "num_classes": 10}, 8),
    "bc_100_12": ({"preset": "densenet_bc_100_12"}, 64),
    "bc_40_12_fmnist": (
        {"preset": "densenet_bc_100_12", "depth": 40, "input_shape": (28, 28, 1)},
        64,  # the full Fashion-MNIST command's batch (128 measured slower here)
    ),
}


def _worker(config: dict[str, Any]) -> None:
    import keras

    from keras_densenet.models import build_densenet
    from keras_densenet.training import TrainConfig, make_optimizer

    keras.mixed_precision.set_dtype_policy(config["precision"])
    keras.utils.set_random_seed(0)
    arguments, batch = MODELS[config["model"]]
    model = build_densenet(**arguments)
    model.compile(
        optimizer=make_optimizer(TrainConfig(epochs=1), 1000, batch),
        loss="sparse_categorical_crossentropy",
        jit_compile=False,
    )
    x, y = synthetic_batch(batch, model.input_shape[1:], model.output_shape[-1])
    result = measure_training(model, x, y, steps=config["steps"], warmup=config["warmup"])
    emit_result({**result, "batch_size": batch})


def main(argv: list[str] | None = None) -> int:
    """Runs the comparison and writes ``benchmarks/results/precision*.{json,md}``.

    Args:
        argv: Command-line arguments.

    Returns:
        The exit code.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--precisions", nargs="+", default=["float32", "mixed_bfloat16"])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--output", default=str(RESULTS_DIR / "precision"))
    args = parser.parse_args(argv)
    if args.worker:
        _worker(json.loads(args.worker))
        return 0

    runs = []
    for repetition in range(args.repetitions):
        for model in args.models:
            order = args.precisions if repetition % 2 == 0 else args.precisions[::-1]
            for precision in order:
                config = {
                    "model": model,
                    "precision": precision,
                    "steps": args.steps,
                    "warmup": args.warmup,
                }
                result = run_worker(MODULE, config)
                runs.append({**config, "repetition": repetition, "result": result})
                rate = result.get("train_images_per_s")
                print(f"rep {repetition} {model} {precision}: {fmt(rate)} img/s", flush=True)
    rows = []
    for model in args.models:
        for precision in args.precisions:
            mine = [r for r in runs if r["model"] == model and r["precision"] == precision]
            rates = [r["result"].get("train_images_per_s") for r in mine]
            ratios = []
            for r in mine:
                base = next(
                    b
                    for b in runs
                    if b["model"] == model
                    and b["precision"] == "float32"
                    and b["repetition"] == r["repetition"]
                )
                ratios.append(
                    ratio(
                        r["result"].get("train_images_per_s"),
                        base["result"].get("train_images_per_s"),
                    )
                )
            rows.append(
                [
                    model,
                    precision,
                    MODELS[model][1],
                    fmt(median(rates)),
                    fmt(median(ratios), ".3f"),
                    ", ".join(fmt(x, ".3f") for x in ratios),
                    fmt(median(r["result"].get("train_cpu_s_per_step") for r in mine), ".3f"),
                ]
            )
    table = markdown_table(
        [
            "model",
            "precision",
            "batch",
            "train img/s (median)",
            "ratio to float32",
            "per repetition",
            "CPU s/step",
        ],
        rows,
    )
    print(table)
    from pathlib import Path

    write_outputs(Path(args.output), {"arguments": vars(args), "runs": runs}, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
