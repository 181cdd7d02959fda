"""The end of a run (keras_densenet.training.finish): BN statistics, test, summary.

A hand-set model whose BatchNormalization statistics decide its accuracy on a
real image folder, so each branch of the choice between recalibrated
statistics and moving averages is forced, not hoped for: dark images are
"ant", bright ones "bee", and the model says "bee" when
``(mean_level - moving_mean) / sqrt(moving_variance) + beta > 0``. A second or
two each; tests/test_training.py runs the whole `train` end to end.
"""

from __future__ import annotations

import json
import os
import pathlib
import time

import keras
import numpy as np
import pytest
from PIL import Image

from keras_densenet import _io, rundir
from keras_densenet.training import TrainConfig
from keras_densenet.training.callbacks import ThroughputMeter
from keras_densenet.training.data import load_training_data
from keras_densenet.training.finish import _results, finish_run, recalibrate_best

DARK = [20, 25, 30, 35, 40, 45]
BRIGHT = [200, 205, 210, 215, 220, 225]
HISTORY = (
    "epoch,accuracy,loss,val_accuracy,val_loss\n"
    "0,0.5,0.9,0.6,0.8\n1,0.7,0.6,0.9,0.5\n2,0.8,0.4,0.85,0.45\n"
)


def _folder(root: pathlib.Path) -> pathlib.Path:
    """Training images 10x12 RGB (the run converts them to 8x8 grey); test: 2 + 2."""
    for split, dark, bright in (("train", DARK, BRIGHT), ("test", [22, 42], [202, 222])):
        for name, levels in (("ant", dark), ("bee", bright)):
            os.makedirs(root / split / name)
            for level in levels:
                image = np.full((10, 12, 3), level, np.uint8)
                Image.fromarray(image).save(root / split / name / f"{level}.png")
    # Not an image: the run skips such files (bad_images="skip").
    (root / "test" / "bee" / "notes.png").write_bytes(b"not a png")
    return root


def _model(moving_mean: float, moving_variance: float, beta: float) -> keras.Model:
    inputs = keras.Input((8, 8, 1))
    level = keras.layers.GlobalAveragePooling2D()(inputs)
    z = keras.layers.BatchNormalization(name="bn")(level)
    outputs = keras.layers.Dense(2, activation="softmax", name="head")(z)
    model = keras.Model(inputs, outputs, name="handset")
    bn = model.get_layer("bn")
    bn.moving_mean.assign([moving_mean])
    bn.moving_variance.assign([moving_variance])
    bn.beta.assign([beta])
    model.get_layer("head").set_weights([np.array([[-1.0, 1.0]]), np.zeros(2)])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


#: Moving averages that separate the classes (threshold 120) and recalibration
#: agrees (the population mean of the training levels is 122.5).
GOOD = {"moving_mean": 120.0, "moving_variance": 1.0, "beta": 0.0}
#: Stale moving averages (everything is "bee"); recalibration fixes them.
STALE = {"moving_mean": 0.0, "moving_variance": 1.0, "beta": 0.0}
#: Moving averages that separate the classes (threshold 100), while population
#: statistics would put the threshold far above every image (all "ant").
GOOD_ONLY_AS_THEY_ARE = {"moving_mean": 0.0, "moving_variance": 1.0, "beta": -100.0}


@pytest.fixture
def run(tmp_path: pathlib.Path):
    """A run directory with history.csv and best.keras, and its config and data."""
    folder = _folder(tmp_path / "bugs")

    def make(model_kwargs, **options):
        out = tmp_path / "run"
        out.mkdir()
        (out / rundir.HISTORY).write_text(HISTORY)
        config = TrainConfig(
            dataset=str(folder),
            out=str(out),
            batch_size=4,
            seed=0,
            image_size=[8, 8],
            channels=1,
            bad_images="skip",
            **{"validation_fraction": 0.0, "bn_recalibrate_steps": 3, **options},
        )
        model = _model(**model_kwargs)
        _io.save_model(model, out / rundir.BEST)
        return config, load_training_data(config), model, out

    return make


#: The test-split options finish_run passes on, for calling recalibrate_best alone.
TEST_ARGS = {"split": "test", "bad_images": "skip", "image_size": [8, 8], "channels": 1}


def _saved_bn(path: pathlib.Path) -> list[float]:
    bn = rundir.load_model(path, compile=False).get_layer("bn")
    return [float(bn.moving_mean[0]), float(bn.moving_variance[0])]


def _population() -> list[float]:
    levels = np.array(DARK + BRIGHT, np.float64)
    return [levels.mean(), levels.var()]


def test_recalibration_kept_where_validation_prefers_it(run) -> None:
    config, data, _, out = run(STALE, validation_fraction=0.5)
    best = rundir.load_model(out / rundir.BEST)
    assert recalibrate_best(best, str(out / rundir.BEST), data, config, TEST_ARGS) == (
        "recalibrated",
        None,
    )
    # In memory and on disk: population statistics of the training images not
    # held out (6 of 12), whichever they are, so between the two clusters.
    mean, variance = _saved_bn(out / rundir.BEST)
    assert 60 < mean < 180 and variance > 1000
    assert float(best.get_layer("bn").moving_mean[0]) == pytest.approx(mean)


def test_moving_averages_kept_where_they_validate_better(run) -> None:
    config, data, _, out = run(GOOD_ONLY_AS_THEY_ARE, validation_fraction=0.5)
    before = (out / rundir.BEST).read_bytes()
    best = rundir.load_model(out / rundir.BEST)
    # The recalibrated statistics, turned down, put every test image below the
    # threshold ("ant"): 2 of the 4 right.
    assert recalibrate_best(best, str(out / rundir.BEST), data, config, TEST_ARGS) == (
        "moving averages",
        0.5,
    )
    bn = best.get_layer("bn")
    assert [float(bn.moving_mean[0]), float(bn.moving_variance[0])] == [0.0, 1.0]
    assert (out / rundir.BEST).read_bytes() == before  # best.keras not rewritten


def test_a_tie_keeps_the_recalibrated_statistics(run) -> None:
    config, data, _, out = run(GOOD, validation_fraction=0.5)
    best = rundir.load_model(out / rundir.BEST)
    assert recalibrate_best(best, str(out / rundir.BEST), data, config, TEST_ARGS) == (
        "recalibrated",
        None,
    )
    assert _saved_bn(out / rundir.BEST)[0] != 120.0


def _finish(config, data, model, meter=None):
    meter = meter or ThroughputMeter(4)
    return finish_run(config, data, model, meter, time.perf_counter() - 5.0, jit=True, replicas=1)


def test_without_a_held_out_split_recalibration_is_kept_and_the_summary_says_so(run) -> None:
    # The test split never chooses: worse on it, recalibration stays.
    config, data, model, out = run(GOOD_ONLY_AS_THEY_ARE)
    meter = ThroughputMeter(4)
    meter.epoch_rates = [10.0, 20.0, 30.0]
    summary = _finish(config, data, model, meter)
    mean, variance = _population()
    assert _saved_bn(out / rundir.BEST) == pytest.approx([mean, variance], rel=1e-5)
    wall = summary.pop("wall_time_s")
    assert 5.0 <= wall < 600.0
    assert isinstance(wall, float) and wall == round(wall, 2)  # to the hundredth of a second
    assert summary == {
        "model": "handset",
        "params": 8,
        "trainable_params": 6,
        "source": "folder",
        "class_names": ["ant", "bee"],
        "input_shape": [8, 8, 1],
        "mean": list(data.info.mean),
        "std": list(data.info.std),
        "precision": "float32",
        "optimizer": "SGD",
        "jit_compile": True,
        "replicas": 1,
        "global_batch_size": 4,
        "preset": config.preset,
        "dataset": config.dataset,
        "epochs": 3,
        "final": {"accuracy": 0.8, "loss": 0.4, "val_accuracy": 0.85, "val_loss": 0.45},
        "best_val_accuracy": 0.9,
        "test_accuracy": 0.5,
        "test_accuracy_before_recalibration": 1.0,
        "test_accuracy_after_recalibration": 0.5,
        "bn_statistics": "recalibrated",
        "bn_recalibrate_steps": 3,
        "bn_momentum": 0.9,
        "images_per_second": 25.0,  # the median after the first epoch
        "best_model": str(out / rundir.BEST),
        "last_model": str(out / rundir.LAST),
    }
    assert json.loads((out / rundir.SUMMARY).read_text()) == {
        **summary,
        "wall_time_s": json.loads((out / rundir.SUMMARY).read_text())["wall_time_s"],
    }
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["accuracy"] == 0.5 and evaluation["num_examples"] == 4
    # The run's curves, titled with the model's name (the same plot drawn here).
    from keras_densenet.viz import plot_history

    plot_history(rundir.read_history(out), out.parent / "wanted.png", title="handset")
    assert (out / rundir.CURVES).read_bytes() == (out.parent / "wanted.png").read_bytes()
    assert not [name for name in os.listdir(out) if ".tmp" in name]


def test_with_a_held_out_split_the_summary_records_the_moving_averages(run) -> None:
    config, data, model, out = run(GOOD_ONLY_AS_THEY_ARE, validation_fraction=0.5)
    summary = _finish(config, data, model)
    assert summary["bn_statistics"] == "moving averages"
    assert summary["test_accuracy"] == summary["test_accuracy_before_recalibration"] == 1.0
    # What the statistics turned down would have scored is recorded too.
    assert summary["test_accuracy_after_recalibration"] == 0.5
    assert summary["images_per_second"] is None  # no epoch was measured
    assert _saved_bn(out / rundir.BEST) == [0.0, 1.0]


def test_recalibration_off_evaluates_the_moving_averages_once(run) -> None:
    config, data, model, out = run(STALE, bn_recalibrate_steps=0)
    summary = _finish(config, data, model)
    assert summary["bn_statistics"] == "moving averages"
    assert summary["test_accuracy_before_recalibration"] is None
    assert summary["test_accuracy_after_recalibration"] is None
    assert summary["bn_recalibrate_steps"] == 0
    assert summary["test_accuracy"] == 0.5  # everything is "bee"
    assert _saved_bn(out / rundir.BEST) == [0.0, 1.0]


def test_a_stale_model_recalibrated_reaches_the_accuracy_of_its_weights(run) -> None:
    config, data, model, _ = run(STALE, bn_momentum=0.5)
    summary = _finish(config, data, model)
    assert summary["test_accuracy_before_recalibration"] == 0.5
    assert summary["test_accuracy"] == summary["test_accuracy_after_recalibration"] == 1.0
    assert summary["bn_momentum"] == 0.5
    assert summary["best_val_accuracy"] == 0.9


def test_recalibration_reads_as_many_batches_as_asked(run) -> None:
    import itertools

    config, data, model, out = run(STALE, bn_recalibrate_steps=1)
    _finish(config, data, model)
    mean, variance = _saved_bn(out / rundir.BEST)
    # One batch of 4 of the 12 training images, not all of them.
    assert [mean, variance] != pytest.approx(_population(), rel=1e-3)
    subsets = itertools.combinations(DARK + BRIGHT, 4)
    assert any(np.mean(s) == pytest.approx(mean, rel=1e-5) for s in subsets)


def test_a_run_without_validation_has_no_best_validation_accuracy() -> None:
    config = TrainConfig()
    results = _results(
        {"epoch": [0, 1], "loss": [0.9, 0.5]}, {"accuracy": 0.7}, (0.6, 0.7), "recalibrated", config
    )
    assert results["test_accuracy_before_recalibration"] == 0.6
    assert results["test_accuracy_after_recalibration"] == 0.7
    assert np.isnan(results["best_val_accuracy"])
    assert results["final"] == {"loss": 0.5} and results["epochs"] == 2
