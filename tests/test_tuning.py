"""Hyperparameter search: real KerasTuner, real training on the embedded sample."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import keras
import keras_tuner
import numpy as np
import pytest
from conftest import free_port

from keras_densenet import tuning
from keras_densenet.cli import main, parse_assignments
from keras_densenet.models import PRESETS, build_densenet
from keras_densenet.training import TrainConfig, load_model
from keras_densenet.tuning import (
    DenseNetHyperModel,
    count_trainable_params,
    hypermodel,
    tune,
)

#: Shared training options: a few steps per epoch on the embedded sample.
BASE = {
    "dataset": "fashion_mnist_sample",
    "batch_size": 16,
    "steps_per_epoch": 2,
    "bn_recalibrate_steps": 2,
    "seed": 0,
    "verbose": 0,
}
#: A space of tiny DenseNets (k in {4, 8}, 1 or 2 layers per block).
TINY_RANGES = {"growth_rate": (4, 8, 4), "layers_per_block": (1, 2)}
ARCH_KEYS = ("depth", "growth_rate", "compression", "bottleneck", "dropout_rate")


def _trainable(model: keras.Model) -> int:
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def _trial_json(out, trial_id):
    with open(os.path.join(out, tuning.PROJECT_NAME, f"trial_{trial_id}", "trial.json")) as f:
        return json.load(f)


def _results(out):
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)


# ---------------------------------------------------------------------------
# Closed-form parameter count


@pytest.mark.parametrize("preset", ["densenet_bc_100_12", "densenet121", "densenet264"])
def test_count_matches_preset_metadata_without_building(preset):
    assert count_trainable_params(preset) == PRESETS[preset]["trainable_params"]


@pytest.mark.parametrize(
    "arch",
    [
        {"depth": 10, "growth_rate": 4, "input_shape": (28, 28, 1)},
        {"depth": 13, "bottleneck": False, "growth_rate": 5, "compression": 0.3},
        {"depth": 16, "growth_rate": 12, "compression": 0.29, "num_classes": 7},  # 0.29 rounding
        {"blocks": (2, 3, 1), "growth_rate": 6, "input_shape": (64, 64, 3), "bottleneck_width": 2},
        {"blocks": (1, 2), "growth_rate": 3, "stem": "cifar", "num_init_features": 5},
    ],
)
def test_count_matches_built_model(arch):
    model = build_densenet(**arch)
    assert count_trainable_params(**arch) == _trainable(model)
    headless = build_densenet(**arch, include_top=False)
    assert count_trainable_params(**arch, include_top=False) == _trainable(headless)


# ---------------------------------------------------------------------------
# The hypermodel


def test_defaults_give_a_small_compiled_densenet_bc():
    hypermodel = DenseNetHyperModel(BASE)
    hp = keras_tuner.HyperParameters()
    model = hypermodel.build(hp)
    assert hp.values == {
        "bottleneck": True,
        "layers_per_block": 6,
        "growth_rate": 12,
        "compression": 0.5,
        "dropout_rate": 0.0,
        "learning_rate": 0.1,
    }
    assert hypermodel.trial_config(hp).depth == 40  # DenseNet-BC, L=40, k=12
    assert model.input_shape == (None, 28, 28, 1) and model.output_shape == (None, 10)
    assert isinstance(model.optimizer, keras.optimizers.SGD)  # the package's recipe
    assert _trainable(model) == hypermodel.trainable_params(hypermodel.trial_config(hp))


def test_hp_fixed_and_fixed_hold_values():
    hypermodel = DenseNetHyperModel(BASE, fixed={"layers_per_block": 1, "bottleneck": False})
    hp = keras_tuner.HyperParameters()
    hp.Fixed("growth_rate", 8)  # set by the caller before build, as with HyperResNet
    model = hypermodel.build(hp)
    assert model.get_layer("conv2").get_config()["growth_rate"] == 8
    assert model.get_layer("conv2").get_config()["bottleneck"] is False
    config = hypermodel.trial_config(hp)
    assert (config.depth, config.growth_rate, config.bottleneck) == (7, 8, False)

    # `depth` and `blocks` replace layers_per_block; base options are held too.
    fixed_depth = DenseNetHyperModel({**BASE, "learning_rate": 0.05}, fixed={"depth": 40})
    hp = keras_tuner.HyperParameters()
    fixed_depth.declare_hyperparameters(hp)
    assert "layers_per_block" not in hp.values
    for bottleneck in (True, False):
        values = keras_tuner.HyperParameters()
        values.Fixed("bottleneck", bottleneck)
        config = fixed_depth.trial_config(values)
        assert config.depth == 40 and config.learning_rate == 0.05
    blocks = DenseNetHyperModel(BASE, fixed={"blocks": [1, 2], "growth_rate": 4})
    config = blocks.trial_config(keras_tuner.HyperParameters())
    assert config.blocks == (1, 2) and config.depth is None and config.preset is None


def test_ranges_shape_the_space():
    hypermodel = DenseNetHyperModel(
        BASE,
        ranges={"growth_rate": (16, 24), "compression": (0.7, 0.7), "bottleneck": (False,)},
    )
    hp = keras_tuner.HyperParameters()
    hypermodel.declare_hyperparameters(hp)
    growth = hp._hps["growth_rate"][0]
    assert (growth.min_value, growth.max_value, growth.step, growth.default) == (16, 24, 4, 16)
    assert hp.values["compression"] == 0.7 and hp.values["bottleneck"] is False
    assert type(hp._hps["compression"][0]).__name__ == "Fixed"
    for _ in range(20):  # every draw is a valid depth: 3n + 4 without bottleneck
        sample = keras_tuner.HyperParameters()
        sample.Fixed("layers_per_block", int(np.random.randint(1, 17)))
        config = hypermodel.trial_config(sample)
        assert (config.depth - 4) % 3 == 0


def test_precision_and_xla_come_from_the_base_config():
    hypermodel = DenseNetHyperModel(
        {**BASE, "precision": "mixed_bfloat16", "jit_compile": "on"},
        fixed={"layers_per_block": 1, "growth_rate": 4},
    )
    model = hypermodel.build(keras_tuner.HyperParameters())
    assert model.jit_compile is True
    assert model.get_layer("conv2").compute_dtype == "bfloat16"
    assert model.get_layer("predictions").compute_dtype == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"  # restored


@pytest.mark.reliability("bad_input")
def test_trials_are_scored_on_recalibrated_batchnorm_statistics():
    """With stale moving averages (momentum 0.99) a trial's score is still its real accuracy."""
    base = {
        **BASE,
        "steps_per_epoch": 40,
        "batch_size": 32,
        "bn_momentum": 0.99,
        "bn_recalibrate_steps": 30,  # the default: the batches a trial is scored after
        "validation_fraction": 0.1,
        # The paper's schedule: one warm-up epoch would leave the weights too
        # close to their start for stale statistics to show.
        "schedule": "step",
        "warmup_epochs": 0,
        "label_smoothing": 0,
    }
    hypermodel = DenseNetHyperModel(base, fixed={"depth": 16, "growth_rate": 8})
    hp = keras_tuner.HyperParameters()
    model = hypermodel.build(hp)
    history = hypermodel.fit(hp, model, epochs=1, verbose=0)
    score, train_accuracy = history.history["val_accuracy"][-1], history.history["accuracy"][-1]
    assert score >= train_accuracy - 0.15
    # The moving averages themselves were left stale: without recalibration
    # the same model scores far lower.
    _, stale = model.evaluate(hypermodel.data.validation, verbose=0)
    assert stale < score - 0.15


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"ranges": {"width": (1, 2)}}, ValueError, r"names in `ranges`: \['width'\]"),
        ({"fixed": {"depht": 40}}, ValueError, r"names in `fixed`: \['depht'\]"),
        ({"ranges": {"growth_rate": (48, 8)}}, ValueError, r"low > high \(48 > 8\)"),
        (
            {"ranges": {"growth_rate": (0, 8)}},
            ValueError,
            r"ranges\['growth_rate'\]\[0\]` must be an integer in \[1, 4096\], got 0",
        ),
        (
            {"ranges": {"growth_rate": (8, 16, 0)}},
            ValueError,
            r"ranges\['growth_rate'\]\[2\]` must be an integer in \[1, 4096\]",
        ),
        ({"ranges": {"compression": (0.0, 1.0)}}, ValueError, r"in \(0, 1\], got 0.0"),
        ({"ranges": {"compression": (0.5, 1.2)}}, ValueError, r"in \(0, 1\], got 1.2"),
        ({"ranges": {"compression": (0.3, 0.9, 2)}}, ValueError, r"must be \(low, high\), got"),
        ({"ranges": {"dropout_rate": (0.0, 1.0)}}, ValueError, r"in \[0, 1\), got 1.0"),
        ({"ranges": {"learning_rate": (0.0, 0.1)}}, ValueError, "must be a finite number > 0"),
        ({"ranges": {"bottleneck": ()}}, ValueError, "non-empty sequence"),
        ({"ranges": {"bottleneck": ("yes",)}}, TypeError, "must be True or False"),
        (
            {"ranges": {"growth_rate": 8}},
            ValueError,
            r"must be \(low, high\) or \(low, high, step\)",
        ),
        ({"fixed": {"growth_rate": 0}}, ValueError, r"fixed\['growth_rate'\]` must be an integer"),
        ({"fixed": {"growth_rate": 12.5}}, TypeError, "must be an integer in"),
        ({"fixed": {"growth_rate": 10**20}}, ValueError, r"\[1, 4096\], got 100000000000000"),
        ({"fixed": {"compression": 1.5}}, ValueError, r"in \(0, 1\]"),
        ({"fixed": {"depth": 41}}, ValueError, r"fixed\['depth'\]`.*divisible by 6"),
        ({"fixed": {"depth": 13}}, ValueError, r"divisible by 6.*\(with bottleneck\)"),
        ({"fixed": {"depth": 10**20, "bottleneck": True}}, ValueError, "from 10 to 6004"),
        ({"fixed": {"depth": 13, "bottleneck": False}, "ranges": {}}, None, None),
        ({"fixed": {"depth": 40, "blocks": (1, 2)}}, ValueError, "only one of layers_per_block"),
        ({"fixed": {"blocks": (1, 0)}}, ValueError, r"integers in \[1, 1000\]"),
        ({"fixed": {"growth_rate": 8}, "ranges": {"growth_rate": (8, 16)}}, ValueError, "in both"),
        ({"fixed": {"depth": 40}, "ranges": {"layers_per_block": (1, 4)}}, ValueError, "no effect"),
        ({"max_params": 0}, ValueError, "`max_params` must be an integer"),
        (
            {"base": {**BASE, "growth_rate": 12}, "fixed": {"growth_rate": 8}},
            ValueError,
            "`base` sets",
        ),
    ],
)
def test_bad_search_space_values_name_the_argument(kwargs, error, match):
    kwargs = dict(kwargs)
    base = kwargs.pop("base", BASE)
    if match is None:  # valid: depth 13 without bottleneck
        hypermodel = DenseNetHyperModel(base, **kwargs)
        assert hypermodel.fixed["depth"] == 13 and hypermodel.fixed["bottleneck"] is False
        config = hypermodel.trial_config(keras_tuner.HyperParameters())
        assert (config.depth, config.bottleneck) == (13, False)
        return
    with pytest.raises(error, match=match):
        DenseNetHyperModel(base, **kwargs)


def test_parse_assignments():
    parsed = parse_assignments(
        [
            "growth_rate=8,48,4",
            "bottleneck=true",
            "compression=0.5",
            "blocks=6",
            "learning-rate=1e-2",
        ],
        "--range",
    )
    assert parsed == {
        "growth_rate": (8, 48, 4),
        "bottleneck": True,
        "compression": 0.5,
        "blocks": (6,),
        "learning_rate": 0.01,
    }
    for bad in ("growth_rate", "=3", "k=abc"):
        with pytest.raises(ValueError, match="--fix"):
            parse_assignments([bad], "--fix")


# ---------------------------------------------------------------------------
# Whole searches


@pytest.fixture(scope="module")
def hyperband_search(tmp_path_factory):
    """A 3-trial Hyperband search: two 1-epoch trials, then the best continued to 2."""
    out = str(tmp_path_factory.mktemp("tuning") / "hyperband")
    summary = tune(
        BASE, tuner="hyperband", max_trials=3, max_epochs=2, factor=2, ranges=TINY_RANGES, out=out
    )
    return out, summary


def test_tiny_hyperband_search_writes_everything(hyperband_search):
    out, summary = hyperband_search
    assert (summary["trials"], summary["completed"], summary["pruned"]) == (3, 3, 0)
    for name in (
        "results.csv",
        "results.json",
        "accuracy_vs_params.png",
        "best_config.json",
        "best.keras",
        "tune_config.json",
    ):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    assert not [f for f in os.listdir(out) if f.startswith(".tmp") or ".tmp-" in f]
    with open(os.path.join(out, "accuracy_vs_params.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    rows = _results(out)
    assert [r["rank"] for r in rows] == [1, 2, 3]
    accuracies = [r["val_accuracy"] for r in rows]
    assert accuracies == sorted(accuracies, reverse=True)
    for row in rows:
        assert row["status"] == "COMPLETED" and row["time_s"] > 0
        assert set(row["hyperparameters"]) >= {"growth_rate", "compression", "bottleneck"}
        assert row["trainable_params"] == count_trainable_params(
            None,
            **{k: row["architecture"][k] for k in ARCH_KEYS},
            input_shape=(28, 28, 1),
            num_classes=10,
        )
        assert _trial_json(out, row["trial_id"])["score"] == pytest.approx(row["val_accuracy"])
    # Hyperband's successive halving: the third trial continues the best first-round one.
    continued = [r for r in rows if r["hyperparameters"].get("tuner/trial_id")]
    assert len(continued) == 1 and continued[0]["epochs"] == 2
    first_round = {r["trial_id"]: r for r in rows if r is not continued[0]}
    parent = first_round[continued[0]["hyperparameters"]["tuner/trial_id"]]
    assert parent["val_accuracy"] == max(r["val_accuracy"] for r in first_round.values())
    assert parent["architecture"] == continued[0]["architecture"]

    with open(os.path.join(out, "results.csv"), newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["trial_id"] for r in table] == [r["trial_id"] for r in rows]
    assert {"val_accuracy", "trainable_params", "epochs", "time_s", "status"} <= set(table[0])

    best = rows[0]
    model = load_model(os.path.join(out, "best.keras"))
    assert _trainable(model) == best["trainable_params"]
    images = np.zeros((2, 28, 28, 1), "float32")
    assert model.predict(images, verbose=0).shape == (2, 10)
    with open(os.path.join(out, "best_config.json")) as f:
        config = TrainConfig.from_dict(json.load(f))
    assert config.growth_rate == best["architecture"]["growth_rate"]
    assert config.depth == best["architecture"]["depth"]
    assert config.learning_rate == best["architecture"]["learning_rate"]
    assert config.epochs == 2 and config.preset is None and config.dataset == BASE["dataset"]


def test_best_config_trains_with_the_real_cli(hyperband_search, tmp_path):
    out, _ = hyperband_search
    run_dir = str(tmp_path / "final")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "keras_densenet",
            "train",
            "--config",
            os.path.join(out, "best_config.json"),
            "--epochs",
            "1",
            "--steps-per-epoch",
            "2",
            "--quiet",
            "--out",
            run_dir,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    assert summary["trainable_params"] == _results(out)[0]["trainable_params"]


def test_resume_needs_the_same_options(hyperband_search):
    out, _ = hyperband_search
    with pytest.raises(ValueError, match=r"holds a search with other options.*tuner"):
        tune(
            BASE, tuner="random", max_trials=3, max_epochs=2, factor=2, ranges=TINY_RANGES, out=out
        )


_KILLABLE = textwrap.dedent(
    """
    import json, sys, time
    import keras
    from keras_densenet.tuning import tune

    class StallSecondTrial(keras.callbacks.Callback):
        trials = 0  # class-level: KerasTuner deep-copies callbacks per trial

        def on_train_begin(self, logs=None):
            type(self).trials += 1
            if type(self).trials > 1:
                time.sleep(600)

    tune(callbacks=[StallSecondTrial()], **json.loads(sys.argv[1]))
    """
)


@pytest.mark.reliability("faults")
def test_killed_search_resumes_and_keeps_finished_trials(tmp_path):
    out = str(tmp_path / "random")
    kwargs = {
        "base": BASE,
        "tuner": "random",
        "max_trials": 3,
        "max_epochs": 1,
        "ranges": TINY_RANGES,
        "out": out,
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLABLE, json.dumps(kwargs)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    project = os.path.join(out, tuning.PROJECT_NAME)
    statuses: dict[str, str] = {}
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        statuses = {}
        for name in os.listdir(project) if os.path.isdir(project) else []:
            path = os.path.join(project, name, "trial.json")
            if name.startswith("trial_") and os.path.exists(path):
                try:
                    with open(path) as f:
                        statuses[name[len("trial_") :]] = json.load(f)["status"]
                except json.JSONDecodeError:  # being written
                    pass
        if "COMPLETED" in statuses.values() and "RUNNING" in statuses.values():
            break
        time.sleep(0.1)
    assert proc.poll() is None, f"the search ended before it could be killed: {proc.stderr.read()}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = [t for t, s in statuses.items() if s == "COMPLETED"]
    killed = [t for t, s in statuses.items() if s == "RUNNING"]
    assert len(finished) == 1 and len(killed) == 1, statuses
    done_dir = os.path.join(project, f"trial_{finished[0]}")
    before = {
        name: (
            os.path.getmtime(os.path.join(done_dir, name)),
            Path(done_dir, name).read_bytes(),
        )
        for name in ("trial.json", "checkpoint.weights.h5", tuning.TRIAL_INFO)
    }

    summary = tune(**kwargs)  # restart in this process with the same out

    assert (summary["trials"], summary["completed"]) == (3, 3)
    rows = {r["trial_id"]: r for r in _results(out)}
    # The killed trial ran again under its own id, then one new trial: 3 in all.
    assert len(rows) == 3 and finished[0] in rows and killed[0] in rows
    for name, (mtime, content) in before.items():  # the finished trial was not re-run
        path = os.path.join(done_dir, name)
        assert os.path.getmtime(path) == mtime and Path(path).read_bytes() == content, name
    assert rows[killed[0]]["status"] == "COMPLETED"


def test_parameter_budget_prunes_before_building(tmp_path, monkeypatch):
    small = count_trainable_params(
        depth=7, growth_rate=4, bottleneck=False, input_shape=(28, 28, 1), compression=0.5
    )
    big = count_trainable_params(
        depth=7, growth_rate=40, bottleneck=False, input_shape=(28, 28, 1), compression=0.5
    )
    budget = (small + big) // 2
    built = []
    real = hypermodel.build_training_model
    monkeypatch.setattr(
        hypermodel,
        "build_training_model",
        lambda config, *a: built.append(config) or real(config, *a),
    )
    out = str(tmp_path / "budget")
    summary = tune(
        BASE,
        tuner="random",
        max_trials=5,
        max_epochs=1,
        out=out,
        max_params=budget,
        ranges={"growth_rate": (4, 40, 36)},
        fixed={
            "layers_per_block": 1,
            "bottleneck": False,
            "compression": 0.5,
            "dropout_rate": 0.0,
            "learning_rate": 0.1,
        },
    )
    # Two configurations exist; the oracle runs each once, then stops.
    assert (summary["trials"], summary["completed"], summary["pruned"]) == (2, 1, 1)
    rows = _results(out)
    done, pruned = rows
    assert done["status"] == "COMPLETED" and done["architecture"]["growth_rate"] == 4
    assert done["trainable_params"] == small <= budget
    assert pruned["status"] == "PRUNED" and pruned["trainable_params"] == big > budget
    assert f"{budget:,}" in pruned["note"] and pruned["rank"] is None
    assert _trial_json(out, pruned["trial_id"])["status"] == "FAILED"  # what the oracle saw
    assert not os.path.exists(
        os.path.join(
            out, tuning.PROJECT_NAME, f"trial_{pruned['trial_id']}", "checkpoint.weights.h5"
        )
    )
    assert pruned["time_s"] < 1.0 and pruned["epochs"] is None
    # Only the in-budget configuration was ever built (its trial, then best.keras).
    assert {c.growth_rate for c in built} == {4}


def test_pruned_trials_do_not_count_as_consecutive_failures(tmp_path):
    out = str(tmp_path / "all_pruned")
    summary = tune(
        BASE,
        tuner="bayesian",
        max_trials=5,
        max_epochs=1,
        out=out,
        max_params=1000,
        ranges={"growth_rate": (8, 40, 4)},
        fixed={"layers_per_block": 2},
    )
    # KerasTuner stops a search after 3 failures in a row; pruning is not a failure.
    assert (summary["trials"], summary["pruned"], summary["completed"]) == (5, 5, 0)
    assert summary["best"] is None and summary["best_config"] is None
    assert not os.path.exists(os.path.join(out, "best_config.json"))
    assert os.path.exists(os.path.join(out, "accuracy_vs_params.png"))


# ---------------------------------------------------------------------------
# Command line


@pytest.mark.reliability("bad_input")
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--tuner", "grid"], "--tuner"),
        (["--max-trials", "0"], "--max-trials"),
        (["--max-params", "-5"], "--max-params"),
        (["--factor", "1"], "--factor"),
        (["--fix", "growth_rate=-1"], "fixed['growth_rate']"),
        (["--fix", "nonsense=3"], "nonsense"),
        (["--fix", "depth=41"], "depth"),
        (["--range", "compression=0.5,1.5"], "ranges['compression'][1]"),
        (["--range", "growth_rate=48,8"], "low > high"),
        (["--range", "growth_rate"], "NAME=VALUE"),
        (["--config", "/no/such/config.json"], "--config"),
        (["--dataset", "no_such_dataset_xyz"], "no_such_dataset_xyz"),
    ],
)
def test_cli_tune_bad_values_exit_2_with_one_line(args, needle, tmp_path, capsys):
    out = str(tmp_path / "never")
    with pytest.raises(SystemExit) as exit_info:
        main(["tune", *args, "--out", out])
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], lines
    assert not os.path.exists(out)


def test_cli_tune_error_in_a_real_process(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "keras_densenet",
            "tune",
            "--range",
            "compression=0,1",
            "--out",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "ranges['compression'][0]" in lines[0], proc.stderr


# ---------------------------------------------------------------------------
# KerasTuner's distributed mode: one chief, two workers, on this machine


_DISTRIBUTED = textwrap.dedent(
    """
    import json, sys, time
    import keras
    from keras_densenet.tuning import tune

    class Pause(keras.callbacks.Callback):  # lets both workers get trials
        def on_train_end(self, logs=None):
            time.sleep(2)

    print("RESULT" + json.dumps(tune(callbacks=[Pause()], **json.loads(sys.argv[1])),
                                default=str))
    """
)


@pytest.mark.slow
def test_chief_and_two_workers_share_one_search(tmp_path):
    port = free_port()
    out = str(tmp_path / "distributed")
    kwargs = {
        "base": BASE,
        "tuner": "random",
        "max_trials": 4,
        "max_epochs": 1,
        "ranges": TINY_RANGES,
        "out": out,
    }
    procs = {}
    for tuner_id in ("chief", "worker0", "worker1"):
        env = {
            **os.environ,
            "KERASTUNER_ORACLE_IP": "127.0.0.1",
            "KERASTUNER_ORACLE_PORT": str(port),
            "KERASTUNER_TUNER_ID": tuner_id,
        }
        procs[tuner_id] = subprocess.Popen(
            [sys.executable, "-c", _DISTRIBUTED, json.dumps(kwargs)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
    results = {}
    for tuner_id, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=400)
        assert proc.returncode == 0, (tuner_id, stderr[-3000:])
        line = next(s for s in stdout.splitlines() if s.startswith("RESULT"))
        results[tuner_id] = json.loads(line[len("RESULT") :])
    assert results["worker0"]["role"] == results["worker1"]["role"] == "worker"
    chief = results["chief"]
    assert chief["role"] == "chief" and (chief["trials"], chief["completed"]) == (4, 4)
    rows = _results(out)
    assert {r["tuner_id"] for r in rows} == {"worker0", "worker1"}  # the chief trains nothing
    assert os.path.getsize(os.path.join(out, "best.keras")) > 0
    with open(os.path.join(out, "best_config.json")) as f:
        TrainConfig.from_dict(json.load(f))


def test_declared_search_space_is_the_documented_one():
    """The ranges KerasTuner sees are the documented ones (README, tuning docs)."""
    hp = keras_tuner.HyperParameters()
    DenseNetHyperModel(BASE).declare_hyperparameters(hp)
    declared = {h.name: h.get_config() for h in hp.space}
    assert (declared["growth_rate"]["min_value"], declared["growth_rate"]["max_value"]) == (8, 48)
    assert declared["growth_rate"]["step"] == 4 and declared["growth_rate"]["default"] == 12
    assert (declared["compression"]["min_value"], declared["compression"]["max_value"]) == (
        0.3,
        1.0,
    )
    assert (
        declared["layers_per_block"]["min_value"],
        declared["layers_per_block"]["max_value"],
    ) == (
        1,
        16,
    )
    assert (declared["dropout_rate"]["min_value"], declared["dropout_rate"]["max_value"]) == (
        0.0,
        0.3,
    )
    rate = declared["learning_rate"]
    assert (rate["min_value"], rate["max_value"], rate["sampling"]) == (0.01, 0.3, "log")
    assert set(declared["bottleneck"]) >= {"default"} and declared["bottleneck"]["default"] is True


@pytest.mark.reliability("misleading message")
def test_a_moved_tuning_directory_resumes_and_other_options_are_still_refused(tmp_path):
    from keras_densenet.tuning.search import TUNE_CONFIG, _prepare_out

    def record(out: str, max_epochs: int = 2) -> dict:
        base = TrainConfig(epochs=2, out=os.path.join(out, "best_run")).to_dict()
        return {"tuner": "random", "max_trials": 2, "max_epochs": max_epochs, "base": base}

    first = tmp_path / "a" / "search"
    first.mkdir(parents=True)
    # A search recorded before the base's `out` was left out of the record.
    (first / TUNE_CONFIG).write_text(json.dumps(record(str(first))))
    moved = tmp_path / "b" / "search"
    moved.parent.mkdir()
    os.rename(first, moved)
    now = record(str(moved))
    now["base"].pop("out")
    _prepare_out(str(moved), now, overwrite=False)  # the same search, in its new place
    changed = record(str(moved), max_epochs=3)
    changed["base"].pop("out")
    with pytest.raises(ValueError, match="holds a search with other options"):
        _prepare_out(str(moved), changed, overwrite=False)


@pytest.mark.slow  # a whole search (30 s); the default run has the factor-2 Hyperband fixture
def test_quick_search_runs_the_three_trials_it_announces(tmp_path, capsys):
    """`tune --quick` says 3 trials: Hyperband's factor 2 over 2 epochs runs exactly 3."""
    from conftest import run_command

    out = tmp_path / "quick"
    flags = ("--quick", "--dataset", "fashion_mnist_sample", "--steps-per-epoch", "2")
    result = run_command(capsys, "tune", *flags, "--quiet", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "3 trials: 3 completed" in result.stdout
