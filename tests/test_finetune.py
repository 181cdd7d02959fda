"""Fine-tuning runs: `train` from pretrained weights, frozen and unfrozen phases, resume,
export, and the command line's refusals.

The source is a real run directory (a tiny DenseNet trained a few steps on the
embedded Fashion-MNIST sample) or a real PyTorch checkpoint file; the new
task is a real image folder of 3 classes, so the head is new and of another
size than the source's.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import run_command, same_package_env
from PIL import Image

import keras_densenet
from keras_densenet import rundir
from keras_densenet.heads import backbone_of
from keras_densenet.training import TrainConfig, load_model, train
from keras_densenet.training.loop import phases
from keras_densenet.training.recipe import BackboneScaledSGD

#: The source's architecture: 3 blocks of 1 bottleneck layer, k = 4.
TINY = {"preset": "densenet_bc_100_12", "depth": 10, "growth_rate": 4}
QUICK = {"steps_per_epoch": 2, "batch_size": 16, "bn_recalibrate_steps": 2, "verbose": 0}
CLASSES = ("ant", "bee", "cat")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("source") / "run")
    train({**TINY, **QUICK, "epochs": 1, "seed": 0, "out": out})
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> str:
    """A 3-class folder of 28x28 grey PNGs (a class per grey level band)."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("test", 3)):
        for index, name in enumerate(CLASSES):
            os.makedirs(root / split / name)
            for i in range(count):
                level = 40 + 80 * index + rng.integers(-10, 10)
                image = np.clip(rng.normal(level, 8, (28, 28)), 0, 255).astype(np.uint8)
                Image.fromarray(image).save(root / split / name / f"{i}.png")
    return str(root)


def _backbone_arrays(model: keras.Model) -> list[np.ndarray]:
    return [np.asarray(w) for w in backbone_of(model).weights if "normalization" not in w.path]


def _fine_tune(source: str, folder: str, out: pathlib.Path, **options) -> dict:
    return train(
        {
            **QUICK,
            "dataset": folder,
            "validation_fraction": 0.25,
            "weights": source,
            "seed": 1,
            "out": str(out),
            **options,
        }
    )


def test_phases_of_a_run():
    assert phases(TrainConfig(epochs=3)) == [(0, 3, False)]
    weights = {"weights": "runs/x", "epochs": 3}
    assert phases(TrainConfig(**weights, freeze_epochs=3)) == [(0, 3, True)]
    assert phases(TrainConfig(**weights, freeze_epochs=1)) == [(0, 1, True), (1, 3, False)]


def test_a_fully_frozen_run_keeps_the_source_backbone_bit_for_bit(source, folder, tmp_path):
    summary = _fine_tune(source, folder, tmp_path / "run", **TINY, epochs=2, freeze_epochs=2)
    assert summary["class_names"] == list(CLASSES)
    wanted = _backbone_arrays(load_model(source))
    for name in (rundir.BEST, rundir.LAST):
        model = load_model(os.path.join(tmp_path / "run", name))
        assert model.output_shape == (None, 3)
        got = _backbone_arrays(model)
        assert len(got) == len(wanted) > 20
        for a, b in zip(got, wanted, strict=True):  # BatchNorm statistics included
            np.testing.assert_array_equal(a, b)
    # The head is new and trained; its input normalization is the source's.
    source_norm = load_model(source).get_layer("normalization")
    norm = model.get_layer("normalization")
    np.testing.assert_array_equal(np.asarray(norm.mean), np.asarray(source_norm.mean))
    assert summary["trainable_params"] == 3 * 13 + 3  # the classifier alone
    config = rundir.read_config(tmp_path / "run")
    assert config["weights"] == source and config["freeze_epochs"] == 2


def test_head_then_everything_at_a_smaller_rate_and_resume_across_the_boundary(
    source, folder, tmp_path
):
    out = tmp_path / "run"
    options = {**TINY, "freeze_epochs": 1, "backbone_lr_scale": 0.1}
    _fine_tune(source, folder, out, **options, epochs=1)  # stops at the boundary
    frozen = _backbone_arrays(load_model(out / rundir.LAST))
    summary = _fine_tune(source, folder, out, **options, epochs=2, resume=True)
    assert summary["epochs"] == 2
    last = load_model(out / rundir.LAST)
    assert isinstance(last.optimizer, BackboneScaledSGD)
    assert last.optimizer.backbone_lr_scale == 0.1
    assert int(last.optimizer.iterations) == QUICK["steps_per_epoch"]  # its own schedule
    moved = [not np.array_equal(a, b) for a, b in zip(_backbone_arrays(last), frozen, strict=True)]
    assert sum(moved) > len(moved) // 2  # the backbone trained in epoch 2
    with open(out / rundir.HISTORY) as f:
        assert [line.split(",")[0] for line in f][1:] == ["0", "1"]


def test_one_channel_images_on_a_three_channel_checkpoint(folder, tmp_path):
    torch = pytest.importorskip("torch")
    from benchmarks.torch_densenet import random_torch_densenet

    net = random_torch_densenet((4, (1, 1), 64), seed=2, classes=1000)
    path = tmp_path / "net.pth"
    torch.save(net.state_dict(), path)
    arch = {"preset": None, "blocks": (1, 1), "growth_rate": 4}
    with pytest.raises(ValueError, match=r"Backbone mismatch at 'features\.denseblock1"):
        _fine_tune(str(path), folder, tmp_path / "bad", **{**arch, "growth_rate": 8}, epochs=1)
    assert not os.path.exists(tmp_path / "bad")  # refused before anything was written
    summary = _fine_tune(str(path), folder, tmp_path / "run", **arch, epochs=1, image_size=(32, 32))
    model = load_model(tmp_path / "run" / rundir.LAST)
    norm = model.get_layer("normalization")
    np.testing.assert_allclose(np.ravel(norm.mean), [255 * np.mean([0.485, 0.456, 0.406])])
    assert summary["input_shape"] == [32, 32, 1]


def test_a_fine_tuned_run_exports_and_answers_from_a_fresh_process(
    source, folder, tmp_path, capsys
):
    out = tmp_path / "run"
    _fine_tune(source, folder, out, **TINY, epochs=2, freeze_epochs=1)
    export = run_command(capsys, "export", str(out), "--out", str(tmp_path / "served"))
    assert export.returncode == 0, export.stderr
    image = str(pathlib.Path(folder) / "test" / "cat" / "0.png")
    model = load_model(out / rundir.BEST)
    pixels = np.asarray(Image.open(image), np.float32)[None, :, :, None]
    expected = np.asarray(model(pixels, training=False))[0]
    code = (
        "import sys, json, tensorflow as tf\n"
        "serve = tf.saved_model.load(sys.argv[1]).signatures['serving_bytes']\n"
        "out = serve(image_bytes=tf.constant([open(sys.argv[2], 'rb').read()]))\n"
        "names = tf.saved_model.load(sys.argv[1]).signatures['metadata']()['class_names']\n"
        "print(json.dumps({'p': out['probabilities'].numpy()[0].tolist(),\n"
        "                  'names': [n.decode() for n in names.numpy()]}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "served" / "1"), image],
        capture_output=True,
        text=True,
        timeout=180,
        env=same_package_env(keras_densenet, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["names"] == list(CLASSES)
    with open(tmp_path / "served" / "1" / "assets.extra" / "export.json") as f:
        assert json.load(f)["pretrained_weights"] == source
    np.testing.assert_allclose(answer["p"], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--freeze-epochs", "3", "--epochs", "2"], "--freeze-epochs must be at most --epochs=2"),
        (["--backbone-lr-scale", "0"], "--backbone-lr-scale must be a finite number in (0, 1]"),
        (["--backbone-lr-scale", "1.5"], "--backbone-lr-scale must be a finite number in (0, 1]"),
        (["--normalization", "torch"], "--normalization: invalid choice"),
    ],
)
def test_bad_fine_tuning_flags_are_one_line_before_anything_runs(
    source, tmp_path, capsys, flags, message
):
    out = tmp_path / "run"
    result = run_command(capsys, "train", "--weights", source, *flags, "--out", str(out))
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_weights_of_another_format_or_architecture_are_refused_naming_the_file(
    source, tmp_path, capsys
):
    fake = tmp_path / "fake.safetensors"
    fake.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    out = tmp_path / "run"
    result = run_command(capsys, "train", "--weights", str(fake), "--out", str(out))
    assert result.returncode == 2 and "ends in .safetensors but is not one" in result.stderr
    result = run_command(capsys, "train", "--freeze-epochs", "1", "--out", str(out))
    assert result.returncode == 2 and "--freeze-epochs fine-tunes pretrained weights" in (
        result.stderr
    )
    result = run_command(
        capsys,
        "train",
        "--weights",
        source,
        "--depth",
        "10",
        "--growth-rate",
        "6",
        "--epochs",
        "1",
        "--steps-per-epoch",
        "1",
        "--out",
        str(out),
    )
    assert result.returncode == 2, result.stderr
    assert "Backbone mismatch at 'conv2_block1_2_conv/kernel'" in result.stderr
    assert str(source) in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_weights_of_a_run_bring_its_architecture_when_no_flag_names_one(
    source, folder, tmp_path, capsys
):
    out = tmp_path / "run"
    result = run_command(
        capsys,
        "train",
        "--weights",
        source,
        "--dataset",
        folder,
        "--epochs",
        "1",
        "--freeze-epochs",
        "1",
        "--steps-per-epoch",
        "1",
        "--bn-recalibrate-steps",
        "1",
        "--validation-fraction",
        "0.25",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    config = rundir.read_config(out)
    assert (config["depth"], config["growth_rate"]) == (TINY["depth"], TINY["growth_rate"])


@pytest.mark.reliability("data loss")
def test_a_run_whose_config_was_removed_is_not_continued_silently(source, tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(source, out)
    os.remove(out / rundir.CONFIG)
    before = sorted(p.name for p in out.iterdir())
    result = run_command(
        capsys, "train", *["--epochs", "1", "--steps-per-epoch", "1"], "--out", str(out)
    )
    assert result.returncode == 2 and "holds files of an earlier run" in result.stderr
    with pytest.raises(ValueError, match="holds files of an earlier run"):
        train({**TINY, **QUICK, "epochs": 1, "out": str(out)})
    assert sorted(p.name for p in out.iterdir()) == before
    result = run_command(capsys, "tune", "--quick", "--out", source)
    assert result.returncode == 2 and "is a training run directory" in result.stderr


@pytest.mark.reliability("silent wrong answer")
def test_a_run_still_training_is_not_exported(source, tmp_path, capsys):
    code = (
        "import sys, time\n"
        "from keras_densenet import rundir\n"
        "with rundir.lock(sys.argv[1]):\n"
        "    print('locked', flush=True)\n"
        "    time.sleep(60)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, source],
        stdout=subprocess.PIPE,
        text=True,
        env=same_package_env(keras_densenet),
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = run_command(capsys, "export", source, "--out", str(tmp_path / "served"))
        assert result.returncode == 2
        assert f"in use by process {holder.pid}" in result.stderr
        assert not (tmp_path / "served").exists()
    finally:
        holder.kill()
        holder.wait()
    assert run_command(capsys, "export", source, "--out", str(tmp_path / "served")).returncode == 0


@contextlib.contextmanager
def _small_disk(tmp_path: pathlib.Path, size: str):
    """A tmpfs of ``size`` (e.g. ``"64k"``) mounted for the block: a disk that fills up."""
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(small)], capture_output=True
    )
    if mounted.returncode != 0:  # not root, or no mount in this sandbox
        pytest.skip(f"a {size} tmpfs cannot be mounted here: {mounted.stderr!r}")
    try:
        yield small
    finally:
        subprocess.run(["umount", str(small)], check=False)


def _command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "keras_densenet", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=same_package_env(keras_densenet),
    )


@pytest.mark.reliability("crash")
def test_a_full_disk_during_training_is_one_line_and_resumable(tmp_path):
    flags = "--preset densenet_bc_100_12 --depth 10 --growth-rate 4 --epochs 1"
    flags += " --steps-per-epoch 2 --bn-recalibrate-steps 1 --quiet"
    with _small_disk(tmp_path, "400k") as small:
        proc = _command("train", *flags.split(), "--out", str(small / "run"))
        assert proc.returncode == 1, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("keras-densenet train: No space left on device"), last
        # What was written is whole: the config reads back.
        assert rundir.read_config(small / "run")["depth"] == 10


@pytest.mark.reliability("crash")
def test_resume_on_a_read_only_run_directory_is_one_line_and_changes_nothing(tmp_path):
    flags = "--preset densenet_bc_100_12 --depth 10 --growth-rate 4 --epochs 2"
    flags += " --steps-per-epoch 2 --bn-recalibrate-steps 1 --quiet"
    first = _command("train", *flags.split(), "--epochs", "1", "--out", str(tmp_path / "run"))
    assert first.returncode == 0, first.stderr[-2000:]
    with _small_disk(tmp_path, "20m") as disk:
        shutil.copytree(tmp_path / "run", disk / "run", symlinks=True)
        before = {p.name: p.read_bytes() for p in (disk / "run").iterdir() if p.is_file()}
        remounted = subprocess.run(["mount", "-o", "remount,ro", str(disk)], capture_output=True)
        if remounted.returncode != 0:
            pytest.skip(f"the tmpfs cannot be made read-only here: {remounted.stderr!r}")
        proc = _command("train", *flags.split(), "--resume", "--out", str(disk / "run"))
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
        (line,) = proc.stderr.strip().splitlines()[-1:]
        assert line.startswith("keras-densenet train: error: --out"), line
        assert line.endswith("is not writable: Read-only file system."), line
        after = {p.name: p.read_bytes() for p in (disk / "run").iterdir() if p.is_file()}
        assert after == before


@pytest.mark.reliability("crash")
def test_a_full_disk_during_export_is_one_line_and_leaves_no_version(source, tmp_path):
    with _small_disk(tmp_path, "64k") as small:
        proc = _command("export", source, "--out", str(small / "served"))
        assert proc.returncode == 1, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr and "function_node" not in proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("keras-densenet export:") and "No space left" in last, last
        assert os.listdir(small / "served") == []  # no partial version, no scratch
