"""Several labels per image: the label file, the scores, class weights, training and export."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import run_command, same_package_env

from keras_densenet.data.labels import read_label_csv
from keras_densenet.scores import f1_threshold, label_scores, roc_auc, roc_curve

# -- scores ---------------------------------------------------------------------------------


def test_auroc_and_roc_curve_equal_scikit_learn_with_ties():
    from sklearn.metrics import roc_auc_score
    from sklearn.metrics import roc_curve as sk_roc_curve

    rng = np.random.default_rng(3)
    for _ in range(40):
        targets = rng.integers(0, 2, 50).astype(float)
        targets[:2] = (0, 1)
        scores = np.round(rng.random(50), 1)  # many ties
        assert roc_auc(targets, scores) == pytest.approx(roc_auc_score(targets, scores), abs=1e-12)
        fpr, tpr = roc_curve(targets, scores)
        sk_fpr, sk_tpr, _ = sk_roc_curve(targets, scores, drop_intermediate=False)
        np.testing.assert_allclose(fpr, sk_fpr)
        np.testing.assert_allclose(tpr, sk_tpr)
    assert np.isnan(roc_auc([1, 1], [0.2, 0.3]))  # one class only: undefined
    with pytest.raises(ValueError, match="0 or 1"):
        roc_auc([0, 2], [0.1, 0.2])


def test_f1_threshold_on_a_hand_made_case():
    targets = [1, 1, 0, 0, 1]
    scores = [0.9, 0.8, 0.7, 0.3, 0.2]
    # At 0.8: 2 of 2 called are right, 2 of 3 positives found: F1 = 4/5; no
    # other score does as well (0.2: 6/8, 0.7: 4/6, 0.9: 2/4).
    threshold, f1 = f1_threshold(targets, scores)
    assert threshold == 0.8 and f1 == pytest.approx(0.8)
    assert f1_threshold([0, 0], [0.1, 0.7]) == (0.5, pytest.approx(float("nan"), nan_ok=True))
    table = label_scores(np.array([targets]).T, np.array([scores]).T, [threshold])
    assert table["precision"][0] == 1.0 and table["recall"][0] == pytest.approx(2 / 3)


# -- the label file -------------------------------------------------------------------------


def _image(path, value: int = 100, size: int = 8) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)


def _label_file(tmp_path, text: str, images=("a.png", "b.png", "c.png")) -> str:
    for name in images:
        _image(tmp_path / name)
    path = tmp_path / "labels.csv"
    path.write_text(text)
    return str(path)


GOOD = "image,labels,split\na.png,cat|dog,train\nb.png,dog,train\nc.png,cat,test\n"


def test_a_label_file_is_read_with_sorted_labels_and_quoted_fields(tmp_path):
    _image(tmp_path / "x, y.png")
    text = GOOD + '"x, y.png",dog|cat,test\n\n'
    table = read_label_csv(_label_file(tmp_path, text))
    assert table.label_names == ("cat", "dog") and table.has_split
    assert [r.labels for r in table.rows] == [("cat", "dog"), ("dog",), ("cat",), ("cat", "dog")]
    assert [r.line for r in table.rows] == [2, 3, 4, 5]
    assert len(table.split_rows("test", None)) == 2


def test_a_byte_order_mark_is_dropped_with_one_warning(tmp_path):
    path = _label_file(tmp_path, "\ufeff" + GOOD)
    with pytest.warns(UserWarning, match="byte-order mark"):
        assert read_label_csv(path).label_names == ("cat", "dog")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("image,labels,extra\na.png,cat,x\n", r"unknown: \['extra'\]"),
        ("image,split\na.png,train\n", r"missing: \['labels'\]"),
        ("", "is empty"),
        ("image,labels\na.png,cat,train\n", "row 2: 3 fields"),
        (GOOD + "a.png,cat,test\n", "row 5: image 'a.png' is listed again \\(first in row 2\\)"),
        (GOOD + "../a.png,cat,train\n", "row 5: image '../a.png' is outside"),
        (GOOD + "/etc/passwd,cat,train\n", "row 5: image '/etc/passwd' must be a path relative"),
        (GOOD + "missing.png,cat,train\n", "row 5: image file 'missing.png' not found"),
        (GOOD.replace("c.png,cat,test", "c.png,cat,later"), "row 4: split 'later'"),
        (GOOD.replace("b.png,dog,train", "b.png,dog||cat,train"), "row 3: empty label"),
        ("image,labels\na.png,\n", "names no label"),
        (GOOD + "a\0b.png,cat,train\n", "row 5: the image path holds a NUL character"),
    ],
)
def test_bad_label_files_name_the_file_and_row(tmp_path, text, message):
    path = _label_file(tmp_path, text)
    with pytest.raises(ValueError, match=message) as caught:
        read_label_csv(path)
    assert "labels.csv" in str(caught.value) and "\n" not in str(caught.value)


def test_a_directory_non_images_and_undecodable_images_are_named(tmp_path, capsys):
    from keras_densenet.data import load_dataset

    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(ValueError, match=r"'.*dir\.csv' is a directory"):
        read_label_csv(tmp_path / "dir.csv")
    path = _label_file(tmp_path, GOOD)
    (tmp_path / "b.png").write_bytes(b"hello, not an image")
    out = tmp_path / "run"
    flags = ("--labels", path, "--validation-fraction", "0", "--out", str(out))
    result = run_command(capsys, "train", *flags)
    assert result.returncode == 2 and not out.exists()
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("keras-densenet train: error: --labels file") and "row 3" in line
    # A PNG whose header and end are fine but whose pixels do not decode: named by its row.
    good = (tmp_path / "a.png").read_bytes()
    (tmp_path / "b.png").write_bytes(good[:40] + bytes(len(good) - 52) + good[-12:])
    with pytest.raises(ValueError, match=r"row 3: image .*b\.png' does not decode"):
        load_dataset(path, "train", batch_size=2)


def test_a_label_seen_only_in_a_carved_validation_row_is_named_so(tmp_path):
    from keras_densenet.data.labels import check_labels_early

    names = [f"{i}.png" for i in range(10)]

    def write(z_row: int) -> str:
        rows = "".join(f"{n},{'z' if i == z_row else 'a'},train\n" for i, n in enumerate(names))
        return _label_file(
            tmp_path, "image,labels,split\n" + rows + "t.png,a,test\n", [*names, "t.png"]
        )

    carved = read_label_csv(write(-1)).split_rows("validation", 0.5)
    z_row = int(Path(carved[0].image).stem)  # a row the carve holds out
    path = write(z_row)
    with pytest.raises(ValueError, match=f"row {z_row + 2}, a train row held out for validation"):
        check_labels_early(path, ("train", "validation", "test"), 0.5)
    check_labels_early(path, ("train", "test"), None)  # validating on test: 'z' trains
    (tmp_path / "one.csv").write_text("image,labels\n0.png,a\n")
    with pytest.raises(ValueError, match="too few to hold one out"):
        check_labels_early(str(tmp_path / "one.csv"), ("train", "test"), None)


def test_a_label_seen_only_in_test_is_refused_naming_its_row(tmp_path):
    from keras_densenet.data.labels import check_labels_early

    path = _label_file(tmp_path, GOOD + "c2.png,bird,test\n", ("a.png", "b.png", "c.png", "c2.png"))
    with pytest.raises(ValueError, match="label 'bird' \\(first in row 5, test\\) has no positive"):
        check_labels_early(path, ("train", "test"), None)


def test_without_a_split_column_test_and_validation_are_carved_disjointly(tmp_path):
    names = [f"{i}.png" for i in range(40)]
    rows = "".join(f"{n},{'a' if i % 2 else 'b'}\n" for i, n in enumerate(names))
    table = read_label_csv(_label_file(tmp_path, "image,labels\n" + rows, names))
    parts = {s: table.split_rows(s, 0.25) for s in ("train", "validation", "test")}
    images = [{r.image for r in rows} for rows in parts.values()]
    assert [len(i) for i in images] == [27, 9, 4]
    assert len(set().union(*images)) == 40
    # The same carve whatever the run's seed: the fixed split seed.
    assert [r.image for r in table.split_rows("test", 0.25)] == [r.image for r in parts["test"]]


def test_load_dataset_yields_multi_hot_float_labels(tmp_path):
    from keras_densenet.data import load_dataset

    path = _label_file(tmp_path, GOOD)
    dataset, info = load_dataset(path, "train", batch_size=4, shuffle=False, augment=False)
    images, labels = next(iter(dataset))
    assert info.multi_label and info.source == "labels" and info.class_names == ("cat", "dog")
    assert info.label_counts == (1, 2) and images.shape == (2, 8, 8, 1)
    np.testing.assert_array_equal(labels.numpy(), [[1, 1], [0, 1]])
    assert labels.dtype.name == "float32"


# -- class weights and the weighted loss ----------------------------------------------------


def test_balanced_weights_single_and_multi_label():
    from types import SimpleNamespace

    from keras_densenet.training.data import balanced_weights

    single = SimpleNamespace(num_examples=10, multi_label=False, class_names=("a", "b"), name="d")
    np.testing.assert_allclose(balanced_weights([8, 2], single), [10 / 16, 10 / 4])
    multi = SimpleNamespace(num_examples=10, multi_label=True, class_names=("a", "b"), name="d")
    np.testing.assert_allclose(balanced_weights([5, 1], multi), [1.0, 9.0])
    with pytest.raises(ValueError, match="class 'b' has no positive training example"):
        balanced_weights([4, 0], multi)
    with pytest.raises(ValueError, match="class 'a' has no negative"):
        balanced_weights([10, 3], multi)


def test_weighted_binary_crossentropy_weighs_positives_and_round_trips():
    import keras

    from keras_densenet.losses import WeightedBinaryCrossentropy

    loss = WeightedBinaryCrossentropy([3.0, 1.0])
    y_true = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    y_pred = np.array([[0.8, 0.3], [0.4, 0.6]], np.float32)
    expected = np.mean(
        [
            (-3 * np.log(0.8) - np.log(0.7)) / 2,
            (-np.log(0.6) - np.log(0.6)) / 2,
        ]
    )
    assert float(loss(y_true, y_pred)) == pytest.approx(expected, rel=1e-5)
    plain = keras.losses.BinaryCrossentropy()
    assert float(WeightedBinaryCrossentropy([1.0, 1.0])(y_true, y_pred)) == pytest.approx(
        float(plain(y_true, y_pred)), rel=1e-5
    )
    again = WeightedBinaryCrossentropy.from_config(loss.get_config())
    assert again.positive_weights == [3.0, 1.0]
    with pytest.raises(ValueError, match="positive_weights"):
        WeightedBinaryCrossentropy([1.0, 0.0])


# -- the config and the command line --------------------------------------------------------


def test_labels_replace_the_dataset_and_refuse_one_given_with_them(tmp_path):
    from keras_densenet.training import TrainConfig

    config = TrainConfig(labels="x/labels.csv", out=str(tmp_path / "r"))
    assert config.dataset == "x/labels.csv"
    assert TrainConfig.from_dict(config.to_dict()).dataset == "x/labels.csv"
    with pytest.raises(ValueError, match="leave out `dataset`"):
        TrainConfig(labels="x/labels.csv", dataset="mnist")
    with pytest.raises(ValueError, match=r"`labels` must be a \.csv"):
        TrainConfig(labels="x/labels.txt")


def test_train_refuses_a_bad_label_file_in_one_line_before_anything_is_written(tmp_path, capsys):
    path = _label_file(tmp_path, GOOD + "missing.png,cat,train\n")
    out = tmp_path / "run"
    result = run_command(capsys, "train", "--labels", path, "--out", str(out))
    assert result.returncode == 2
    assert "row 5" in result.stderr and "missing.png" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()
    result = run_command(capsys, "train", "--labels", path, "--dataset", "mnist", "--out", str(out))
    assert result.returncode == 2 and "leave out --dataset" in result.stderr


# -- a run, its export and predictions ------------------------------------------------------


@pytest.fixture(scope="module")
def multilabel_run(tmp_path_factory):
    """A tiny multi-label run on real mosaics, with class weights and precise BN."""
    from keras_densenet.data.mosaics import make_mosaics
    from keras_densenet.training import train

    work = tmp_path_factory.mktemp("multilabel")
    labels = make_mosaics(work / "mosaics", 96, 32, seed=1)
    summary = train(
        {
            "labels": labels,
            "blocks": [2, 2],
            "growth_rate": 4,
            "epochs": 2,
            "batch_size": 16,
            "steps_per_epoch": 3,
            "bn_recalibrate_steps": 2,
            "class_weight": "balanced",
            "seed": 0,
            "verbose": 0,
            "out": str(work / "run"),
        }
    )
    return work, summary


def test_a_multi_label_run_reports_auroc_per_label_and_thresholds(multilabel_run):
    from keras_densenet.evaluation import evaluate
    from keras_densenet.heads import is_multi_label
    from keras_densenet.rundir import load_model

    work, summary = multilabel_run
    run = work / "run"
    names = summary["class_names"]
    assert summary["multi_label"] and len(names) == 10 and "test_accuracy" not in summary
    assert set(summary["test_auroc"]) == set(names) == set(summary["thresholds"])
    assert summary["test_macro_auroc"] == pytest.approx(
        np.nanmean(list(summary["test_auroc"].values()))
    )
    history = (run / "history.csv").read_text().splitlines()[0]
    assert "val_auroc" in history and "val_accuracy" not in history
    thresholds = json.loads((run / "thresholds.json").read_text())
    assert list(thresholds) == names and all(0 <= t <= 1 for t in thresholds.values())
    assert (run / "roc_curves.png").stat().st_size > 0 and not (
        run / "confusion_matrix.png"
    ).exists()
    stored = json.loads((run / "evaluation.json").read_text())
    assert stored["per_label"][names[0]]["threshold"] == pytest.approx(thresholds[names[0]])
    assert is_multi_label(load_model(run / "best.keras", compile=False))
    # evaluate() of the run directory uses the run's thresholds and agrees with the summary
    again = evaluate(str(run), out=None)
    assert again["macro_auroc"] == pytest.approx(summary["test_macro_auroc"], abs=1e-6)
    config = json.loads((run / "config.json").read_text())
    assert config["class_weight"] == "balanced" and config["labels"] == config["dataset"]


def test_a_multi_label_export_answers_from_a_fresh_process(multilabel_run, capsys):
    from PIL import Image

    import keras_densenet
    from keras_densenet.export import export_savedmodel, predict_labels, predict_scores

    work, summary = multilabel_run
    version = export_savedmodel(str(work / "run"), str(work / "served"))
    stored = json.loads((Path(version) / "assets.extra" / "thresholds.json").read_text())
    assert list(stored) == summary["class_names"]
    files = sorted(str(p) for p in (work / "mosaics" / "test").iterdir())[:3]
    images = np.stack([np.asarray(Image.open(f))[..., None] for f in files])
    np.save(work / "images.npy", images)
    script = (
        "import json, sys, numpy as np, tensorflow as tf\n"
        "loaded = tf.saved_model.load(sys.argv[1])\n"
        "images = tf.constant(np.load(sys.argv[2]))\n"
        "out = loaded.signatures['serving_default'](images=images)\n"
        "meta = loaded.signatures['metadata']()\n"
        "print(json.dumps({'p': out['probabilities'].numpy().tolist(),\n"
        "    'predicted': out['predicted'].numpy().tolist(),\n"
        "    'thresholds': meta['thresholds'].numpy().tolist()}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, version, str(work / "images.npy")],
        capture_output=True,
        text=True,
        env=same_package_env(keras_densenet),
        check=True,
    )
    served = json.loads(result.stdout.strip().splitlines()[-1])
    probabilities = np.asarray(served["p"])
    np.testing.assert_allclose(served["thresholds"], list(stored.values()), rtol=1e-6)
    np.testing.assert_array_equal(
        served["predicted"], probabilities >= np.asarray(served["thresholds"])
    )
    names, keras_scores, thresholds = predict_scores(str(work / "run"), images)
    assert thresholds == pytest.approx(list(stored.values()))  # the run's, from thresholds.json
    np.testing.assert_allclose(probabilities, keras_scores, atol=1e-5)
    labels = predict_labels(version, images)
    for row, chosen in zip(probabilities, labels, strict=True):
        assert [n for n, _ in chosen] == [
            names[i] for i in np.argsort(-row, kind="stable") if row[i] >= stored[names[i]]
        ]
    result = run_command(capsys, "predict", version, *files)
    assert result.returncode == 0 and result.stdout.count("labels [") == 3
    with pytest.raises(ValueError, match="one per label"):
        export_savedmodel(str(work / "run"), str(work / "served2"), thresholds=[0.5])


def test_a_multi_label_model_exports_to_onnx_and_tflite(multilabel_run):
    pytest.importorskip("onnxruntime")
    import onnxruntime

    from keras_densenet.export import export_onnx, export_tflite, run_tflite
    from keras_densenet.rundir import load_model

    work, _ = multilabel_run
    model = load_model(work / "run" / "best.keras", compile=False)
    images = np.random.default_rng(0).integers(0, 255, (2, 56, 56, 1)).astype(np.float32)
    expected = np.asarray(model(images, training=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_path = export_onnx(str(work / "run"), str(work / "model.onnx"))
    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"images": images})
    np.testing.assert_allclose(got, expected, atol=1e-4)
    tflite = export_tflite(str(work / "run"), str(work / "model.tflite"))
    np.testing.assert_allclose(run_tflite(tflite, images.astype(np.uint8)), expected, atol=1e-4)


def test_tuning_a_label_file_is_scored_by_validation_auroc(multilabel_run, tmp_path):
    pytest.importorskip("keras_tuner")
    from keras_densenet.tuning import DenseNetHyperModel, tune

    work, _ = multilabel_run
    labels = str(work / "mosaics" / "labels.csv")
    assert DenseNetHyperModel({"labels": labels}).objective == "val_auroc"
    assert DenseNetHyperModel({}).objective == "val_accuracy"
    base = {"labels": labels, "batch_size": 16, "steps_per_epoch": 2, "seed": 0, "verbose": 0}
    base["bn_recalibrate_steps"] = 2
    summary = tune(
        base,
        tuner="random",
        max_trials=1,
        max_epochs=1,
        ranges={"growth_rate": (4, 8, 4), "layers_per_block": (1, 1)},
        out=str(tmp_path / "search"),
    )
    best = summary["best"]
    assert best["objective"] == "val_auroc" and 0 <= best["val_auroc"] == best["score"] <= 1
    header = (tmp_path / "search" / "results.csv").read_text().splitlines()[0].split(",")
    assert "objective" in header and "score" in header


def test_labels_combine_with_pretrained_weights(multilabel_run, tmp_path):
    """Fine-tuning a multi-label head on a run's backbone (a single- or multi-label source)."""
    from keras_densenet.rundir import load_model
    from keras_densenet.training import train

    work, _ = multilabel_run
    source = load_model(work / "run" / "best.keras", compile=False)
    summary = train(
        {
            "labels": str(work / "mosaics" / "labels.csv"),
            "weights": str(work / "run"),
            "blocks": [2, 2],
            "growth_rate": 4,
            "epochs": 1,
            "freeze_epochs": 1,  # the backbone stays as the source's, bit for bit
            "batch_size": 16,
            "steps_per_epoch": 2,
            "bn_recalibrate_steps": 0,
            "seed": 0,
            "verbose": 0,
            "out": str(tmp_path / "fine"),
        }
    )
    assert summary["multi_label"] and summary["weights_kind"] is not None
    tuned = load_model(tmp_path / "fine" / "best.keras", compile=False)
    from keras_densenet.heads import HEAD_LAYERS

    compared = 0
    for layer in tuned.layers:
        if layer.name in HEAD_LAYERS or not layer.weights:
            continue
        for mine, theirs in zip(
            layer.get_weights(), source.get_layer(layer.name).get_weights(), strict=True
        ):
            np.testing.assert_array_equal(mine, theirs)
            compared += 1
    assert compared > 10


def test_the_command_says_a_warning_in_one_line_once(tmp_path, capsys):
    path = _label_file(tmp_path, "\ufeff" + GOOD + "missing.png,cat,train\n")
    result = run_command(capsys, "train", "--labels", path, "--out", str(tmp_path / "run"))
    lines = result.stderr.strip().splitlines()
    assert lines[0] == (
        f"keras-densenet train: warning: `labels` file {path!r} starts with a UTF-8 "
        "byte-order mark: ignored."
    )
    assert len(lines) == 2 and "row 5" in lines[1] and result.returncode == 2
