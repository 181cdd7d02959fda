"""The layers on the JAX backend, in a subprocess (the backend is fixed per process)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import json
    import keras
    import numpy as np
    assert keras.backend.backend() == "jax", keras.backend.backend()
    from keras_densenet import DenseBlock, DenseLayer, TransitionLayer, build_densenet

    x = np.random.default_rng(0).normal(size=(2, 8, 8, 16)).astype("float32")
    out = {}
    out["dense_layer"] = list(DenseLayer(12)(x).shape)
    out["dense_layer_plain"] = list(DenseLayer(12, bottleneck=False, dropout_rate=0.2)(x).shape)
    out["dense_block"] = list(DenseBlock(3, 4)(x).shape)
    out["transition"] = list(TransitionLayer(0.5)(x).shape)
    for layer in (DenseLayer(5), DenseBlock(2, 3), TransitionLayer(0.3)):
        assert type(layer).from_config(layer.get_config()).get_config() == layer.get_config()

    # Memory-efficient mode: same outputs and gradients as the normal mode (jax.checkpoint).
    import jax
    normal, efficient = DenseBlock(3, 4), DenseBlock(3, 4, memory_efficient=True)
    normal.build(x.shape)
    efficient.build(x.shape)
    efficient.set_weights(normal.get_weights())

    def loss(values, block):
        y, _ = block.stateless_call(values, block.non_trainable_variables, x, training=True)
        return (y ** 2).sum()

    grads = []
    for block in (normal, efficient):
        values = [v.value for v in block.trainable_variables]
        grads.append(jax.grad(loss)(values, block))
    out["max_grad_diff"] = max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(*grads)
    )

    model = build_densenet(blocks=(2, 2), growth_rate=4, num_init_features=8, stem="cifar",
                           input_shape=(16, 16, 1), num_classes=2, memory_efficient=True)
    model.compile("adam", "sparse_categorical_crossentropy", jit_compile=True)
    xs = np.random.default_rng(1).normal(size=(16, 16, 16, 1)).astype("float32")
    ys = (xs.mean(axis=(1, 2, 3)) > 0).astype("int32")
    hist = model.fit(xs, ys, epochs=3, batch_size=8, verbose=0)
    out["losses"] = hist.history["loss"]
    model.save("m.keras")
    reloaded = keras.saving.load_model("m.keras", safe_mode=True)
    # Called eagerly: predict() would compile two more XLA programs for this check.
    out["reload_diff"] = float(np.max(np.abs(np.asarray(reloaded(xs, training=False))
                                             - np.asarray(model(xs, training=False)))))
    print("RESULT" + json.dumps(out))
    """
)


def test_layers_on_jax_backend(tmp_path):
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    line = next(s for s in proc.stdout.splitlines() if s.startswith("RESULT"))
    out = json.loads(line[len("RESULT") :])
    assert out["dense_layer"] == [2, 8, 8, 12]
    assert out["dense_layer_plain"] == [2, 8, 8, 12]
    assert out["dense_block"] == [2, 8, 8, 28]
    assert out["transition"] == [2, 4, 4, 8]
    assert out["max_grad_diff"] < 1e-4
    assert out["losses"][-1] < out["losses"][0]
    assert out["reload_diff"] < 1e-5
