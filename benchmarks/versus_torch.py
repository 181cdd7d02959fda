"""Training speed against PyTorch on the CPU, side by side, and how it scales.

The same network on every side, trained on one synthetic batch with SGD +
momentum and cross-entropy (float32):

- ``ours``: ``build_densenet`` on the TensorFlow backend, ``train_on_batch``;
- ``ours_jax``: the same on the JAX backend;
- ``keras``: keras.applications' generic ``DenseNet(blocks)`` (TensorFlow;
  ImageNet stem only, so DenseNet-121 only);
- ``torch``: the torchvision-layout network of `benchmarks.torch_densenet`
  in plain PyTorch, channels_last, ``zero_grad``/forward/``backward``/``step``.

Models: ``densenet121`` (224x224, batch 8) and ``bc100`` (DenseNet-BC-100-12,
CIFAR stem, 32x32, batch 64), 10 classes; the trainable parameter counts of
the sides are recorded and must agree. Each (model, batch, threads, impl,
round) is a fresh process; implementations alternate order between rounds and
ratios against PyTorch are taken within a round, then the median. ``--threads
1`` pins the worker to one core (``sched_setaffinity``) and sets the
framework's thread pools to one thread; the default is every core.

    python -m benchmarks.versus_torch --rounds 3                  # the targets
    python -m benchmarks.versus_torch --models bc100 --impls ours torch \\
        --batch-sizes 1 2 4 8 16 32 64 --threads 1 2 --tag scaling --plot
"""

from __future__ import annotations

import argparse
import json
import os
import time
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    RESULTS_DIR,
    cpu_seconds,
    emit_result,
    fmt,
    markdown_table,
    median,
    peak_rss_bytes,
    ratio,
    run_worker,
    synthetic_batch,
    write_outputs,
)

MODULE = "benchmarks.versus_torch"
IMPLS = ("ours", "ours_jax", "keras", "torch")
#: name -> (input size, default batch, torch architecture, small_inputs)
MODELS: dict[str, tuple[int, int, tuple[int, tuple[int, ...], int], bool]] = {
    "densenet121": (224, 8, (32, (6, 12, 24, 16), 64), False),
    "bc100": (32, 64, (12, (16, 16, 16), 24), True),
}
CLASSES = 10


def _limit_threads(threads: int | None) -> None:
    if threads:
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:threads]))


def _timed(step: Any, warmup: int, steps: int, min_seconds: float) -> dict[str, Any]:
    """Runs ``step`` ``warmup`` times, then at least ``steps`` times and ``min_seconds``."""
    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    for _ in range(max(warmup, 1) - 1):
        step()
    times: list[float] = []
    cpu = cpu_seconds()
    began = time.perf_counter()
    while len(times) < steps or time.perf_counter() - began < min_seconds:
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {
        "first_step_s": first,
        "train_step_s": times,
        "train_cpu_s_per_step": (cpu_seconds() - cpu) / len(times),
        "peak_rss": peak_rss_bytes(),
    }


def _keras_step(config: dict[str, Any]) -> tuple[Any, int]:
    import keras

    threads = config["threads"]
    if threads and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    keras.utils.set_random_seed(0)
    size, _, (growth, blocks, stem), small = MODELS[config["model"]]
    shape = (size, size, 3)
    if config["impl"] == "keras":
        from keras.src.applications.densenet import DenseNet

        model = DenseNet(list(blocks), weights=None, input_shape=shape, classes=CLASSES)
    else:
        from keras_densenet import build_densenet

        model = build_densenet(
            blocks=blocks,
            growth_rate=growth,
            num_init_features=stem,
            stem="cifar" if small else "imagenet",
            input_shape=shape,
            num_classes=CLASSES,
        )
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        loss="sparse_categorical_crossentropy",
    )
    x, y = synthetic_batch(config["batch_size"], shape, CLASSES)
    params = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    return (lambda: model.train_on_batch(x, y)), params


def _torch_step(config: dict[str, Any]) -> tuple[Any, int]:
    import torch

    from benchmarks.torch_densenet import TorchDenseNet

    if config["threads"]:
        torch.set_num_threads(config["threads"])
        torch.set_num_interop_threads(config["threads"])
    torch.manual_seed(0)
    size, _, architecture, small = MODELS[config["model"]]
    net = TorchDenseNet(*architecture, classes=CLASSES, small_inputs=small)
    net = net.to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    x, y = synthetic_batch(config["batch_size"], (size, size, 3), CLASSES)
    images = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    labels = torch.from_numpy(y).long()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(net(images), labels).backward()
        optimizer.step()

    return step, int(sum(p.numel() for p in net.parameters()))


def worker(config: dict[str, Any]) -> dict[str, Any]:
    """Builds one side and times its training steps (in a fresh process)."""
    _limit_threads(config["threads"])
    step, params = (_torch_step if config["impl"] == "torch" else _keras_step)(config)
    result = _timed(step, config["warmup"], config["steps"], config["min_seconds"])
    step_s = median(result["train_step_s"])
    result["train_images_per_s"] = config["batch_size"] / step_s
    result["trainable_params"] = params
    result["usable_cpus"] = len(os.sched_getaffinity(0))
    return result


def _key(run: dict[str, Any]) -> tuple[str, int, int]:
    return run["model"], run["batch_size"], run["threads"] or 0


def _summarize(runs: list[dict[str, Any]], impls: list[str]) -> list[dict[str, Any]]:
    summary = []
    for key in sorted({_key(r) for r in runs}):
        group = [r for r in runs if _key(r) == key]
        by = {(r["impl"], r["round"]): r["result"] for r in group}
        rounds = sorted({r["round"] for r in group})
        for impl in impls:
            results = [by.get((impl, k), {}) for k in rounds]
            if not any(results):
                continue  # not run for this model (keras.applications: no CIFAR stem)
            row: dict[str, Any] = {
                "model": key[0],
                "batch_size": key[1],
                "threads": key[2] or None,
                "impl": impl,
                "train_images_per_s": median(r.get("train_images_per_s") for r in results),
                "train_cpu_s_per_step": median(r.get("train_cpu_s_per_step") for r in results),
                "peak_rss": median(r.get("peak_rss") for r in results),
                "trainable_params": next(
                    (r["trainable_params"] for r in results if "trainable_params" in r), None
                ),
                "per_round": [r.get("train_images_per_s") for r in results],
                "errors": [r["error"][-300:] for r in results if "error" in r],
            }
            if "torch" in impls:
                row["vs_torch"] = [
                    ratio(
                        by.get((impl, k), {}).get("train_images_per_s"),
                        by.get(("torch", k), {}).get("train_images_per_s"),
                    )
                    for k in rounds
                ]
                row["vs_torch_median"] = median(row["vs_torch"])
            summary.append(row)
    return summary


def _markdown(summary: list[dict[str, Any]], args: argparse.Namespace) -> str:
    rows = []
    for row in summary:
        per_round = ", ".join(fmt(v, ".3f") for v in row.get("vs_torch", []))
        rows.append(
            [
                row["model"],
                row["batch_size"],
                row["threads"] or "all",
                row["impl"],
                f"{row['trainable_params']:,}" if row["trainable_params"] else "-",
                fmt(row["train_images_per_s"]),
                fmt(row["train_cpu_s_per_step"], ".3f"),
                fmt(row["peak_rss"] and row["peak_rss"] / 2**20, ",.0f"),
                f"**{fmt(row.get('vs_torch_median'), '.3f')}** ({per_round})",
                "; ".join(row["errors"])[-120:],
            ]
        )
    return (
        f"Medians over {args.rounds} rounds (a fresh process per configuration, "
        "implementations alternating order); at least "
        f"{args.steps} timed steps and {args.min_seconds} s after {args.warmup} warm-up steps. "
        "vs torch: images/s over PyTorch's in the same round, then the median "
        "(> 1: faster than PyTorch).\n\n"
        + markdown_table(
            [
                "model",
                "batch",
                "threads",
                "impl",
                "trainable params",
                "train img/s",
                "CPU s/step",
                "peak RSS MiB",
                "vs torch (per round)",
                "errors",
            ],
            rows,
        )
    )


def _plot(summary: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"ours": "o-", "ours_jax": "^-", "keras": "s--", "torch": "x:"}
    groups = sorted({(r["model"], r["impl"], r["threads"]) for r in summary}, key=str)
    for model, impl, threads in groups:
        rows = sorted(
            (r for r in summary if (r["model"], r["impl"], r["threads"]) == (model, impl, threads)),
            key=lambda r: r["batch_size"],
        )
        label = f"{impl}, {threads or 'all'} thread{'s' if threads != 1 else ''}"
        left.plot(
            [r["batch_size"] for r in rows],
            [r["train_images_per_s"] for r in rows],
            styles.get(impl, "o-"),
            label=label,
            alpha=1.0 if threads != 1 else 0.6,
        )
    for impl in sorted({r["impl"] for r in summary}):
        rows = [r for r in summary if r["impl"] == impl]
        largest = max(r["batch_size"] for r in rows)
        points = sorted(
            (r["threads"] or len(os.sched_getaffinity(0)), r["train_images_per_s"])
            for r in rows
            if r["batch_size"] == largest
        )
        right.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            styles.get(impl, "o-"),
            label=f"{impl}, batch {largest}",
        )
    left.set(xscale="log", xlabel="batch size", ylabel="training images/s")
    left.set_xticks(sorted({r["batch_size"] for r in summary}))
    left.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    left.set_title("Throughput against batch size")
    right.set(xlabel="threads (cores)", ylabel="training images/s")
    right.set_xticks(sorted({r["threads"] or len(os.sched_getaffinity(0)) for r in summary}))
    right.set_title("Throughput against threads")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    models = ", ".join(sorted({r["model"] for r in summary}))
    fig.suptitle(f"{models}, float32 training on this CPU: ours (TensorFlow) and PyTorch")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=sorted(MODELS))
    parser.add_argument("--impls", nargs="+", choices=IMPLS, default=["ours", "keras", "torch"])
    parser.add_argument(
        "--batch-sizes", type=int, nargs="+", help="default: 8 for densenet121, 64 for bc100"
    )
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[0], help="0: every core (the default)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6, help="timed steps, at least")
    parser.add_argument("--min-seconds", type=float, default=4.0, help="timed seconds, at least")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--tag", default="", help="suffix of the output files")
    parser.add_argument("--plot", action="store_true", help="also write the scaling PNG")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        emit_result(worker(json.loads(args.worker)))
        return
    runs = []
    for rnd in range(args.rounds):
        order = args.impls if rnd % 2 == 0 else args.impls[::-1]
        for model, threads in product(args.models, args.threads):
            for batch in args.batch_sizes or [MODELS[model][1]]:
                for impl in order:
                    if impl == "keras" and MODELS[model][3]:
                        continue  # keras.applications has no CIFAR stem
                    config = {
                        "impl": impl,
                        "model": model,
                        "batch_size": batch,
                        "threads": threads or None,
                        "steps": args.steps,
                        "min_seconds": args.min_seconds,
                        "warmup": args.warmup,
                    }
                    env = {"KERAS_BACKEND": "jax" if impl == "ours_jax" else "tensorflow"}
                    result = run_worker(MODULE, config, env=env)
                    runs.append({**config, "round": rnd, "result": result})
                    print(
                        f"round {rnd} {model} b{batch} threads={threads or 'all'} {impl:<8} "
                        f"{fmt(result.get('train_images_per_s'))} img/s"
                        + (f"  ERROR {result['error'][-300:]!r}" if "error" in result else ""),
                        flush=True,
                    )
    impls = [i for i in args.impls if any(r["impl"] == i for r in runs)]
    summary = _summarize(runs, impls)
    markdown = _markdown(summary, args)
    print("\n" + markdown)
    prefix = RESULTS_DIR / ("versus_torch" + (f"_{args.tag}" if args.tag else ""))
    payload = {"args": vars(args), "summary": summary, "runs": runs}
    for path in write_outputs(prefix, payload, markdown):
        print(f"wrote {path}")
    if args.plot:
        _plot(summary, prefix.with_suffix(".png"))
        print(f"wrote {prefix.with_suffix('.png')}")


if __name__ == "__main__":
    main()
