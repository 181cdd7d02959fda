"""Peak training memory and step time against depth, normal vs memory-efficient.

For each configuration a fresh subprocess builds the model, compiles it
(SGD with momentum, sparse cross-entropy), runs warm-up training steps and
then timed steps on one synthetic batch. It reports:

* ``import_rss``: RSS of a subprocess that only imports Keras, its backend and
  keras_densenet (the fixed cost of the process);
* ``baseline_rss``: RSS after building and compiling the model, before any step;
* ``peak_rss``: the process's peak RSS over its whole life (tracing included);
* ``step_peak_rss``: the peak over the timed steps only (the kernel's peak mark
  is reset after warm-up);
* ``train_memory = step_peak_rss - baseline_rss``: what training adds.

Where the allocator reports tensor memory (a GPU; TensorFlow on a CPU with
``--tf-allocator-stats``, which runs the workers with TensorFlow's BFC
allocator on the CPU) ``tensor_peak`` is its peak over the timed steps and
``tensor_train_memory`` that peak minus the tensors alive between steps: the
activation memory itself, free of the C allocator's caching and of graph
construction.

Modes: ``normal`` and ``efficient`` (``memory_efficient=True``) are the
library's. On TensorFlow ``efficient`` runs `keras_densenet.recompute`: each
dense layer's forward pass stores only its k new maps (and, in the layers
whose input has at least 4x as many channels as the bottleneck, the
bottleneck's maps), and a hand-written backward pass recomputes the
concatenation and the BN-ReLUs from the forward pass's batch moments.
Investigation variants patch the model's DenseLayers:
``efficient_remat`` is the library's mode until 2026-12-06 on TensorFlow (the
whole layer rematerialized by ``keras.remat``, as on JAX and PyTorch);
``efficient_store_none`` and ``efficient_store_all`` recompute every
bottleneck, or store every one, instead of choosing by channels;
``efficient_bottleneck`` is the mode before that (torchvision's and gpleiss's:
concatenation, first BN-ReLU and 1x1 convolution rematerialized);
``efficient_no_conv`` rematerializes only the concatenation and the first
BN-ReLU and leaves the 1x1 convolution outside;
``efficient_bn2`` also rematerializes the second BN-ReLU, so only the 3x3
convolution's input is stored per layer.

Examples:
    python -m benchmarks.memory_scaling --depths 40 100 160 250 --growth-rate 12 \
        --batch-size 64
    python -m benchmarks.memory_scaling --presets densenet121 --batch-size 32 \
        --output benchmarks/results/memory_densenet121
"""

from __future__ import annotations

import argparse
import json
import types
from pathlib import Path
from typing import Any

from benchmarks.common import (
    RESULTS_DIR,
    TF_CPU_BFC_ENV,
    emit_result,
    fmt,
    markdown_table,
    measure_training,
    median,
    mib,
    ratio,
    rss_bytes,
    run_worker,
    synthetic_batch,
    write_outputs,
)

MODULE = "benchmarks.memory_scaling"
MODES = (
    "normal",
    "efficient",
    "efficient_remat",
    "efficient_store_none",
    "efficient_store_all",
    "efficient_bottleneck",
    "efficient_no_conv",
    "efficient_bn2",
)


def _remat_without_conv(self: Any, inputs: Any, training: Any) -> Any:
    """Variant: rematerialize concat + BN + ReLU only; the 1x1 conv stays outside.

    The convolution's kernel gradient needs its input, so the (C_l-channel)
    BN-ReLU output is stored again for it; this variant shows how much of the
    saving depends on keeping the convolution inside the recomputed function.
    """
    import keras
    from keras import ops

    from keras_densenet.normalization import batch_norm_pure, update_moving_statistics

    xs = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    if not (training and self.bn1.trainable):
        return self._bottleneck(xs, training)

    def concat_bn_relu(*ts: Any) -> tuple[Any, Any, Any]:
        x = ops.concatenate(ts, axis=-1) if len(ts) > 1 else ts[0]
        y, mean, variance = batch_norm_pure(self.bn1, x)
        return ops.relu(y), mean, variance

    y, mean, variance = keras.remat(concat_bn_relu)(*xs)
    update_moving_statistics(self.bn1, mean, variance)
    return self.conv1(y)


def _call_remat_through_bn2(self: Any, inputs: Any, training: Any = None) -> Any:
    """Variant: rematerialize concat-BN-ReLU-Conv1x1-BN-ReLU; only the 3x3 conv outside.

    Per layer this stores one 4k-channel tensor (the input of the 3x3
    convolution) instead of two (the 1x1 output, which BN2 needs, and the
    ReLU output), for the price of recomputing BN2 and ReLU (elementwise).
    """
    import keras
    from keras import ops

    from keras_densenet.normalization import batch_norm_pure, update_moving_statistics

    xs = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    if not (training and self.bn1.trainable and self.bn2.trainable) or self.dropout1:
        return type(self).call(self, inputs, training=training)

    def bottleneck(*ts: Any) -> tuple[Any, ...]:
        x = ops.concatenate(ts, axis=-1) if len(ts) > 1 else ts[0]
        y, mean1, var1 = batch_norm_pure(self.bn1, x)
        y = self.conv1(ops.relu(y))
        z, mean2, var2 = batch_norm_pure(self.bn2, y)
        return ops.relu(z), mean1, var1, mean2, var2

    z, mean1, var1, mean2, var2 = keras.remat(bottleneck)(*xs)
    update_moving_statistics(self.bn1, mean1, var1)
    update_moving_statistics(self.bn2, mean2, var2)
    x = self.conv2(z)
    return self.dropout2(x, training=training) if self.dropout2 is not None else x


def _call_remat_bottleneck_only(self: Any, inputs: Any, training: Any = None) -> Any:
    """Variant: the library's mode until 2026-12-06: only the bottleneck is recomputed.

    Concat-BN-ReLU-Conv1x1 is rematerialized (``DenseLayer._bottleneck_remat``);
    BN2-ReLU-Conv3x3 run as usual, so the two 4k-channel tensors of each layer
    are stored.
    """
    from keras import ops

    if not self.bottleneck:
        return type(self).call(self, inputs, training=training)
    x = self._bottleneck_remat(inputs, training)
    if self.dropout1 is not None:
        x = self.dropout1(x, training=training)
    x = self.conv2(ops.relu(self.bn2(x, training=training)))
    return self.dropout2(x, training=training) if self.dropout2 is not None else x


def build_model(config: dict[str, Any]) -> Any:
    """Builds the model of a configuration, applying an investigation variant."""
    from keras_densenet import build_densenet
    from keras_densenet.layers import DenseBlock

    mode = config["mode"]
    kwargs: dict[str, Any] = {"memory_efficient": mode != "normal"}
    if config.get("preset"):
        kwargs["preset"] = config["preset"]
    else:
        kwargs.update(depth=config["depth"], growth_rate=config["growth_rate"])
    if config.get("input_shape"):
        kwargs["input_shape"] = tuple(config["input_shape"])
    if mode == "efficient_remat":
        from keras_densenet import recompute

        recompute.applies = lambda *args: False
    model = build_densenet(**kwargs)
    for layer in model.layers:
        if not isinstance(layer, DenseBlock):
            continue
        for dense in layer.dense_layers:
            if mode == "efficient_no_conv":
                dense._bottleneck_remat = types.MethodType(_remat_without_conv, dense)
                dense.call = types.MethodType(_call_remat_bottleneck_only, dense)
            elif mode == "efficient_bottleneck":
                dense.call = types.MethodType(_call_remat_bottleneck_only, dense)
            elif mode == "efficient_bn2":
                dense.call = types.MethodType(_call_remat_through_bn2, dense)
            elif mode in ("efficient_store_none", "efficient_store_all"):
                dense._stores_bottleneck = dense.bottleneck and mode == "efficient_store_all"
    return model


def worker(config: dict[str, Any]) -> dict[str, Any]:
    """Measures one configuration (in a subprocess)."""
    import keras

    import keras_densenet  # noqa: F401  (its import cost belongs to the baseline)

    if config["mode"] == "import_only":
        return {"import_rss": rss_bytes(), "backend": keras.backend.backend()}
    keras.mixed_precision.set_dtype_policy(config.get("dtype_policy", "float32"))
    keras.utils.set_random_seed(0)
    model = build_model(config)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
        loss="sparse_categorical_crossentropy",
        jit_compile=config.get("jit_compile", False),
    )
    shape = tuple(model.input_shape[1:])
    x, y = synthetic_batch(config["batch_size"], shape, int(model.output_shape[-1]))
    result = measure_training(
        model,
        x,
        y,
        steps=config["steps"],
        warmup=config["warmup"],
        backend=keras.backend.backend(),
    )
    result["params"] = int(model.count_params())
    result["backend"] = keras.backend.backend()
    return result


def _label(config: dict[str, Any]) -> str:
    if config.get("preset"):
        return config["preset"]
    return f"BC-{config['depth']}-{config['growth_rate']}"


def _linearity(depths: list[int], values: list[float | None]) -> dict[str, float] | None:
    """How far ``values`` against ``depths`` is from a straight line.

    Returns:
        ``r2_linear``: R^2 of a least-squares line; ``slope_growth``: the slope
        over the last two depths divided by the slope over the first two
        (1 for a line; it grows with depth for a quadratic curve).
    """
    points = [(d, v) for d, v in zip(depths, values, strict=True) if v is not None]
    if len(points) < 3:
        return None
    import numpy as np

    d = np.array([p[0] for p in points], dtype=float)
    v = np.array([p[1] for p in points], dtype=float)
    coef = np.polyfit(d, v, 1)
    residual = v - np.polyval(coef, d)
    r2 = 1.0 - float(residual @ residual) / float(((v - v.mean()) ** 2).sum())
    first = (v[1] - v[0]) / (d[1] - d[0])
    last = (v[-1] - v[-2]) / (d[-1] - d[-2])
    return {"r2_linear": r2, "slope_growth": float(last / first) if first else float("nan")}


def _plot(rows: list[dict[str, Any]], modes: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_mem, ax_time) = plt.subplots(1, 2, figsize=(11, 4.2))
    for mode in modes:
        mine = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["depth"])
        depths = [r["depth"] for r in mine]
        (line,) = ax_mem.plot(
            depths, [_gib(r["train_memory"]) for r in mine], marker="o", label=mode
        )
        color = line.get_color()
        ax_mem.plot(
            depths,
            [_gib(r["peak_rss"]) for r in mine],
            linestyle="--",
            marker="x",
            alpha=0.6,
            color=color,
            label=f"{mode}: process peak RSS",
        )
        ax_time.plot(depths, [r["step_s"] for r in mine], marker="o", color=color, label=mode)
        ax_time.plot(
            depths,
            [r["cpu_s_per_step"] for r in mine],
            linestyle=":",
            marker="s",
            alpha=0.6,
            color=color,
            label=f"{mode}: CPU s per step",
        )
    ax_mem.set_xlabel("depth L")
    ax_mem.set_ylabel("GiB")
    ax_mem.set_title("training memory (peak - baseline); dashed: peak RSS")
    ax_time.set_xlabel("depth L")
    ax_time.set_ylabel("seconds per training step")
    ax_time.set_title("median step time (wall); dotted: CPU time")
    for ax in (ax_mem, ax_time):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_ylim(bottom=0)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _gib(value: float | None) -> float | None:
    return None if value is None else value / 2**30


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--depths", type=int, nargs="+", help="DenseNet-BC depths (default 40 100 160 250)"
    )
    group.add_argument("--presets", nargs="+", help="build_densenet presets instead of depths")
    parser.add_argument("--growth-rate", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--input-shape", type=int, nargs=3, help="override, e.g. 32 32 3")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=["normal", "efficient"])
    parser.add_argument("--steps", type=int, default=3, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed training steps first")
    parser.add_argument("--repetitions", type=int, default=1)
    parser.add_argument("--jit-compile", action="store_true")
    parser.add_argument("--dtype-policy", default="float32")
    parser.add_argument("--timeout", type=float, default=1800.0, help="per worker, seconds")
    parser.add_argument(
        "--output", type=Path, default=RESULTS_DIR / "memory_scaling", help="output prefix"
    )
    parser.add_argument(
        "--tf-allocator-stats",
        action="store_true",
        help="TensorFlow on CPU: use the BFC allocator to report tensor memory",
    )
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        emit_result(worker(json.loads(args.worker)))
        return

    env = {TF_CPU_BFC_ENV: "true"} if args.tf_allocator_stats else None
    baseline = run_worker(MODULE, {"mode": "import_only"}, env=env, timeout=args.timeout)
    import_rss = baseline.get("import_rss")
    print(f"import-only RSS: {mib(import_rss)} MiB ({baseline.get('backend')})", flush=True)
    if args.presets:
        models = [{"preset": p} for p in args.presets]
    else:
        depths = args.depths or [40, 100, 160, 250]
        models = [{"depth": d, "growth_rate": args.growth_rate} for d in depths]

    runs = []
    for rep in range(args.repetitions):
        for model in models:
            order = args.modes if rep % 2 == 0 else args.modes[::-1]
            for mode in order:
                config = {
                    **model,
                    "mode": mode,
                    "batch_size": args.batch_size,
                    "steps": args.steps,
                    "warmup": args.warmup,
                    "jit_compile": args.jit_compile,
                    "dtype_policy": args.dtype_policy,
                    "input_shape": args.input_shape,
                }
                result = run_worker(MODULE, config, env=env, timeout=args.timeout)
                runs.append({"repetition": rep, "config": config, "result": result})
                print(
                    f"rep {rep} {_label(config):<20} {mode:<18} "
                    f"step {fmt(median(result.get('train_step_s', [])), '.3f')} s  "
                    f"peak {mib(result.get('peak_rss'))} MiB  "
                    f"baseline {mib(result.get('baseline_rss'))} MiB  "
                    f"train mem {mib(result.get('train_memory'))} MiB"
                    + (f"  ERROR {result['error'][-300:]!r}" if "error" in result else ""),
                    flush=True,
                )

    rows = []
    for model in models:
        label = _label(model)
        for mode in args.modes:
            results = [
                r["result"]
                for r in runs
                if _label(r["config"]) == label and r["config"]["mode"] == mode
            ]
            row = {
                "model": label,
                "depth": model.get("depth"),
                "mode": mode,
                "step_s": median(median(r.get("train_step_s", [])) for r in results),
                "cpu_s_per_step": median(r.get("train_cpu_s_per_step") for r in results),
                "peak_rss": median(r.get("peak_rss") for r in results),
                "baseline_rss": median(r.get("baseline_rss") for r in results),
                "step_peak_rss": median(r.get("step_peak_rss") for r in results),
                "train_memory": median(r.get("train_memory") for r in results),
                "tensor_peak": median(r.get("tensor_peak") for r in results),
                "tensor_train_memory": median(r.get("tensor_train_memory") for r in results),
                "params": next((r["params"] for r in results if "params" in r), None),
                "errors": [r["error"][-300:] for r in results if "error" in r],
            }
            row["peak_minus_import"] = (
                None
                if row["peak_rss"] is None or import_rss is None
                else row["peak_rss"] - import_rss
            )
            rows.append(row)
    # Ratios against the normal mode of the same model, within each repetition.
    for row in rows:
        if row["mode"] == "normal":
            continue
        pairs = {}
        for r in runs:
            if _label(r["config"]) == row["model"]:
                pairs.setdefault(r["repetition"], {})[r["config"]["mode"]] = r["result"]
        for key, name in (
            ("train_memory", "train_memory_ratio"),
            ("peak_rss", "peak_rss_ratio"),
            ("tensor_train_memory", "tensor_train_memory_ratio"),
        ):
            row[name] = median(
                ratio(p.get(row["mode"], {}).get(key), p.get("normal", {}).get(key))
                for p in pairs.values()
            )
        row["step_time_ratio"] = median(
            ratio(
                median(p.get(row["mode"], {}).get("train_step_s", [])),
                median(p.get("normal", {}).get("train_step_s", [])),
            )
            for p in pairs.values()
        )
        row["cpu_time_ratio"] = median(
            ratio(
                p.get(row["mode"], {}).get("train_cpu_s_per_step"),
                p.get("normal", {}).get("train_cpu_s_per_step"),
            )
            for p in pairs.values()
        )

    linearity = {}
    if not args.presets:
        for mode in args.modes:
            mine = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["depth"])
            linearity[mode] = _linearity(
                [r["depth"] for r in mine], [r["train_memory"] for r in mine]
            )

    table = markdown_table(
        [
            "model",
            "mode",
            "batch",
            "step s",
            "CPU s/step",
            "peak RSS MiB",
            "peak - import MiB",
            "baseline MiB",
            "train mem MiB",
            "tensor train MiB",
            "train mem ratio",
            "tensor train ratio",
            "peak RSS ratio",
            "step time ratio",
            "CPU time ratio",
        ],
        [
            [
                r["model"],
                r["mode"],
                args.batch_size,
                fmt(r["step_s"], ".3f"),
                fmt(r["cpu_s_per_step"], ".2f"),
                mib(r["peak_rss"]),
                mib(r["peak_minus_import"]),
                mib(r["baseline_rss"]),
                mib(r["train_memory"]),
                mib(r["tensor_train_memory"]),
                fmt(r.get("train_memory_ratio"), ".3f"),
                fmt(r.get("tensor_train_memory_ratio"), ".3f"),
                fmt(r.get("peak_rss_ratio"), ".3f"),
                fmt(r.get("step_time_ratio"), ".3f"),
                fmt(r.get("cpu_time_ratio"), ".3f"),
            ]
            for r in rows
        ],
    )
    markdown = (
        f"import-only RSS (subprocess importing Keras, its backend and keras_densenet): "
        f"{mib(import_rss)} MiB. baseline = RSS after build and compile; train mem = peak RSS "
        f"over the {args.steps} timed steps (after {args.warmup} warm-up) - baseline. Ratios: "
        f"mode / normal within a repetition; medians of {args.repetitions} repetition(s). "
        "tensor train = allocator peak over the timed steps - tensors alive between steps "
        "(only with an allocator that reports it).\n\n" + table
    )
    if linearity:
        markdown += "\n\nLinearity of train mem against depth:\n\n" + markdown_table(
            ["mode", "R^2 of a line", "slope last / slope first"],
            [
                [m, fmt(v and v["r2_linear"], ".4f"), fmt(v and v["slope_growth"], ".2f")]
                for m, v in linearity.items()
            ],
        )
    print()
    print(markdown)
    payload = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "import_rss": import_rss,
        "rows": rows,
        "linearity": linearity,
        "runs": runs,
    }
    for path in write_outputs(args.output, payload, markdown):
        print(f"wrote {path}")
    if not args.presets and not args.no_plot:
        png = args.output.with_suffix(".png")
        _plot(
            rows,
            args.modes,
            png,
            f"DenseNet-BC k={args.growth_rate}, batch {args.batch_size}, "
            f"{baseline.get('backend', '')} ({args.dtype_policy})",
        )
        print(f"wrote {png}")


if __name__ == "__main__":
    main()
