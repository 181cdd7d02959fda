"""The training recipe: precision, XLA, devices, the optimizer and its schedules.

Milliseconds each: no model is trained here (tests/test_training.py trains).
"""

from __future__ import annotations

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import free_port, same_package_env

from keras_densenet.training import TrainConfig, make_optimizer, recipe, resolve_precision
from keras_densenet.training.recipe import (
    LinearWarmup,
    cpu_has_bfloat16,
    resolve_jit_compile,
)

INT_RANGE = "must be an integer in [1, 2147483647]"


def _rates(schedule, steps):
    return [float(schedule(step)) for step in steps]


# Precision and devices.


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 amx_tile\n", True),
        ("flags\t\t: fpu amx_bf16\n", True),
        ("flags\t\t: fpu avx512f avx512_vnni\n", False),
        ("flags\t\t: fpu avx512_bf16x\n", False),  # whole flags, not substrings
        ("flags\t\t: fpu\nflags\t\t: avx512_bf16\n", False),  # the first flags line counts
        ("vmx flags\t: avx512_bf16\n", False),  # not a flags line
        ("processor\t: 0\n", False),
        ("", False),
    ],
)
def test_bfloat16_instructions_are_read_from_the_cpu_flags(tmp_path, text, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(text)
    assert cpu_has_bfloat16(str(cpuinfo)) is expected


def test_an_unreadable_cpuinfo_means_no_bfloat16(tmp_path):
    assert cpu_has_bfloat16(str(tmp_path / "missing")) is False
    assert cpu_has_bfloat16(str(tmp_path)) is False  # a directory
    # By default it reads Linux's file, whatever this machine's CPU is.
    with open("/proc/cpuinfo") as f:
        flags = next((line for line in f if line.startswith("flags")), "").split()
    assert cpu_has_bfloat16() is ("avx512_bf16" in flags or "amx_bf16" in flags)


@pytest.fixture
def two_gpus(monkeypatch):
    """TensorFlow reports two GPUs of compute capability 8.0 and 7.5 (none are needed)."""
    import tensorflow as tf

    gpus = [tf.config.PhysicalDevice(f"/physical_device:GPU:{i}", "GPU") for i in range(2)]
    details = {gpus[0].name: {"compute_capability": (8, 0)}, gpus[1].name: {}}
    cpu = tf.config.PhysicalDevice("/physical_device:CPU:0", "CPU")

    def devices(kind=None):  # as TensorFlow answers: by exact type, None for all
        return [d for d in [cpu, *gpus] if kind is None or d.device_type == kind]

    monkeypatch.setattr(tf.config, "list_physical_devices", devices)
    monkeypatch.setattr(tf.config.experimental, "get_device_details", lambda d: details[d.name])
    return gpus


def test_gpu_capabilities_list_the_visible_gpus(two_gpus):
    # A GPU whose details lack a capability counts as (0, 0): too old for tensor cores.
    assert recipe.gpu_compute_capabilities() == [(8, 0), (0, 0)]


def test_gpu_capabilities_on_jax_and_pytorch(monkeypatch):
    import types

    import jax
    import torch

    fake = [
        types.SimpleNamespace(platform="cpu"),
        types.SimpleNamespace(platform="gpu", compute_capability="8.6"),
        types.SimpleNamespace(platform="gpu", compute_capability="10.0"),
    ]
    monkeypatch.setattr(jax, "devices", lambda: fake)
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    assert recipe.gpu_compute_capabilities() == [(8, 6), (10, 0)]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i: [(7, 5), (9, 0)][i])
    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    assert recipe.gpu_compute_capabilities() == [(7, 5), (9, 0)]
    monkeypatch.setattr(keras.backend, "backend", lambda: "numpy")
    assert recipe.gpu_compute_capabilities() == []


def test_auto_settings_ask_tensorflow_for_gpus(two_gpus, monkeypatch):
    assert resolve_precision("auto") == "float32"  # one GPU without tensor cores
    assert resolve_jit_compile("auto") is True  # but GPUs: XLA
    monkeypatch.setattr(recipe, "gpu_compute_capabilities", lambda: [(8, 0), (9, 0)])
    assert resolve_precision("auto") == "mixed_float16"


@pytest.mark.parametrize(
    ("gpus", "expected"),
    [
        ([(8, 0)], "mixed_float16"),  # tensor cores
        ([(7, 0), (8, 6)], "mixed_float16"),
        ([(7, 0)], "mixed_float16"),  # 7.0 is the first with them
        ([(6, 1)], "float32"),  # no tensor cores: float16 is no faster
        ([(8, 0), (6, 1)], "float32"),  # every GPU must have them
        ([], "float32"),  # CPUs, bfloat16 ones too: not faster at equal accuracy
    ],
)
def test_auto_precision_follows_the_hardware(gpus, expected):
    assert resolve_precision("auto", gpus=gpus) == expected
    for fixed in ("float32", "mixed_float16", "mixed_bfloat16"):
        assert resolve_precision(fixed, gpus=gpus) == fixed


def test_dtype_policy_is_set_for_a_block_and_restored_after_an_error(monkeypatch):
    assert keras.config.dtype_policy().name == "float32"
    with recipe.dtype_policy("mixed_bfloat16"):
        assert keras.config.dtype_policy().name == "mixed_bfloat16"
    assert keras.config.dtype_policy().name == "float32"
    with pytest.raises(RuntimeError, match="inside"), recipe.dtype_policy("mixed_float16"):
        assert keras.config.dtype_policy().name == "mixed_float16"
        raise RuntimeError("inside")
    assert keras.config.dtype_policy().name == "float32"
    monkeypatch.setattr(recipe, "gpu_compute_capabilities", lambda: [(8, 0)])
    with recipe.dtype_policy("auto"):  # resolved, not set as "auto"
        assert keras.config.dtype_policy().name == "mixed_float16"
    assert keras.config.dtype_policy().name == "float32"


def test_a_mirrored_strategy_only_when_asked_and_on_tensorflow(monkeypatch):
    import tensorflow as tf

    assert recipe.make_strategy(TrainConfig()) is None
    assert isinstance(
        recipe.make_strategy(TrainConfig(distribute="mirrored")), tf.distribute.MirroredStrategy
    )
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    assert recipe.make_strategy(TrainConfig()) is None
    with pytest.raises(ValueError) as caught:
        recipe.make_strategy(TrainConfig(distribute="mirrored"))
    assert str(caught.value) == (
        "`distribute='mirrored'` needs the TensorFlow backend (KERAS_BACKEND is 'jax'); use "
        "distribute='data_parallel' on JAX."
    )


DATA_PARALLEL = """
import json
import jax
import keras
from keras_densenet.training import TrainConfig, recipe
counts = [recipe.data_parallel(TrainConfig()) for _ in range(2)]  # joining happens once
distribution = keras.distribution.distribution()
print("RESULT" + json.dumps({
    "counts": counts, "kind": type(distribution).__name__,
    "mesh": int(distribution.device_mesh.devices.size),
    "joined": jax.distributed.is_initialized(),
}))
"""


@pytest.mark.parametrize("multi_host", [False, True])
def test_data_parallel_on_jax_splits_over_every_device(multi_host, monkeypatch):
    """Refused on TensorFlow; on JAX with two CPU devices, split over both (with the
    multi-host variables, after joining a runtime of one process, once)."""
    monkeypatch.setattr(keras.backend, "backend", lambda: "tensorflow")
    with pytest.raises(ValueError) as caught:
        recipe.data_parallel(TrainConfig())
    assert str(caught.value) == (
        "`distribute='data_parallel'` needs the JAX backend (KERAS_BACKEND=jax); the backend "
        "is 'tensorflow'. On TensorFlow use 'mirrored'."
    )

    import keras_densenet

    hosts = {
        "KERAS_DISTRIBUTION_JOB_ADDRESSES": f"127.0.0.1:{free_port()}",
        "KERAS_DISTRIBUTION_NUM_PROCESSES": "1",
        "KERAS_DISTRIBUTION_PROCESS_ID": "0",
    }
    env = same_package_env(
        keras_densenet,
        KERAS_BACKEND="jax",
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        **(hosts if multi_host else {}),
    )
    for name in () if multi_host else hosts:
        env.pop(name, None)
    proc = subprocess.run(
        [sys.executable, "-c", DATA_PARALLEL], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(s for s in proc.stdout.splitlines() if s.startswith("RESULT"))
    got = json.loads(line[len("RESULT") :])
    assert got == {"counts": [2, 2], "kind": "DataParallel", "mesh": 2, "joined": multi_host}


# XLA.


def test_jit_compile_modes():
    strategy = object()
    assert resolve_jit_compile("off", gpus=1) is False
    assert resolve_jit_compile("on", gpus=0) is True
    assert resolve_jit_compile("on", precision="mixed_float16") is True  # no strategy: fine
    assert resolve_jit_compile("on", strategy=strategy, precision="float32") is True
    assert resolve_jit_compile("on", strategy=strategy, precision="mixed_bfloat16") is True
    assert resolve_jit_compile("auto", gpus=0) is False
    assert resolve_jit_compile("auto", gpus=1) is True  # XLA where a GPU is
    assert resolve_jit_compile("auto", gpus=2) is True
    assert resolve_jit_compile("auto", strategy=strategy, gpus=2) is False
    with pytest.raises(ValueError) as caught:
        resolve_jit_compile("on", strategy=strategy, precision="mixed_float16")
    assert str(caught.value) == (
        "XLA with mixed_float16 under MirroredStrategy crashes (keras-team/keras#18666)."
    )
    for bad in ("yes", "ON", None):
        with pytest.raises(ValueError) as caught:
            resolve_jit_compile(bad)
        assert str(caught.value) == (
            f"`jit_compile` must be one of ('off', 'on', 'auto'), got {bad!r}."
        )


def test_auto_jit_compile_asks_tensorflow_and_follows_other_backends(monkeypatch):
    import tensorflow as tf

    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: [])
    assert resolve_jit_compile("auto") is False  # no GPU: no XLA (see two_gpus for GPUs)
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    assert resolve_jit_compile("auto", gpus=0) is True  # JAX compiles everything with XLA
    assert resolve_jit_compile("auto", strategy=object()) is False
    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    assert resolve_jit_compile("auto", gpus=2) is False


# The learning rate.


def test_linear_warmup_ramps_then_follows_its_schedule():
    inner = keras.optimizers.schedules.PiecewiseConstantDecay([9], [1.0, 0.5])
    warm = LinearWarmup(inner, 4)
    assert warm.warmup_steps == 4
    np.testing.assert_allclose(
        _rates(warm, range(12)),
        [0.25, 0.4375, 0.625, 0.8125, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5],
        rtol=1e-6,
    )
    assert float(LinearWarmup(inner, 1)(0)) == 1.0  # one step: no ramp
    for bad, error in ((0, ValueError), (2.5, TypeError)):
        with pytest.raises(error) as caught:
            LinearWarmup(inner, bad)
        assert str(caught.value) == f"`warmup_steps` {INT_RANGE}, got {bad}."


def test_linear_warmup_round_trips_through_its_config():
    inner = keras.optimizers.schedules.CosineDecay(0.1, decay_steps=20)
    warm = LinearWarmup(inner, 5)
    config = warm.get_config()
    assert config == {"schedule": keras.optimizers.schedules.serialize(inner), "warmup_steps": 5}
    assert keras.saving.get_registered_name(LinearWarmup) == "keras_densenet>LinearWarmup"
    revived = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(warm))
    assert type(revived) is LinearWarmup and revived.warmup_steps == 5
    assert type(revived.schedule) is keras.optimizers.schedules.CosineDecay
    steps = [0, 2, 5, 13, 25]
    np.testing.assert_allclose(_rates(revived, steps), _rates(warm, steps), rtol=1e-6)


@pytest.mark.parametrize(
    ("total", "rates"),
    [
        # The update that starts the second half sees lr/10, the one at 75% lr/100.
        (100, {0: 1.0, 49: 1.0, 50: 0.1, 74: 0.1, 75: 0.01, 99: 0.01}),
        (4, {0: 1.0, 1: 1.0, 2: 0.1, 3: 0.01}),
        (3, {0: 1.0, 1: 1.0, 2: 0.1}),
        (2, {0: 1.0, 1: 0.1}),
        (1, {0: 1.0}),
    ],
)
def test_the_paper_steps_at_half_and_three_quarters(total, rates):
    config = TrainConfig(epochs=1, schedule="step", warmup_epochs=0, learning_rate=1.0)
    lr = make_optimizer(config, total_steps=total, global_batch=64)._learning_rate
    assert type(lr) is keras.optimizers.schedules.PiecewiseConstantDecay
    np.testing.assert_allclose(_rates(lr, rates), list(rates.values()), rtol=1e-6)


def test_the_learning_rate_scales_with_the_global_batch_unless_given():
    for batch, base in ((64, 0.1), (128, 0.2), (16, 0.025)):
        config = TrainConfig(epochs=1, schedule="cosine", warmup_epochs=0)
        lr = make_optimizer(config, total_steps=10, global_batch=batch)._learning_rate
        np.testing.assert_allclose(float(lr(0)), base, rtol=1e-6)
    config = TrainConfig(epochs=1, schedule="cosine", warmup_epochs=0, learning_rate=0.03)
    lr = make_optimizer(config, total_steps=10, global_batch=128)._learning_rate
    np.testing.assert_allclose(float(lr(0)), 0.03, rtol=1e-6)


def test_cosine_decays_to_zero_over_the_run():
    config = TrainConfig(schedule="cosine", warmup_epochs=0, learning_rate=0.05)
    lr = make_optimizer(config, 100, 64)._learning_rate
    assert type(lr) is keras.optimizers.schedules.CosineDecay
    assert lr.decay_steps == 100 and lr.alpha == 0.0 and not lr.warmup_steps
    np.testing.assert_allclose(_rates(lr, (0, 50, 100)), [0.05, 0.025, 0.0], atol=1e-7)
    one = make_optimizer(TrainConfig(epochs=1, schedule="cosine", warmup_epochs=0), 0, 64)
    assert one._learning_rate.decay_steps == 1  # never a zero division


@pytest.mark.parametrize("schedule", ["step", "cosine"])
def test_linear_warmup(schedule):
    # 4 epochs of 25 steps, 1 epoch of warm-up: a linear ramp from 0.1 / 25 at
    # update 0 to 0.1 at update 25 (CosineDecay's own warm-up ramp).
    config = TrainConfig(epochs=4, schedule=schedule, warmup_epochs=1.0, learning_rate=0.1)
    lr = make_optimizer(config, total_steps=100, global_batch=64, steps_per_epoch=25)._learning_rate
    ramp = _rates(lr, (0, 10, 20))
    np.testing.assert_allclose(ramp, [0.004, 0.004 + 0.096 * 0.4, 0.004 + 0.096 * 0.8], rtol=1e-5)
    after = _rates(lr, (25, 60, 99))
    if schedule == "step":  # the paper's steps are where they were without warm-up
        assert type(lr) is LinearWarmup and lr.warmup_steps == 25
        np.testing.assert_allclose(after, [0.1, 0.01, 0.001], rtol=1e-5)
    else:  # cosine from the end of warm-up to 0
        assert lr.warmup_steps == 25 and lr.decay_steps == 75
        np.testing.assert_allclose(after[0], 0.1, rtol=1e-4)
        np.testing.assert_allclose(float(lr(100)), 0.0, atol=1e-9)
        assert after[0] > after[1] > after[2] > 0
        assert after[2] < 0.1 * 1e-3
    # The schedule survives a .keras round trip of the optimizer.
    optimizer = make_optimizer(config, total_steps=100, global_batch=64, steps_per_epoch=25)
    revived = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    np.testing.assert_allclose(
        _rates(revived._learning_rate, (0, 12, 60)), _rates(lr, (0, 12, 60)), rtol=1e-6
    )


@pytest.mark.parametrize(
    ("warmup_epochs", "steps_per_epoch", "total", "expected"),
    [
        (1.0, 25, 100, 25),
        (0.5, 25, 100, 12),  # rounded (12.5 to even)
        (0.5, 27, 100, 14),  # rounded (13.5 to even)
        (1.0, 25, 10, 9),  # never the whole run: the last update gets the full rate
        (1.0, 25, 1, 0),  # a one-update run has no warm-up
        (0.0, 25, 100, 0),
    ],
)
def test_warmup_length(warmup_epochs, steps_per_epoch, total, expected):
    config = TrainConfig(epochs=4, schedule="step", warmup_epochs=warmup_epochs)
    lr = make_optimizer(config, total, 64, steps_per_epoch=steps_per_epoch)._learning_rate
    if expected:
        assert type(lr) is LinearWarmup and lr.warmup_steps == expected
    else:
        assert type(lr) is keras.optimizers.schedules.PiecewiseConstantDecay


def test_cosine_after_warmup_reaches_zero_at_the_last_update():
    config = TrainConfig(epochs=2, schedule="cosine", warmup_epochs=1.0, learning_rate=0.1)
    lr = make_optimizer(config, total_steps=2, global_batch=64, steps_per_epoch=1)._learning_rate
    assert lr.warmup_steps == 1 and lr.decay_steps == 1
    np.testing.assert_allclose(_rates(lr, (0, 1, 2)), [0.1, 0.1, 0.0], atol=1e-9)


def test_linear_warmup_counts_steps_in_float32_whatever_floatx_is():
    warm = LinearWarmup(
        keras.optimizers.schedules.PiecewiseConstantDecay([10**6], [1.0, 1.0]), 5000
    )
    keras.config.set_floatx("float16")  # 4097 is not a float16 number
    try:
        rate = float(warm(4097))
    finally:
        keras.config.set_floatx("float32")
    np.testing.assert_allclose(rate, 1 / 5000 + (1 - 1 / 5000) * 4097 / 5000, rtol=1e-6)


def test_warmup_epochs_count_in_steps_per_epoch_of_the_run():
    # Without steps_per_epoch: total_steps / epochs (100 / 4 = 25), at least 1.
    config = TrainConfig(epochs=4, schedule="step", warmup_epochs=1.0)
    assert make_optimizer(config, 100, 64)._learning_rate.warmup_steps == 25
    assert make_optimizer(config, 102, 64)._learning_rate.warmup_steps == 25
    assert make_optimizer(config, 3, 64)._learning_rate.warmup_steps == 1


def test_optimizer_follows_the_paper():
    config = TrainConfig(epochs=4, schedule="step", warmup_epochs=0)
    optimizer = make_optimizer(config, total_steps=100, global_batch=128)
    assert type(optimizer) is keras.optimizers.SGD
    assert optimizer.nesterov is True and optimizer.momentum == 0.9
    assert optimizer.weight_decay == 1e-4
    other = make_optimizer(TrainConfig(momentum=0.5, weight_decay=5e-4), 100, 64)
    assert other.momentum == 0.5 and other.weight_decay == 5e-4
    # No decay at all is None, not 0 (Keras then skips the decay step entirely).
    assert make_optimizer(TrainConfig(weight_decay=0.0), 100, 64).weight_decay is None
    # Weight decay applies to kernels only, not BN scales and offsets or biases.
    bn = keras.layers.BatchNormalization()
    bn.build((None, 4))
    dense = keras.layers.Dense(2)
    dense.build((None, 4))
    conv = keras.layers.Conv2D(2, 1)
    conv.build((None, 3, 3, 4))
    variables = bn.trainable_variables + dense.trainable_variables + conv.trainable_variables
    optimizer.build(variables)
    decayed = sorted(v.path for v in variables if optimizer._use_weight_decay(v))
    assert decayed == sorted([dense.kernel.path, conv.kernel.path])


def _two_layer_model() -> keras.Model:
    inputs = keras.Input((2,))
    x = keras.layers.Dense(2, name="conv1_conv", use_bias=False)(inputs)
    outputs = keras.layers.Dense(2, name="predictions")(x)
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize("weight_decay", [None, 0.01])
def test_backbone_scaled_sgd_is_sgd_with_a_scaled_backbone_rate(weight_decay):
    """One model steps with BackboneScaledSGD, two copies with plain SGD at each rate."""
    from keras_densenet.training.recipe import BackboneScaledSGD

    grads = [np.full((2, 2), 0.5, np.float32), np.ones((2, 2), np.float32), np.ones(2, np.float32)]
    common = {"momentum": 0.9, "nesterov": True, "weight_decay": weight_decay}
    models = [_two_layer_model() for _ in range(3)]
    for m in models[1:]:
        m.set_weights(models[0].get_weights())
    scaled = BackboneScaledSGD(0.1, learning_rate=0.5, **common)
    full, small = (keras.optimizers.SGD(learning_rate=lr, **common) for lr in (0.5, 0.05))
    for _ in range(3):  # momentum carries over between steps
        scaled.apply([keras.ops.convert_to_tensor(g) for g in grads], models[0].trainable_weights)
        full.apply([keras.ops.convert_to_tensor(g) for g in grads], models[1].trainable_weights)
        small.apply([keras.ops.convert_to_tensor(g) for g in grads], models[2].trainable_weights)
    got = [np.asarray(w) for w in models[0].trainable_weights]
    np.testing.assert_allclose(got[0], np.asarray(models[2].trainable_weights[0]), rtol=1e-6)
    for a, b in zip(got[1:], models[1].trainable_weights[1:], strict=True):
        np.testing.assert_allclose(a, np.asarray(b), rtol=1e-6)
    assert not np.allclose(got[0], np.asarray(models[1].trainable_weights[0]))
    revived = keras.optimizers.deserialize(keras.optimizers.serialize(scaled))
    assert type(revived) is BackboneScaledSGD and revived.backbone_lr_scale == 0.1
    assert revived.head_layers == scaled.head_layers and "predictions" in revived.head_layers
    with pytest.raises(ValueError, match="backbone_lr_scale"):
        BackboneScaledSGD(0.0)


def test_make_optimizer_scales_the_backbone_only_when_asked():
    from keras_densenet.training.recipe import BackboneScaledSGD

    config = TrainConfig(epochs=2)
    assert type(make_optimizer(config, 10, 64)) is keras.optimizers.SGD
    scaled = make_optimizer(config, 10, 64, backbone_lr_scale=0.25)
    assert isinstance(scaled, BackboneScaledSGD) and scaled.backbone_lr_scale == 0.25
