"""Training: model.fit on real data, resume, precision, XLA, distribution."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import warnings

import keras
import numpy as np
import pytest
from conftest import free_port

from keras_densenet.training import (
    TrainConfig,
    TrainingError,
    load_model,
    resolve_precision,
    train,
)

#: A small DenseNet-BC (2 layers per block, k=8) that learns Fashion-MNIST fast.
SMALL = {"preset": "densenet_bc_100_12", "depth": 16, "growth_rate": 8}
#: Even smaller, for wiring tests that only need a few steps (and two batches of
#: BatchNorm recalibration instead of 30).
TINY = {"preset": "densenet_bc_100_12", "depth": 10, "growth_rate": 4, "bn_recalibrate_steps": 2}


def _history(run_dir):
    with open(os.path.join(run_dir, "history.csv"), newline="") as f:
        return list(csv.DictReader(f))


def test_two_epochs_on_real_sample_beat_chance(tmp_path):
    out = str(tmp_path / "run")
    # Two epochs of 80 steps (1,280 of the sample's 2,700 training images each):
    # short enough that stale BatchNorm statistics would show.
    summary = train(
        {
            **SMALL,
            "epochs": 2,
            "steps_per_epoch": 80,
            "batch_size": 16,
            "seed": 1,
            "out": out,
            "verbose": 0,
        }
    )
    assert summary["test_accuracy"] > 0.4  # chance is 0.1
    # Evaluation matches training from the first epoch: inference-mode
    # validation accuracy is not far below training accuracy (with
    # keras.applications' BN momentum 0.99 and no recalibration it was 0.17
    # against 0.43 after one epoch).
    for row in _history(out):
        assert float(row["val_accuracy"]) >= float(row["accuracy"]) - 0.15, row
    assert summary["test_accuracy"] >= summary["final"]["accuracy"] - 0.15
    assert summary["bn_momentum"] == 0.9 and summary["bn_recalibrate_steps"] == 30
    assert summary["test_accuracy_before_recalibration"] > 0.4
    assert summary["epochs"] == 2
    assert summary["source"] == "sample"
    assert summary["input_shape"] == [28, 28, 1]
    for name in (
        "best.keras",
        "last.keras",
        "history.csv",
        "curves.png",
        "summary.json",
        "config.json",
        "confusion_matrix.png",
        "evaluation.json",
    ):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    assert any(
        f.startswith("events") for _, _, fs in os.walk(os.path.join(out, "logs")) for f in fs
    )
    assert not [f for f in os.listdir(out) if f.startswith(".tmp")]
    assert [int(r["epoch"]) for r in _history(out)] == [0, 1]
    with open(os.path.join(out, "summary.json")) as f:
        assert json.load(f)["test_accuracy"] == summary["test_accuracy"]
    model = keras.saving.load_model(os.path.join(out, "best.keras"), safe_mode=True)
    assert model.input_shape == (None, 28, 28, 1)  # the model follows the data
    assert model.output_shape == (None, 10)
    assert model.get_layer("normalization") is not None  # takes raw pixels


def test_recalibration_repairs_a_stale_momentum_and_ships_population_stats(tmp_path):
    """BN momentum 0.99 (keras.applications'): only recalibration makes evaluation honest."""
    from keras_densenet.data import load_dataset

    out = str(tmp_path / "run")
    summary = train(
        {
            **SMALL,
            "epochs": 1,
            "batch_size": 64,  # 43 batches: 50 recalibration steps see every image
            "seed": 1,
            "bn_momentum": 0.99,
            "bn_recalibrate_steps": 50,
            # The paper's schedule: a warm-up over the only epoch would leave the
            # weights too close to their start for stale statistics to show.
            "schedule": "step",
            "warmup_epochs": 0,
            "label_smoothing": 0,
            "out": out,
            "verbose": 0,
        }
    )
    train_accuracy = summary["final"]["accuracy"]
    assert summary["final"]["val_accuracy"] >= train_accuracy - 0.15
    assert summary["test_accuracy_before_recalibration"] < train_accuracy - 0.15  # stale
    assert summary["test_accuracy"] >= summary["test_accuracy_before_recalibration"] + 0.2
    # The saved model carries population statistics: its first BN layer reads
    # the stem's output, which depends on one image alone, so its statistics are
    # exactly the moments over the (unaugmented) training images, whatever the
    # batching.
    model = keras.saving.load_model(os.path.join(out, "best.keras"))
    images, _ = load_dataset(
        "fashion_mnist_sample", "train", validation_fraction=0.1, normalize=False, augment=False
    )
    stem = keras.Model(model.input, model.get_layer("conv1_conv").output)
    features = np.concatenate([stem.predict_on_batch(x) for x, _ in images]).astype(np.float64)
    features = features.reshape(-1, features.shape[-1])
    bn = model.get_layer("conv2").dense_layers[0].bn1
    np.testing.assert_allclose(np.asarray(bn.moving_mean), features.mean(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        np.asarray(bn.moving_variance), features.var(0), rtol=1e-3, atol=1e-4
    )
    assert bn.momentum == 0.99


def test_existing_run_needs_resume(tmp_path):
    out = str(tmp_path / "run")
    train({**TINY, "epochs": 1, "steps_per_epoch": 2, "out": out, "verbose": 0})
    with pytest.raises(ValueError, match="resume"):
        train({**TINY, "epochs": 1, "steps_per_epoch": 2, "out": out, "verbose": 0})
    with pytest.raises(ValueError, match="differ"):
        train(
            {
                **TINY,
                "growth_rate": 6,
                "epochs": 1,
                "steps_per_epoch": 2,
                "out": out,
                "resume": True,
                "verbose": 0,
            }
        )


@pytest.mark.parametrize(
    ("precision", "jit_compile"),
    # mixed_float16 with XLA and loss scaling is the GPU recipe, checked here where
    # there is no GPU (mixed_float16 without XLA trains in test_export's runs).
    [("mixed_bfloat16", "off"), ("mixed_float16", "on")],
)
def test_mixed_precision_wiring(tmp_path, precision, jit_compile):
    out = str(tmp_path / precision)
    summary = train(
        {
            **TINY,
            "epochs": 1,
            "steps_per_epoch": 3,
            "precision": precision,
            "jit_compile": jit_compile,
            "out": out,
            "verbose": 0,
        }
    )
    assert keras.mixed_precision.global_policy().name == "float32"  # restored
    assert summary["precision"] == precision
    assert summary["jit_compile"] is (jit_compile == "on")
    assert np.isfinite(summary["final"]["loss"]) and np.isfinite(summary["final"]["val_loss"])
    # The package's loader restores the loss-scaled optimizer with its state
    # (plain keras.saving.load_model under float32 would drop it, with a warning).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = load_model(os.path.join(out, "last.keras"))
    assert keras.mixed_precision.global_policy().name == "float32"
    assert int(model.optimizer.iterations) == 3
    low = precision.split("_")[1]
    for layer in model._flatten_layers(include_self=False):
        for w in layer.weights:
            assert keras.backend.standardize_dtype(w.dtype) in ("float32", "int64"), w.path
        if layer.name in ("predictions", "image", "normalization"):
            continue
        assert layer.compute_dtype == low, layer.name
    assert model.get_layer("predictions").compute_dtype == "float32"
    out_dtype = model(np.zeros((1, 28, 28, 1), "float32")).dtype
    assert keras.backend.standardize_dtype(out_dtype) == "float32"
    # compile() wrapped the optimizer for loss scaling under mixed_float16 only.
    expected = "LossScaleOptimizer" if precision == "mixed_float16" else "SGD"
    assert summary["optimizer"] == expected
    assert type(model.optimizer).__name__ == expected


def test_auto_precision_on_this_machine(tmp_path):
    # What "auto" means on this machine (float32 on any CPU, whatever bfloat16
    # instructions it has; mixed_float16 on tensor-core GPUs) is what the run used.
    expected = resolve_precision("auto")
    summary = train(
        {
            **TINY,
            "epochs": 1,
            "steps_per_epoch": 2,
            "precision": "auto",
            "out": str(tmp_path / "auto"),
            "verbose": 0,
        }
    )
    assert summary["precision"] == expected
    assert load_model(str(tmp_path / "auto")).dtype_policy.name == expected
    with open(os.path.join(tmp_path, "auto", "config.json")) as f:
        assert json.load(f)["precision"] == "auto"  # a resume on other hardware re-resolves


def test_label_smoothing_reaches_the_loss():
    """The compiled loss is cross-entropy against smoothed one-hot labels, nothing else."""
    from keras_densenet.losses import SparseSmoothedCrossentropy
    from keras_densenet.training import build_training_model, load_training_data

    smoothing = 0.2
    config = TrainConfig(**TINY, label_smoothing=smoothing, epochs=1, steps_per_epoch=1)
    data = load_training_data(config)
    model = build_training_model(config, data)
    images, labels = next(iter(data.validation))
    images, labels = np.asarray(images), np.asarray(labels)
    assert labels.ndim == 1  # integer labels: the batch size stays visible to distribution
    one_hot = np.eye(10)[labels]
    probabilities = np.asarray(model(images, training=False), np.float64)
    smoothed = one_hot * (1 - smoothing) + smoothing / 10
    expected = -np.mean(np.sum(smoothed * np.log(np.clip(probabilities, 1e-7, 1)), axis=-1))
    loss = model.compute_loss(x=images, y=labels, y_pred=probabilities.astype(np.float32))
    penalty = sum(float(x) for x in model.losses)  # no regularizer: 0
    np.testing.assert_allclose(float(loss) - penalty, expected, rtol=1e-4)
    plain = -np.mean(np.sum(one_hot * np.log(np.clip(probabilities, 1e-7, 1)), axis=-1))
    # ... and the same comparison tells it from the unsmoothed loss.
    assert not np.isclose(float(loss) - penalty, plain, rtol=1e-4, atol=0)
    # Keras' own smoothing on one-hot labels agrees, and the loss survives a round trip.
    reference = keras.losses.CategoricalCrossentropy(label_smoothing=smoothing)
    p32 = probabilities.astype(np.float32)
    np.testing.assert_allclose(
        float(SparseSmoothedCrossentropy(smoothing)(labels[:, None], p32)),
        float(reference(one_hot.astype(np.float32), p32)),
        rtol=1e-5,
    )
    restored = keras.losses.deserialize(keras.losses.serialize(SparseSmoothedCrossentropy(0.3)))
    assert isinstance(restored, SparseSmoothedCrossentropy) and restored.label_smoothing == 0.3
    with pytest.raises(ValueError, match="label_smoothing"):
        SparseSmoothedCrossentropy(1.0)


@pytest.mark.reliability("faults")
def test_nan_loss_stops_and_keeps_last_good_model(tmp_path):
    out = str(tmp_path / "nan")
    train({**TINY, "epochs": 1, "steps_per_epoch": 2, "out": out, "verbose": 0})
    good = keras.saving.load_model(os.path.join(out, "last.keras")).get_weights()
    with pytest.raises(TrainingError, match="NaN"):
        train(
            {
                **TINY,
                "epochs": 3,
                "steps_per_epoch": 2,
                "learning_rate": 1e30,
                "out": out,
                "resume": True,
                "verbose": 0,
            }
        )
    kept = keras.saving.load_model(os.path.join(out, "last.keras")).get_weights()
    for a, b in zip(kept, good, strict=True):
        np.testing.assert_array_equal(a, b)


MIRRORED = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    from keras_densenet.training import train
    summary = train({"preset": "densenet_bc_100_12", "depth": 10, "growth_rate": 4,
                     "epochs": 1, "steps_per_epoch": 3, "batch_size": 8,
                     "bn_recalibrate_steps": 2, "distribute": "mirrored", "sync_batchnorm": True,
                     "out": sys.argv[1], "verbose": 0})
    print("RESULT" + json.dumps(summary))
    """
)


def test_mirrored_strategy_on_two_logical_cpus(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", MIRRORED, str(tmp_path / "mirrored")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(s for s in proc.stdout.splitlines() if s.startswith("RESULT"))
    summary = json.loads(line[len("RESULT") :])
    assert summary["replicas"] == 2
    assert summary["global_batch_size"] == 16  # per-replica batch x replicas
    assert np.isfinite(summary["final"]["loss"])


DATA_PARALLEL = textwrap.dedent(
    """
    import json, sys
    import keras
    from keras_densenet.training import train
    summary = train({"preset": "densenet_bc_100_12", "depth": 10, "growth_rate": 4,
                     "epochs": 1, "steps_per_epoch": 3, "batch_size": 8,
                     "bn_recalibrate_steps": 0, "distribute": "data_parallel",
                     "out": sys.argv[1], "verbose": 0})
    assert keras.distribution.distribution() is None  # restored after the run
    print("RESULT" + json.dumps(summary))
    """
)


@pytest.mark.slow  # two JAX processes (40 s); test_recipe checks the device split by default
def test_jax_data_parallel_two_hosts_on_localhost(tmp_path):
    """Two processes, one JAX CPU device each, joined by keras.distribution.initialize."""
    out = str(tmp_path / "dp")
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "JAX_PLATFORMS": "cpu",
        "KERAS_DISTRIBUTION_JOB_ADDRESSES": f"127.0.0.1:{free_port()}",
        "KERAS_DISTRIBUTION_NUM_PROCESSES": "2",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", DATA_PARALLEL, out],
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**env, "KERAS_DISTRIBUTION_PROCESS_ID": str(i)},
        )
        for i in range(2)
    ]
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-3000:]
        line = next(s for s in stdout.splitlines() if s.startswith("RESULT"))
        results.append(json.loads(line[len("RESULT") :]))
    chief, worker = results
    assert chief["replicas"] == worker["replicas"] == 2
    assert chief["global_batch_size"] == 16
    # Both hosts hold the same replicated model after every synchronized step.
    assert chief["final"]["loss"] == pytest.approx(worker["final"]["loss"], rel=1e-5)
    assert os.path.exists(os.path.join(out, "best.keras"))
    assert os.path.exists(os.path.join(out, "worker-1", "best.keras"))


def test_distribute_needs_the_right_backend(tmp_path):
    with pytest.raises(ValueError, match="KERAS_BACKEND=jax"):
        train(
            {
                **TINY,
                "epochs": 1,
                "distribute": "data_parallel",
                "out": str(tmp_path / "x"),
                "verbose": 0,
            }
        )


def test_recalibration_is_kept_only_if_validation_agrees(tmp_path):
    import tensorflow as tf

    from keras_densenet import rundir
    from keras_densenet.batchnorm import batchnorm_layers
    from keras_densenet.training import finish
    from keras_densenet.training.data import load_training_data

    out = str(tmp_path / "run")
    config = TrainConfig(
        **SMALL, epochs=1, batch_size=16, steps_per_epoch=20, seed=2, out=out, verbose=0
    )
    summary = train(config)
    assert summary["bn_statistics"] in ("recalibrated", "moving averages")
    best_path = os.path.join(out, "best.keras")
    test_args = {"split": "test", "batch_size": 16, "bad_images": None}
    data = load_training_data(config)

    def moments(model):
        return [
            w.numpy().copy() for bn in batchnorm_layers(model) for w in bn.non_trainable_weights
        ]

    # Statistics from constant white images describe nothing the model sees:
    # validation prefers the moving averages, and best.keras is left as it was.
    white = tf.data.Dataset.from_tensors(
        (tf.fill((16, 28, 28, 1), 255.0), tf.zeros((16,), tf.int64))
    ).repeat()
    best = rundir.load_model(best_path)
    on_disk = moments(best)
    bad = dataclasses.replace(data, recalibration=white)
    statistics, turned_down = finish.recalibrate_best(best, best_path, bad, config, test_args)
    assert statistics == "moving averages" and 0.0 <= turned_down <= 1.0
    for a, b in zip(moments(best), on_disk, strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(moments(rundir.load_model(best_path)), on_disk, strict=True):
        np.testing.assert_array_equal(a, b)

    # Without a held-out split the test split never chooses: recalibration stays.
    no_val = dataclasses.replace(config, validation_fraction=0.0)
    assert finish.recalibrate_best(best, best_path, bad, no_val, test_args) == (
        "recalibrated",
        None,
    )
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(moments(rundir.load_model(best_path)), on_disk, strict=True)
    )
