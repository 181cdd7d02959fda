"""The keras-densenet command: exit codes, one-line errors, real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile

import pytest
from conftest import run_command


def run(*args, cwd=None, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "keras_densenet", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_help_lists_subcommands():
    proc = run("--help")
    assert proc.returncode == 0
    for command in ("train", "evaluate", "summary"):
        assert command in proc.stdout
    train_help = run("train", "--help").stdout
    for flag in (
        "--preset",
        "--depth",
        "--blocks",
        "--growth-rate",
        "--compression",
        "--no-bottleneck",
        "--dropout",
        "--precision",
        "--jit-compile",
        "--distribute",
        "--resume",
        "--memory-efficient",
        "--config",
    ):
        assert flag in train_help, flag


def test_summary_reports_macs_within_1_percent_of_torchvision(capsys):
    proc = run("summary", "--preset", "densenet121", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    macs = sum(r["macs"] for r in rows)
    assert abs(macs / 2.834e9 - 1) < 0.01
    assert [r["name"] for r in rows if r["type"] == "DenseBlock"] == [
        "conv2",
        "conv3",
        "conv4",
        "conv5",
    ]
    table = run_command(
        capsys, "summary", "--preset", "densenet_bc_100_12", "--input-shape", "28,28,1"
    ).stdout
    assert "GMACs" in table and "FLOPs = 2 x MACs" in table
    # 1-channel stem: 769,162 - 3x3x(3-1)x24 = 768,730 trainable.
    assert "trainable 768,730" in table


@pytest.mark.reliability("bad_input")
@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (("train", "--preset", "densenet7"), ("preset", "densenet121")),
        (("train", "--dataset", "no_such_dataset_xyz"), ("no_such_dataset_xyz",)),
        (("train", "--epochs", "-1"), ("--epochs",)),
        (("train", "--batch-size", "0"), ("--batch-size",)),
        (("train", "--growth-rate", "-2"), ("--growth-rate",)),
        (("train", "--compression", "1.5"), ("--compression",)),
        (("train", "--depth", "41"), ("depth",)),
        (("train", "--blocks", "6,x"), ("--blocks",)),
        (("train", "--precision", "fp8"), ("--precision",)),
        (("train", "--config", "/no/such/config.json"), ("--config",)),
        (("train", "--out", "/proc/keras-densenet-run"), ("out",)),
        (("evaluate", "/no/such/model.keras"), ("/no/such/model.keras",)),
        (("summary", "--preset", "densenet121", "--input-shape", "3,224,224"), ("channels-first",)),
        (("summary", "--input-shape", "16,16,3"), ("at least 29",)),
        (("nonsense",), ("invalid choice",)),
        (("export", "/no/such/run", "--out", "x"), ("/no/such/run",)),
        (("predict", "/no/such/model.keras", "--sample", "1"), ("/no/such/model.keras",)),
        (("predict", "m.keras", "--top-k", "-1"), ("--top-k",)),
    ],
)
def test_bad_values_exit_2_with_one_line(args, needles, tmp_path):
    assert_one_line_error(run(*args, cwd=tmp_path), *needles)


@pytest.mark.reliability("bad_input")
def test_bad_config_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert_one_line_error(run("train", "--config", str(bad)), "not valid JSON")
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"colour": "red"}))
    assert_one_line_error(run("train", "--config", str(unknown)), "Unknown training options")


def test_train_then_evaluate_end_to_end(tmp_path):
    out = str(tmp_path / "run")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"preset": "densenet_bc_100_12", "depth": 10, "growth_rate": 4}))
    proc = run(
        "train",
        "--config",
        str(config),
        "--epochs",
        "1",
        "--steps-per-epoch",
        "3",
        "--batch-size",
        "16",
        "--quiet",
        "--out",
        out,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "test accuracy" in proc.stdout
    with open(os.path.join(out, "config.json")) as f:
        saved = json.load(f)
    assert saved["depth"] == 10 and saved["epochs"] == 1 and saved["growth_rate"] == 4
    again = run("train", "--config", str(config), "--epochs", "1", "--out", out)
    assert_one_line_error(again, "--resume")
    evaluation = run("evaluate", out, "--out", str(tmp_path / "eval"))
    assert evaluation.returncode == 0, evaluation.stderr[-2000:]
    assert "accuracy" in evaluation.stdout and "Ankle boot" in evaluation.stdout
    assert "precision" in evaluation.stdout and "macro F1" in evaluation.stdout
    assert os.path.getsize(tmp_path / "eval" / "confusion_matrix.png") > 0

    served = str(tmp_path / "saved_models" / "fashion")
    exported = run("export", out, "--out", served)
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert os.path.exists(os.path.join(served, "1", "saved_model.pb"))
    assert "tensorflow/serving" in exported.stdout
    assert_one_line_error(run("export", out, "--out", served, "--version", "1"), "exists")
    predicted = run("predict", served, "--sample", "2", "--top-k", "2")
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    lines = predicted.stdout.strip().splitlines()
    assert len(lines) == 2 and all("(true: " in line for line in lines)
    image = tmp_path / "not_an_image.jpg"
    image.write_bytes(b"hello")
    assert_one_line_error(run("predict", served, str(image)), "not_an_image.jpg")
    assert_one_line_error(run("predict", str(tmp_path / "missing")), "--sample")
    missing = str(tmp_path / "missing.keras")
    assert_one_line_error(run("predict", missing, "--sample", "1"), missing, "not found")
    assert_one_line_error(run("predict", served), "--sample")


@pytest.mark.reliability("bad_input")
def test_unwritable_output_directories_exit_2(tmp_path):
    from keras_densenet import build_densenet

    model_path = str(tmp_path / "tiny.keras")
    build_densenet(
        blocks=(1, 1), growth_rate=4, num_init_features=8, stem="cifar", input_shape=(16, 16, 1)
    ).save(model_path)
    unwritable = "/proc/keras-densenet/out"
    assert_one_line_error(run("export", model_path, "--out", unwritable), unwritable)
    assert_one_line_error(
        run("tune", "--max-trials", "1", "--max-epochs", "1", "--out", unwritable), "out"
    )
    assert_one_line_error(
        run("evaluate", model_path, "--dataset", "fashion_mnist_sample", "--out", unwritable),
        unwritable,
        "not writable",
    )


# Each case is refused before TensorFlow is imported: the check runs the CLI in
# a fresh process and reports whether TensorFlow got imported.
FAST_FAIL = textwrap.dedent(
    """
    import sys
    sys.argv[0] = "keras-densenet"  # as the installed command runs
    from keras_densenet.cli import main
    try:
        main(sys.argv[1:])
    except SystemExit as exit:
        code = exit.code
    else:
        code = 0
    print("TF_IMPORTED" if "tensorflow" in sys.modules else "TF_NOT_IMPORTED")
    sys.exit(code)
    """
)


def run_fast(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-c", FAST_FAIL, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


@pytest.mark.reliability("bad_input")
@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (("train", "--epochs", "99999999999999999999"), ("--epochs", "100000")),
        (("train", "--steps-per-epoch", "1e20"), ("--steps-per-epoch",)),
        (("train", "--batch-size", "99999999999"), ("--batch-size", "65536")),
        (("train", "--growth-rate", "99999999999"), ("--growth-rate",)),
        (("train", "--learning-rate", "inf"), ("--learning-rate", "finite")),
        (("train", "--learning-rate", "nan"), ("--learning-rate", "finite")),
        (("train", "--momentum", "-inf"), ("--momentum",)),
        (("train", "--bn-momentum", "1.5"), ("--bn-momentum", "[0, 1)")),
        (("train", "--bn-recalibrate-steps", "-1"), ("--bn-recalibrate-steps",)),
        (("train", "--warmup-epochs", "5", "--epochs", "2"), ("--warmup-epochs", "--epochs")),
        (("train", "--depth", "41"), ("--depth", "divisible by 6")),
        (("train", "--dropout", "1"), ("--dropout", "[0, 1)")),
        (("train", "--bad-images", "maybe"), ("--bad-images",)),
        (("summary", "--num-classes", "1e20"), ("--num-classes",)),
        (("evaluate", "m.keras", "--batch-size", "1e20"), ("--batch-size",)),
        (("predict", "m.keras", "--sample", "5000"), ("--sample", "1000")),
        (("predict", "m.keras"), ("--sample",)),
        (("export", "m", "--out", "x", "--serving-dtype", "float8"), ("--serving-dtype",)),
        (("export", "m", "--out", "x", "--version", "0"), ("--version",)),
        (("tune", "--fix", "growth_rate=99999999999999999999"), ("growth_rate", "4096")),
        (("tune", "--fix", "depth=41", "--fix", "bottleneck=true"), ("depth", "divisible")),
        (("tune", "--range", "compression=0.9,0.1"), ("compression", "low > high")),
        (("tune", "--fix", "colour=red"), ("colour",)),
        (("tune", "--max-trials", "0"), ("--max-trials",)),
        (("predict", "missing.keras", "--sample", "1"), ("missing.keras", "not found")),
        (("evaluate", "missing.keras"), ("missing.keras", "not found")),
        (("export", "missing_run", "--out", "x"), ("missing_run", "not found")),
        (("export", "/etc/hostname", "--out", "x"), ("/etc/hostname", ".keras")),
    ],
)
def test_bad_values_fail_at_once_naming_the_flag(args, needles, tmp_path):
    proc = run_fast(*args, cwd=tmp_path)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "TF_NOT_IMPORTED" in proc.stdout, "an argument error imported TensorFlow first"
    assert not os.listdir(tmp_path), "an argument error wrote files"


@pytest.mark.reliability("bad_input")
@pytest.mark.parametrize(
    ("content", "needles"),
    [
        ({"memory_efficient": "false"}, ("memory_efficient", "True or False", "'false'")),
        ({"learning_rate": True}, ("learning_rate", "number")),
        ({"image_size": 5}, ("image_size", "2 integers")),
        ({"out": 5}, ("out", "path")),
        ({"epochs": 3.0}, ("epochs", "integer")),
        ({"channels": 2}, ("channels", "(1, 3)")),
        ({"verbose": "loud"}, ("verbose",)),
        ({"blocks": [6, "12"]}, ("blocks", "integers")),
        ([1, 2], ("JSON object",)),
        (b"\xff\xfe{}", ("not UTF-8",)),
    ],
)
def test_config_file_fields_are_type_checked(content, needles, tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    proc = run_fast("train", "--config", str(path), "--out", str(tmp_path / "run"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.reliability("bad_input")
def test_refusals_that_need_a_look_at_the_disk_come_before_tensorflow(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    # An archive with a config and no weights: it passes the early look and is
    # never loaded, since each case is refused first.
    with zipfile.ZipFile(run / "last.keras", "w") as archive:
        archive.writestr("config.json", "{}")
    lambda_config = {"class_name": "Lambda", "config": {"function": {"class_name": "__lambda__"}}}
    with zipfile.ZipFile(tmp_path / "code.keras", "w") as archive:
        archive.writestr("config.json", json.dumps({"config": {"layers": [lambda_config]}}))
    with zipfile.ZipFile(tmp_path / "weights_only.keras", "w") as archive:
        archive.writestr("model.weights.h5", b"")
    (tmp_path / "half.keras").write_bytes((tmp_path / "code.keras").read_bytes()[:40])
    (tmp_path / "empty").mkdir()
    (tmp_path / "served" / "1").mkdir(parents=True)
    from PIL import Image

    for folder, classes in (
        ("flat", "ab"),
        ("one/train", "a"),
        ("bad/train", "ab"),
        ("bad/test", "ab"),
    ):
        for name in classes:
            (tmp_path / folder / name).mkdir(parents=True)
            Image.new("L", (4, 4)).save(tmp_path / folder / name / "x.png")
    (tmp_path / "bad" / "train" / "b" / "y.png").write_bytes(b"not an image")
    fold = ("--validation-fraction", "0")
    for args, needles in (
        (("evaluate", str(tmp_path / "empty")), ("not a training run directory",)),
        (("train", "--out", str(run)), ("--resume", "--out")),
        (("train", "--out", str(run), "--resume"), ("--resume", "same options")),
        (("export", str(run / "config.json"), "--out", "x"), (".keras",)),
        (("export", str(run), "--out", str(tmp_path / "served"), "--version", "1"),
         ("version 1 already exists", "--overwrite")),
        (("evaluate", "code.keras"), ("code.keras", "contains code", "--allow-unsafe")),
        (("predict", "code.keras", "--sample", "1"), ("code.keras", "--allow-unsafe")),
        (("export", "code.keras", "--out", "x"), ("code.keras", "--allow-unsafe")),
        (("evaluate", "half.keras"), ("half.keras", "truncated or corrupted")),
        (("predict", "weights_only.keras", "--sample", "1"), ("weights_only.keras", "config.json")),
        (("train", "--dataset", str(tmp_path / "flat"), *fold, "--out", "r"), ("test/",)),
        (("train", "--dataset", str(tmp_path / "one"), "--out", "r"), ("at least 2",)),
        (("train", "--dataset", str(tmp_path / "bad"), "--out", "r"),
         ("--validation-fraction=0.1", "leaves no validation images")),
        (("predict", "code.keras", str(tmp_path / "bad/train/b/y.png"), "--allow-unsafe"),
         ("y.png", "not a JPEG, PNG")),
        (("evaluate", str(run), "--out", "/proc/keras-densenet/x"), ("--out", "not writable")),
        (("export", "code.keras", "--allow-unsafe", "--out", "/proc/keras-densenet/x"),
         ("--out", "not writable")),
        (("export", "code.keras", "--allow-unsafe", "--out", "x", "--tflite", "int8"),
         ("--calibration-dataset",)),
        (("summary", "--input-shape", "16,16,3"), ("--input-shape", "at least 29")),
    ):  # fmt: skip
        proc = run_fast(*args, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr[-2000:]
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and all(n in lines[0] for n in needles), proc.stderr
        assert "TF_NOT_IMPORTED" in proc.stdout, args
    assert sorted(os.listdir(tmp_path)) == [
        "bad",
        "code.keras",
        "empty",
        "flat",
        "half.keras",
        "one",
        "run",
        "served",
        "weights_only.keras",
    ]
    assert sorted(os.listdir(run)) == [".lock", "config.json", "last.keras"]


def test_help_is_fast_and_complete():
    for command in ("", "train", "evaluate", "summary", "tune", "export", "predict"):
        proc = run_fast(*[c for c in (command, "--help") if c])
        assert proc.returncode == 0, proc.stderr
        assert "TF_NOT_IMPORTED" in proc.stdout
        assert "(default: None)" not in proc.stdout
    evaluate_help = run_fast("evaluate", "--help").stdout
    assert "--split {train,validation,test}" in evaluate_help and "default: test" in evaluate_help
    predict_help = run_fast("predict", "--help").stdout
    assert "--top-k" in predict_help and "default: 3" in predict_help
    train_help = run_fast("train", "--help").stdout
    assert "densenet_bc_100_12 unless --depth or --blocks" in " ".join(train_help.split())


@pytest.mark.reliability("silent wrong answer")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_ctrl_c_that_python_swallows_still_exits_130(monkeypatch, capsys):
    """A Ctrl-C landing in a finalizer (an iterator deleted after the last epoch) is
    printed as "Exception ignored" and lost by Python; the command must not exit 0."""
    import signal

    from keras_densenet import cli

    class Finalized:
        def __del__(self):
            signal.raise_signal(signal.SIGINT)

    def command(args):
        Finalized()  # deleted at once: the interrupt is raised inside __del__, and ignored
        return 0

    monkeypatch.setitem(cli.COMMANDS, "summary", command)
    result = run_command(capsys, "summary")
    assert result.returncode == 130
    assert result.stderr.strip().splitlines()[-1] == "keras-densenet summary: interrupted"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_version_prints_the_package_version(capsys):
    import keras_densenet

    result = run_command(capsys, "--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"keras-densenet {keras_densenet.__version__}"


def test_weights_imagenet_says_nothing_is_downloaded_and_where_files_come_from(capsys, tmp_path):
    from keras_densenet import build_densenet

    with pytest.raises(ValueError, match="nothing is downloaded") as caught:
        build_densenet("densenet121", weights="imagenet")
    assert "densenet121_weights_tf_dim_ordering_tf_kernels.h5" in str(caught.value)
    assert "densenet121-a639ec97.pth" in str(caught.value)
    result = run_command(capsys, "train", "--weights", "imagenet", "--out", str(tmp_path / "r"))
    assert result.returncode == 2 and "nothing is downloaded" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
