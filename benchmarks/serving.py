"""Serving speed: our exported SavedModel against PyTorch eval, side by side.

One network on both sides: a torchvision-layout DenseNet in PyTorch
(`benchmarks.torch_densenet`, random weights with trained-looking BatchNorm
statistics), its checkpoint loaded into `build_densenet` with ImageNet
normalization inside the model, and exported with `export_savedmodel` as
TF Serving would load it. Each (variant, round) runs in a fresh process:

- ``tf``: ``tf.saved_model.load`` of the export with BatchNormalization
  folded (the default), its ``serving_default`` signature called with uint8
  images (the resize, normalization, softmax and argmax are in the graph);
- ``tf_unfolded``: the export with ``fold_batchnorm=False``;
- ``tf_xla``: the folded export's signature wrapped in
  ``tf.function(jit_compile=True)`` in the serving process;
- ``tf_inter1``: the folded export in a process with one inter-op thread
  (``tf.config.threading.set_inter_op_parallelism_threads(1)``, TF Serving's
  ``--tensorflow_inter_op_parallelism=1``): ops run one after another, each
  on every core;
- ``tf_bfc``: the folded export in a process with TensorFlow's BFC allocator
  on the CPU (``TF_CPU_ALLOCATOR_USE_BFC=true``): it keeps the memory of
  freed tensors for the next request instead of handing large blocks back
  to the C library (``munmap``) and faulting fresh pages in on every call;
- ``torch``: ``torch.inference_mode()``, channels_last, the same uint8 input
  converted, normalized and soft-maxed in the timed call.

Batch-1 latency (median and p99 over ``--requests`` calls) and batch
``--batch-size`` throughput; variants alternate order between rounds and the
ratios against PyTorch are taken within a round.

    python -m benchmarks.serving --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    RESULTS_DIR,
    TF_CPU_BFC_ENV,
    emit_result,
    fmt,
    markdown_table,
    median,
    ratio,
    run_worker,
    time_calls,
    write_outputs,
)

MODULE = "benchmarks.serving"
VARIANTS = ("tf", "tf_unfolded", "tf_xla", "tf_inter1", "tf_bfc", "torch")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _images(batch: int, size: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


def _prepare(config: dict[str, Any]) -> None:
    """Writes the PyTorch checkpoint and the two exports; checks they agree."""
    import torch

    from benchmarks.torch_densenet import random_torch_densenet
    from keras_densenet import build_densenet
    from keras_densenet.export import export_savedmodel

    work = Path(config["work"])
    net = random_torch_densenet(config["model"], seed=0)
    torch.save(net.state_dict(), work / "torch.pth")
    model = build_densenet(
        config["model"], weights=str(work / "torch.pth"), normalization="imagenet"
    )
    for fold, name in ((True, "folded"), (False, "unfolded")):
        export_savedmodel(model, work / name, version=1, fold_batchnorm=fold)
    images = _images(2, config["size"])
    ours = model.predict(images.astype("float32"), verbose=0)
    emit_result({"torch_vs_keras_max_abs": float(np.abs(ours - _torch_call(net, images)).max())})


def _torch_call(net: Any, images: np.ndarray) -> np.ndarray:
    import torch

    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    with torch.inference_mode():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
        x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
        return torch.softmax(net(x), dim=-1).numpy()


def _serving_function(config: dict[str, Any]) -> Any:
    variant, work = config["variant"], Path(config["work"])
    if variant == "torch":
        import torch

        from benchmarks.torch_densenet import ARCHITECTURES, TorchDenseNet

        net = TorchDenseNet(*ARCHITECTURES[config["model"]])
        net.load_state_dict(torch.load(work / "torch.pth"))
        net = net.eval().to(memory_format=torch.channels_last)
        return lambda images: _torch_call(net, images)
    import tensorflow as tf

    if variant == "tf_inter1":
        tf.config.threading.set_inter_op_parallelism_threads(1)
    export = "unfolded" if variant == "tf_unfolded" else "folded"
    loaded = tf.saved_model.load(str(work / export / "1"))
    signature = loaded.signatures["serving_default"]
    if variant == "tf_xla":
        signature = tf.function(signature, jit_compile=True)

    def serve(images: np.ndarray, loaded: Any = loaded) -> np.ndarray:  # keeps `loaded` alive
        return signature(images=tf.constant(images))["probabilities"].numpy()

    return serve


def _worker(config: dict[str, Any]) -> None:
    if config["variant"] == "prepare":
        _prepare(config)
        return
    serve = _serving_function(config)
    one = _images(1, config["size"])
    batch = _images(config["batch_size"], config["size"])
    time_calls(lambda: serve(one), config["warmup"])
    latency = time_calls(lambda: serve(one), config["requests"])
    time_calls(lambda: serve(batch), 1)
    batch_times = time_calls(lambda: serve(batch), config["batches"])
    emit_result(
        {
            "latency_ms_median": 1000 * float(np.median(latency)),
            "latency_ms_p99": 1000 * float(np.percentile(latency, 99)),
            "batch_images_per_s": config["batch_size"] / float(np.median(batch_times)),
            "latency_ms": [1000 * t for t in latency],
        }
    )


def field(run: dict[str, Any], key: str) -> float | None:
    """One measurement of a run, or None if the worker failed."""
    return run["result"].get(key)


def _vs_torch(
    runs: list[dict[str, Any]], mine: list[dict[str, Any]], key: str, higher_is_better: bool
) -> list[float | None]:
    """Per round: our speed over PyTorch's (time ratios inverted, so > 1 is faster)."""
    out = []
    for r in mine:
        base = next((b for b in runs if b["variant"] == "torch" and b["round"] == r["round"]), None)
        if base is None:
            out.append(None)
        elif higher_is_better:
            out.append(ratio(field(r, key), field(base, key)))
        else:
            out.append(ratio(field(base, key), field(r, key)))
    return out


def main(argv: list[str] | None = None) -> int:
    """Runs the comparison and writes ``benchmarks/results/serving.{json,md}``.

    Args:
        argv: Command-line arguments.

    Returns:
        The exit code.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="densenet121")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output", default=str(RESULTS_DIR / "serving"))
    args = parser.parse_args(argv)
    if args.worker:
        _worker(json.loads(args.worker))
        return 0

    with tempfile.TemporaryDirectory(prefix="serving-bench-") as work:
        common = {"model": args.model, "size": args.size, "work": work}
        prepared = run_worker(MODULE, {**common, "variant": "prepare"})
        if "error" in prepared:
            print(prepared["error"], file=sys.stderr)
            return 1
        print(f"PyTorch and Keras agree: max |diff| {prepared['torch_vs_keras_max_abs']:.2e}")
        runs = []
        for round_ in range(args.rounds):
            order = args.variants if round_ % 2 == 0 else args.variants[::-1]
            for variant in order:
                config = {
                    **common,
                    "variant": variant,
                    "requests": args.requests,
                    "warmup": args.warmup,
                    "batch_size": args.batch_size,
                    "batches": args.batches,
                }
                env = {TF_CPU_BFC_ENV: "true"} if variant == "tf_bfc" else None
                result = run_worker(MODULE, config, env=env)
                runs.append({"variant": variant, "round": round_, "result": result})
                print(
                    f"round {round_} {variant}: batch-1 median "
                    f"{fmt(result.get('latency_ms_median'), '.1f')} ms, p99 "
                    f"{fmt(result.get('latency_ms_p99'), '.1f')} ms, batch {args.batch_size} "
                    f"{fmt(result.get('batch_images_per_s'), '.1f')} img/s "
                    f"{result.get('error', '')[-300:]}",
                    flush=True,
                )
    rows = []
    for variant in args.variants:
        mine = [r for r in runs if r["variant"] == variant]

        rows.append(
            [
                variant,
                fmt(median(field(r, "latency_ms_median") for r in mine), ".1f"),
                fmt(median(field(r, "latency_ms_p99") for r in mine), ".1f"),
                fmt(median(field(r, "batch_images_per_s") for r in mine), ".1f"),
                fmt(median(_vs_torch(runs, mine, "latency_ms_median", False)), ".3f"),
                fmt(median(_vs_torch(runs, mine, "latency_ms_p99", False)), ".3f"),
                fmt(median(_vs_torch(runs, mine, "batch_images_per_s", True)), ".3f"),
            ]
        )
    table = markdown_table(
        [
            "variant",
            "batch-1 median ms",
            "batch-1 p99 ms",
            f"batch-{args.batch_size} img/s",
            "median speed vs torch",
            "p99 speed vs torch",
            "throughput vs torch",
        ],
        rows,
    )
    print(table)
    write_outputs(Path(args.output), {"arguments": vars(args), "runs": runs}, table)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
