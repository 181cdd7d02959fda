"""XLA's own memory analysis of one JAX training step, normal vs memory-efficient.

Compiles ``jax.value_and_grad`` of a cross-entropy loss through
``model.stateless_call`` for ``build_densenet(..., memory_efficient=False/True)``
and prints XLA's ``temp_size_in_bytes`` (the temporary buffers of the compiled
step, with buffer reuse): the activation memory as XLA plans it, without running
the step and without RSS noise. Runs on whatever device JAX uses.

Example:
    KERAS_BACKEND=jax python -m benchmarks.xla_memory --preset densenet_bc_100_12 --batch-size 64
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import numpy as np


def step_temp_bytes(preset: str, batch_size: int, memory_efficient: bool) -> dict[str, Any]:
    """Compiles one loss-and-gradient step and returns XLA's memory analysis."""
    import jax
    import keras

    from keras_densenet import build_densenet

    model = build_densenet(preset, memory_efficient=memory_efficient)
    x = np.zeros((batch_size, *model.input_shape[1:]), "float32")
    y = np.zeros((batch_size,), "int32")
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]

    def loss(trainable: Any, non_trainable: Any, x: Any, y: Any) -> Any:
        pred, updated = model.stateless_call(trainable, non_trainable, x, training=True)
        return keras.ops.mean(keras.losses.sparse_categorical_crossentropy(y, pred)), updated

    step = jax.jit(jax.value_and_grad(loss, has_aux=True))
    lowered = step.lower(trainable, non_trainable, x, y)
    analysis = lowered.compile().memory_analysis()
    return {
        "temp_bytes": int(analysis.temp_size_in_bytes),
        "argument_bytes": int(analysis.argument_size_in_bytes),
        "output_bytes": int(analysis.output_size_in_bytes),
        "remat_barriers_in_hlo": lowered.as_text(dialect="hlo").count("opt-barrier"),
    }


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="densenet_bc_100_12")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    if os.environ.get("KERAS_BACKEND") != "jax":
        parser.error("run with KERAS_BACKEND=jax")
    results = {}
    for efficient in (False, True):
        results[efficient] = step_temp_bytes(args.preset, args.batch_size, efficient)
        print(
            f"{args.preset} batch {args.batch_size} memory_efficient={efficient}: "
            f"XLA temp {results[efficient]['temp_bytes'] / 2**20:,.1f} MiB, "
            f"remat barriers in HLO {results[efficient]['remat_barriers_in_hlo']}",
            flush=True,
        )
    ratio = results[True]["temp_bytes"] / results[False]["temp_bytes"]
    print(f"ratio efficient / normal: {ratio:.3f}")


if __name__ == "__main__":
    main()
