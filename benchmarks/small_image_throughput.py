"""Training throughput of DenseNet-BC L=40, k=12 on 28x28x1 batches, one configuration.

A quick probe for choosing the full Fashion-MNIST settings (precision, batch
size, XLA): one process per configuration, synthetic batches, one warm-up fit
of 3 batches, then one timed epoch of 12 batches. Single runs on a shared CPU
are indicative only; `benchmarks.precision` measures precision side by side.

    for c in "float32 64 off" "mixed_bfloat16 64 off" "float32 64 on" "float32 128 off"; do
        .venv/bin/python -m benchmarks.small_image_throughput $c
    done
"""

from __future__ import annotations

import argparse
import os
import time


def main(argv: list[str] | None = None) -> None:
    """Prints images per second for one (precision, batch size, XLA) configuration.

    Args:
        argv: Command-line arguments: precision, batch size, ``on``/``off``.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("precision", choices=["float32", "mixed_bfloat16", "mixed_float16"])
    parser.add_argument("batch_size", type=int)
    parser.add_argument("jit_compile", choices=["on", "off"])
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from benchmarks.common import synthetic_batch
    from keras_densenet import build_densenet

    keras.mixed_precision.set_global_policy(args.precision)
    model = build_densenet("densenet_bc_100_12", depth=40, input_shape=(28, 28, 1), num_classes=10)
    model.compile(
        keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
        "sparse_categorical_crossentropy",
        jit_compile=args.jit_compile == "on",
    )
    batch = args.batch_size
    x, y = synthetic_batch(batch * 12, (28, 28, 1), 10)
    model.fit(x[: batch * 3], y[: batch * 3], batch_size=batch, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
    seconds = time.perf_counter() - start
    print(
        f"{args.precision} batch {batch} XLA {args.jit_compile}: "
        f"{batch * 12 / seconds:.0f} images/s"
    )


if __name__ == "__main__":
    main()
