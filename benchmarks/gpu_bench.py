"""GPU training throughput and model FLOP utilisation (MFU) of keras_densenet models.

For each configuration (Keras backend, model, dtype policy, XLA on/off) a fresh
subprocess first measures the device's matrix-multiply FLOP/s in the compute
dtype of the policy (float32 -- TF32 where the backend uses it by default --,
float16 or bfloat16), then trains the model on one synthetic batch already on
the device and reports

* training images/s (median step; each step ends with the loss on the host);
* achieved FLOP/s = 3 x 2 x MACs x images/s (forward + backward ~ 3 forward
  passes; MACs from ``keras_densenet.analysis.count_macs``: convolutions and
  dense layers);
* MFU = achieved FLOP/s / measured matmul FLOP/s in the same dtype;
* the accelerator's peak memory over the timed steps.

Keras backends: TensorFlow and JAX (``--backends tensorflow jax``). The JAX
path imports nothing from TensorFlow (check it with ``--block-tensorflow``,
which makes ``import tensorflow`` fail in the workers). Where ``torch`` and
``torchvision`` are installed, torchvision's ``densenet121`` is timed in the
same run (AMP in the policy's half dtype, channels_last, ``torch.compile``
when ``--jit`` is on).

``--smoke`` shrinks everything (small inputs and batches, a few steps, small
matmuls) so that the script runs end to end on a CPU.

Examples:
    KERAS_BACKEND=jax python -m benchmarks.gpu_bench --backends jax tensorflow
    python -m benchmarks.gpu_bench --smoke --backends jax --block-tensorflow
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    RESULTS_DIR,
    allocator_stats,
    emit_result,
    fmt,
    markdown_table,
    median,
    mib,
    reset_allocator_peak,
    run_worker,
    time_calls,
    write_outputs,
)

MODULE = "benchmarks.gpu_bench"

#: Model name -> (build_densenet preset, input shape, default batch size).
MODELS: dict[str, tuple[str, tuple[int, int, int], int]] = {
    "densenet121": ("densenet121", (224, 224, 3), 256),
    "densenet_bc_100_12": ("densenet_bc_100_12", (32, 32, 3), 256),
}
#: ``--smoke``: input shape and batch size per model.
SMOKE: dict[str, tuple[tuple[int, int, int], int]] = {
    "densenet121": ((64, 64, 3), 2),
    "densenet_bc_100_12": ((32, 32, 3), 4),
}
BLOCK_TF_ENV = "BENCH_BLOCK_TENSORFLOW"


def compute_dtype(policy: str) -> str:
    """The compute dtype of a Keras dtype policy name."""
    return {"mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}.get(policy, policy)


# ----------------------------------------------------------------------------
# Matrix-multiply FLOP/s, per framework.


def matmul_flops(framework: str, dtype: str, n: int, iters: int, repeats: int = 3) -> float:
    """Best measured FLOP/s of an n x n x n matmul in ``dtype`` on the default device.

    Args:
        framework: ``"tensorflow"``, ``"jax"`` or ``"torch"``.
        dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"``.
        n: Matrix size.
        iters: Matmuls per timed window (one synchronization per window).
        repeats: Timed windows; the best is kept (the device's ceiling).

    Returns:
        FLOP/s, counting 2 n^3 per matmul.
    """
    if framework == "tensorflow":
        import tensorflow as tf

        a = tf.random.normal((n, n), dtype=tf.float32)
        a, b = tf.cast(a, dtype), tf.cast(tf.transpose(a), dtype)
        matmul = tf.function(tf.matmul, jit_compile=False)

        def window() -> None:
            out = None
            for _ in range(iters):
                out = matmul(a, b)
            float(out[0, 0])  # synchronizes

    elif framework == "jax":
        import jax
        import jax.numpy as jnp

        key = jax.random.PRNGKey(0)
        a = jax.random.normal(key, (n, n), dtype=jnp.float32).astype(dtype)
        b = a.T
        matmul = jax.jit(jnp.matmul)

        def window() -> None:
            out = None
            for _ in range(iters):
                out = matmul(a, b)
            out.block_until_ready()

    elif framework == "torch":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        a = torch.randn(n, n, device=device).to(getattr(torch, dtype))
        b = a.T.contiguous()

        def window() -> None:
            for _ in range(iters):
                torch.matmul(a, b)
            if device == "cuda":
                torch.cuda.synchronize()

    else:
        raise ValueError(f"Unknown framework {framework!r}.")
    window()  # warm-up: compilation, autotuning
    best = min(time_calls(window, repeats))
    return 2.0 * n**3 * iters / best


# ----------------------------------------------------------------------------
# Workers.


def _keras_worker(config: dict[str, Any]) -> dict[str, Any]:
    import keras

    from keras_densenet import build_densenet
    from keras_densenet.analysis import count_macs

    backend = keras.backend.backend()
    result: dict[str, Any] = {"backend": backend, "device": _keras_device(backend)}
    dtype = compute_dtype(config["policy"])
    result["matmul_flops"] = matmul_flops(
        backend, dtype, config["matmul_n"], config["matmul_iters"]
    )
    keras.mixed_precision.set_dtype_policy(config["policy"])
    keras.utils.set_random_seed(0)
    model = build_densenet(config["preset"], input_shape=tuple(config["input_shape"]))
    result["macs_per_image"] = count_macs(model)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
        loss="sparse_categorical_crossentropy",
        jit_compile=config["jit"],
    )
    batch = config["batch_size"]
    rng_x = keras.random.normal((batch, *config["input_shape"]), seed=1)
    rng_y = keras.random.randint((batch,), 0, int(model.output_shape[-1]), seed=2)
    # Synthetic data made on the device: no host-to-device copy in the steps.
    x, y = keras.ops.convert_to_tensor(rng_x), keras.ops.convert_to_tensor(rng_y)
    start = time.perf_counter()
    model.train_on_batch(x, y)
    result["first_step_s"] = time.perf_counter() - start
    for _ in range(config["warmup"]):
        model.train_on_batch(x, y)
    reset_allocator_peak(backend)
    result["step_s"] = time_calls(lambda: model.train_on_batch(x, y), config["steps"])
    stats = allocator_stats(backend)
    result["peak_memory"] = stats and stats["peak"]
    return result


def _keras_device(backend: str) -> str:
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        return f"{device.platform}: {getattr(device, 'device_kind', '')}"
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            return f"gpu: {details.get('device_name', gpus[0].name)}"
        return "cpu"
    return backend


def _torch_worker(config: dict[str, Any]) -> dict[str, Any]:
    import torch
    import torchvision

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype = compute_dtype(config["policy"])
    result: dict[str, Any] = {
        "backend": "torch",
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "matmul_flops": matmul_flops("torch", dtype, config["matmul_n"], config["matmul_iters"]),
    }
    torch.manual_seed(0)
    height, width, channels = config["input_shape"]
    model = torchvision.models.densenet121(weights=None, num_classes=1000)
    model = model.to(device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    loss_fn = torch.nn.CrossEntropyLoss()
    batch = config["batch_size"]
    x = torch.randn(batch, channels, height, width, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=device)
    half = dtype in ("float16", "bfloat16")
    scaler = torch.amp.GradScaler(device, enabled=dtype == "float16")

    def step(inputs: Any, labels: Any) -> Any:
        with torch.autocast(device, dtype=getattr(torch, dtype), enabled=half):
            loss = loss_fn(model(inputs), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss

    train_step = torch.compile(step) if config["jit"] else step

    def synced_step() -> None:
        float(train_step(x, y))  # loss on the host, like train_on_batch

    start = time.perf_counter()
    synced_step()
    result["first_step_s"] = time.perf_counter() - start
    for _ in range(config["warmup"]):
        synced_step()
    reset_allocator_peak("torch")
    result["step_s"] = time_calls(synced_step, config["steps"])
    stats = allocator_stats("torch")
    result["peak_memory"] = stats and stats["peak"]
    # torchvision's densenet121 has the same convolutions as build_densenet's.
    result["macs_per_image"] = None
    return result


def worker(config: dict[str, Any]) -> dict[str, Any]:
    """Measures one configuration (in a subprocess)."""
    if os.environ.get(BLOCK_TF_ENV) == "1":
        sys.modules["tensorflow"] = None  # `import tensorflow` now raises ImportError
    result = _torch_worker(config) if config["impl"] == "torch" else _keras_worker(config)
    step = median(result["step_s"])
    result["images_per_s"] = config["batch_size"] / step if step else None
    return result


# ----------------------------------------------------------------------------
# Driver.


def _configs(args: argparse.Namespace) -> list[dict[str, Any]]:
    jits = {"on": [True], "off": [False], "both": [False, True]}[args.jit]
    torch_ok = all(importlib.util.find_spec(m) is not None for m in ("torch", "torchvision"))
    configs = []
    for model in args.models:
        preset, shape, batch = MODELS[model]
        if args.smoke:
            shape, batch = SMOKE[model]
        common = {
            "model": model,
            "input_shape": list(shape),
            "batch_size": args.batch_size or batch,
            "steps": args.steps,
            "warmup": args.warmup,
            "matmul_n": args.matmul_n,
            "matmul_iters": args.matmul_iters,
        }
        for policy in args.policies:
            for jit in jits:
                for backend in args.backends:
                    configs.append(
                        {
                            **common,
                            "impl": "keras",
                            "backend": backend,
                            "preset": preset,
                            "policy": policy,
                            "jit": jit,
                        }
                    )
                if model == "densenet121" and torch_ok and not args.no_torch:
                    configs.append(
                        {
                            **common,
                            "impl": "torch",
                            "backend": "torch",
                            "policy": policy,
                            "jit": jit,
                        }
                    )
    return configs


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument(
        "--backends",
        nargs="+",
        choices=["tensorflow", "jax"],
        default=[os.environ.get("KERAS_BACKEND", "tensorflow")],
        help="Keras backends, each in its own workers (default: $KERAS_BACKEND)",
    )
    parser.add_argument(
        "--policies",
        nargs="+",
        default=["mixed_bfloat16"],
        choices=["float32", "mixed_float16", "mixed_bfloat16"],
    )
    parser.add_argument("--jit", choices=["on", "off", "both"], default="on", help="XLA")
    parser.add_argument("--batch-size", type=int, help="default: 256 (smoke: 2 to 4)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repetitions", type=int, default=1)
    parser.add_argument("--matmul-n", type=int, default=8192)
    parser.add_argument("--matmul-iters", type=int, default=20)
    parser.add_argument("--no-torch", action="store_true", help="skip torchvision")
    parser.add_argument(
        "--block-tensorflow",
        action="store_true",
        help="make `import tensorflow` fail in the workers (checks the JAX path)",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny settings for a CPU")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "gpu_bench")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        emit_result(worker(json.loads(args.worker)))
        return
    if args.smoke:
        args.steps, args.warmup = min(args.steps, 3), min(args.warmup, 1)
        args.matmul_n, args.matmul_iters = min(args.matmul_n, 512), min(args.matmul_iters, 3)

    runs = []
    for rep in range(args.repetitions):
        for config in _configs(args):
            env = {"KERAS_BACKEND": config["backend"]} if config["impl"] == "keras" else {}
            if args.block_tensorflow:
                env[BLOCK_TF_ENV] = "1"
            result = run_worker(MODULE, config, env=env)
            runs.append({"repetition": rep, "config": config, "result": result})
            print(
                f"rep {rep} {config['impl']:<5} {config['backend']:<10} {config['model']:<18} "
                f"{config['policy']:<14} xla={'on ' if config['jit'] else 'off'} "
                f"{fmt(result.get('images_per_s'), '.1f')} img/s"
                + (f"  ERROR {result['error'][-400:]!r}" if "error" in result else ""),
                flush=True,
            )

    macs = {
        r["config"]["model"]: r["result"]["macs_per_image"]
        for r in runs
        if r["result"].get("macs_per_image")
    }
    rows = []
    for config in _configs(args):
        same = [r["result"] for r in runs if r["config"] == config and "error" not in r["result"]]
        errors = [
            r["result"]["error"][-200:]
            for r in runs
            if r["config"] == config and "error" in r["result"]
        ]
        ips = median(r["images_per_s"] for r in same)
        peak_flops = median(r["matmul_flops"] for r in same)
        model_macs = macs.get(config["model"])
        achieved = 6.0 * model_macs * ips if ips and model_macs else None
        rows.append(
            {
                "impl": "keras" if config["impl"] == "keras" else "torchvision",
                "backend": config["backend"],
                "model": config["model"],
                "policy": config["policy"],
                "jit": config["jit"],
                "batch_size": config["batch_size"],
                "input_shape": config["input_shape"],
                "device": same[0]["device"] if same else None,
                "images_per_s": ips,
                "macs_per_image": model_macs,
                "achieved_flops": achieved,
                "matmul_flops": peak_flops,
                "mfu": achieved / peak_flops if achieved and peak_flops else None,
                "peak_memory": median(r["peak_memory"] for r in same),
                "first_step_s": median(r["first_step_s"] for r in same),
                "errors": errors,
            }
        )
    table = markdown_table(
        [
            "impl",
            "backend",
            "model",
            "input",
            "policy",
            "XLA/compile",
            "batch",
            "img/s",
            "GMACs/img",
            "achieved TFLOP/s",
            "matmul TFLOP/s",
            "MFU",
            "peak mem MiB",
            "first step s",
        ],
        [
            [
                r["impl"],
                r["backend"],
                r["model"],
                "x".join(str(s) for s in r["input_shape"]),
                r["policy"],
                "on" if r["jit"] else "off",
                r["batch_size"],
                fmt(r["images_per_s"], ".1f"),
                fmt(r["macs_per_image"] and r["macs_per_image"] / 1e9, ".3f"),
                fmt(r["achieved_flops"] and r["achieved_flops"] / 1e12, ".3f"),
                fmt(r["matmul_flops"] and r["matmul_flops"] / 1e12, ".3f"),
                fmt(r["mfu"] and 100 * r["mfu"], ".1f") + ("%" if r["mfu"] else ""),
                mib(r["peak_memory"]),
                fmt(r["first_step_s"], ".1f"),
            ]
            for r in rows
        ],
    )
    devices = sorted({r["device"] for r in rows if r["device"]})
    markdown = (
        f"Devices: {', '.join(devices) or 'unknown'}. Medians of {args.repetitions} "
        f"repetition(s) of {args.steps} timed steps after {args.warmup + 1} warm-up steps. "
        "achieved = 3 x 2 x MACs x img/s; MFU = achieved / measured "
        f"{args.matmul_n}^3 matmul FLOP/s in the policy's compute dtype.\n\n" + table
    )
    if any(r["errors"] for r in rows):
        markdown += "\n\nErrors:\n" + "\n".join(
            f"- {r['impl']} {r['backend']} {r['model']} {r['policy']}: {e}"
            for r in rows
            for e in r["errors"]
        )
    print()
    print(markdown)
    payload = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "rows": rows,
        "runs": runs,
    }
    for path in write_outputs(args.output, payload, markdown):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
