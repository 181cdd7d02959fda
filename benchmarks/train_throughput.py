"""Training and inference throughput: build_densenet against keras.applications.

The same architecture is built by ``keras_densenet.build_densenet`` and by
``keras.applications``' generic ``DenseNet(blocks, ...)`` builder (which is
what ``keras.applications.DenseNet121`` calls), and both are trained on the
same synthetic batch with the same optimizer, loss, backend and dtype policy.

Each (model, XLA, implementation) configuration runs in its own subprocess so
that its peak memory is its own. Implementations are run back to back and in
alternating order in every repetition, and the ratios ours/keras.applications
are taken within a repetition, so a change in background load affects both
sides of a ratio alike. Reported values are medians over repetitions.

Example:
    python -m benchmarks.train_throughput --models densenet121 --batch-size 8 \
        --steps 5 --repetitions 3 --jit-compile both
"""

from __future__ import annotations

import argparse
import json
from itertools import product
from pathlib import Path
from typing import Any

from benchmarks.common import (
    RESULTS_DIR,
    fmt,
    markdown_table,
    measure_training,
    median,
    mib,
    ratio,
    run_worker,
    synthetic_batch,
    write_outputs,
)

MODULE = "benchmarks.train_throughput"

#: Model name -> (blocks, input shape, classes, default batch size). Both are
#: ImageNet-stem DenseNet-BC k=32 layouts: keras.applications has no CIFAR stem.
MODELS: dict[str, tuple[tuple[int, ...], tuple[int, int, int], int, int]] = {
    "densenet121": ((6, 12, 24, 16), (224, 224, 3), 1000, 8),
    "cifar": ((6, 12, 24, 16), (32, 32, 3), 10, 64),
}
IMPLS = ("ours", "ours_me", "keras")


def build_model(impl: str, blocks: tuple[int, ...], input_shape: Any, classes: int) -> Any:
    """Builds the model of one implementation.

    Args:
        impl: ``"ours"`` (build_densenet), ``"ours_me"`` (build_densenet with
            ``memory_efficient=True``) or ``"keras"`` (keras.applications).
        blocks: Layers per dense block.
        input_shape: ``(height, width, channels)``.
        classes: Number of classes.

    Returns:
        An uncompiled ``keras.Model``.
    """
    if impl == "keras":
        # keras.applications.DenseNet121 is DenseNet([6, 12, 24, 16], ...); the
        # generic builder is not exported, so it comes from keras.src.
        from keras.src.applications.densenet import DenseNet

        return DenseNet(list(blocks), weights=None, input_shape=input_shape, classes=classes)
    from keras_densenet import build_densenet

    return build_densenet(
        blocks=blocks,
        stem="imagenet",
        input_shape=tuple(input_shape),
        num_classes=classes,
        memory_efficient=impl == "ours_me",
    )


def worker(config: dict[str, Any]) -> dict[str, Any]:
    """Builds, compiles and measures one configuration (in a subprocess)."""
    import keras

    keras.mixed_precision.set_dtype_policy(config["dtype_policy"])
    keras.utils.set_random_seed(0)
    model = build_model(
        config["impl"], tuple(config["blocks"]), tuple(config["input_shape"]), config["classes"]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        loss="sparse_categorical_crossentropy",
        jit_compile=config["jit_compile"],
    )
    x, y = synthetic_batch(config["batch_size"], config["input_shape"], config["classes"])
    result = measure_training(
        model,
        x,
        y,
        steps=config["steps"],
        warmup=config["warmup"],
        inference_steps=config["inference_steps"],
        backend=keras.backend.backend(),
    )
    result["params"] = int(model.count_params())
    result["backend"] = keras.backend.backend()
    return result


def _summarize(runs: list[dict[str, Any]], impls: list[str]) -> list[dict[str, Any]]:
    """Medians per configuration and median within-repetition ratios vs keras."""
    summary = []
    keys = sorted({(r["model"], r["jit_compile"]) for r in runs}, key=str)
    for model, jit in keys:
        group = [r for r in runs if r["model"] == model and r["jit_compile"] == jit]
        reps = sorted({r["repetition"] for r in group})
        by = {(r["impl"], r["repetition"]): r["result"] for r in group}
        for impl in impls:
            results = [by.get((impl, rep), {}) for rep in reps]
            row: dict[str, Any] = {"model": model, "jit_compile": jit, "impl": impl}
            for key in (
                "train_images_per_s",
                "train_images_per_s_best",
                "train_cpu_s_per_step",
                "infer_images_per_s",
                "peak_rss",
                "baseline_rss",
                "train_memory",
                "tensor_peak",
                "first_step_s",
            ):
                row[key] = median(res.get(key) for res in results)
            row["params"] = next((res["params"] for res in results if "params" in res), None)
            row["errors"] = [res["error"][-300:] for res in results if "error" in res]
            if impl != "keras" and "keras" in impls:
                for key in (
                    "train_images_per_s",
                    "train_images_per_s_best",
                    "train_cpu_s_per_step",
                    "infer_images_per_s",
                    "peak_rss",
                    "train_memory",
                ):
                    row[f"{key}_ratio"] = median(
                        ratio(by.get((impl, rep), {}).get(key), by.get(("keras", rep), {}).get(key))
                        for rep in reps
                    )
            summary.append(row)
    return summary


def _markdown(summary: list[dict[str, Any]], args: argparse.Namespace) -> str:
    absolute = []
    ratios = []
    for row in summary:
        head = [row["model"], "on" if row["jit_compile"] else "off", row["impl"]]
        absolute.append(
            [
                *head,
                _batch_size(args, row["model"]),
                f"{row['params']:,}" if row["params"] else "-",
                fmt(row["train_images_per_s"]),
                fmt(row["train_images_per_s_best"]),
                fmt(row["train_cpu_s_per_step"]),
                fmt(row["infer_images_per_s"]),
                mib(row["baseline_rss"]),
                mib(row["peak_rss"]),
                mib(row["train_memory"]),
                "; ".join(row["errors"])[-120:] or "",
            ]
        )
        if "train_images_per_s_ratio" in row:
            ratios.append(
                [
                    *head,
                    fmt(row["train_images_per_s_ratio"], ".3f"),
                    fmt(row["train_images_per_s_best_ratio"], ".3f"),
                    fmt(row["train_cpu_s_per_step_ratio"], ".3f"),
                    fmt(row["infer_images_per_s_ratio"], ".3f"),
                    fmt(row["peak_rss_ratio"], ".3f"),
                    fmt(row["train_memory_ratio"], ".3f"),
                ]
            )
    text = (
        f"Medians over {args.repetitions} repetitions (one subprocess per configuration and "
        f"repetition), {args.steps} timed training steps each after {args.warmup} warm-up "
        "steps.\n"
        'img/s uses the median step ("best": the fastest step); CPU s/step is the '
        "process's user+system CPU time per training step. baseline = RSS after build "
        "and compile; train mem = peak RSS over the timed steps - baseline.\n\n"
        + markdown_table(
            [
                "model",
                "XLA",
                "impl",
                "batch",
                "params",
                "train img/s",
                "train img/s (best)",
                "CPU s/step",
                "infer img/s",
                "baseline MiB",
                "peak RSS MiB",
                "train mem MiB",
                "errors",
            ],
            absolute,
        )
    )
    if ratios:
        text += (
            "\n\nRatios ours / keras.applications, taken within each repetition, then the "
            "median (throughput: > 1 is faster; CPU time and memory: < 1 is less).\n\n"
            + markdown_table(
                [
                    "model",
                    "XLA",
                    "impl",
                    "train img/s",
                    "train img/s (best)",
                    "CPU s/step",
                    "infer img/s",
                    "peak RSS",
                    "train mem",
                ],
                ratios,
            )
        )
    return text


def _batch_size(args: argparse.Namespace, model: str) -> int:
    return args.batch_size or MODELS[model][3]


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument(
        "--impls",
        nargs="+",
        choices=IMPLS,
        default=["ours", "keras"],
        help="implementations to compare (ours_me: memory_efficient=True)",
    )
    parser.add_argument(
        "--batch-size", type=int, help="batch size (default: 8 for densenet121, 64 for cifar)"
    )
    parser.add_argument(
        "--blocks",
        type=int,
        nargs="+",
        help="layers per block of the cifar model (default 6 12 24 16)",
    )
    parser.add_argument("--steps", type=int, default=5, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed training steps first")
    parser.add_argument("--inference-steps", type=int, default=5)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument(
        "--jit-compile",
        nargs="?",
        const="both",
        default="off",
        choices=["off", "on", "both"],
        help="XLA: off (default), on, or both (the bare flag)",
    )
    parser.add_argument("--dtype-policy", default="float32")
    parser.add_argument(
        "--output", type=Path, default=RESULTS_DIR / "train_throughput", help="output prefix"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        from benchmarks.common import emit_result

        emit_result(worker(json.loads(args.worker)))
        return

    jits = {"off": [False], "on": [True], "both": [False, True]}[args.jit_compile]
    runs = []
    for rep in range(args.repetitions):
        # Alternate the order of implementations from one repetition to the next.
        order = args.impls if rep % 2 == 0 else args.impls[::-1]
        for model, jit in product(args.models, jits):
            blocks, shape, classes, _ = MODELS[model]
            if model == "cifar" and args.blocks:
                blocks = tuple(args.blocks)
            for impl in order:
                config = {
                    "impl": impl,
                    "blocks": list(blocks),
                    "input_shape": list(shape),
                    "classes": classes,
                    "batch_size": _batch_size(args, model),
                    "steps": args.steps,
                    "warmup": args.warmup,
                    "inference_steps": args.inference_steps,
                    "jit_compile": jit,
                    "dtype_policy": args.dtype_policy,
                }
                result = run_worker(MODULE, config)
                runs.append(
                    {
                        "repetition": rep,
                        "model": model,
                        "impl": impl,
                        "jit_compile": jit,
                        "config": config,
                        "result": result,
                    }
                )
                print(
                    f"rep {rep} {model:<11} xla={'on ' if jit else 'off'} {impl:<8} "
                    f"train {fmt(result.get('train_images_per_s'))} img/s  "
                    f"infer {fmt(result.get('infer_images_per_s'))} img/s  "
                    f"peak {mib(result.get('peak_rss'))} MiB  "
                    f"train mem {mib(result.get('train_memory'))} MiB"
                    + (f"  ERROR {result['error'][-200:]!r}" if "error" in result else ""),
                    flush=True,
                )
    summary = _summarize(runs, args.impls)
    markdown = _markdown(summary, args)
    print()
    print(markdown)
    payload = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "summary": summary,
        "runs": runs,
    }
    for path in write_outputs(args.output, payload, markdown):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
