"""Grad-CAM (keras_densenet.explain) on a hand-set model whose answer comes from one region."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import TINY, run_command

from keras_densenet import build_densenet
from keras_densenet.explain import grad_cam, overlay
from keras_densenet.heads import build_classifier


def _handset(activation: str = "softmax") -> keras.Model:
    """Two feature maps, relu(x) ("bright") and relu(1 - x) ("dark"), pooled and classified.

    Class 0 ("bright") scores 4 x the mean of relu(x), class 1 ("dark") 4 x the
    mean of relu(1 - x): the bright class's evidence is exactly where the image is
    bright, the dark class's where it is not.
    """
    inputs = keras.Input((8, 8, 1))
    conv = keras.layers.Conv2D(2, 1, name="features_conv")
    x = keras.layers.Activation("relu", name="relu")(conv(inputs))
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    dense = keras.layers.Dense(2, activation=activation, name="predictions")
    model = keras.Model(inputs, dense(x))
    conv.set_weights([np.array([[[[1.0, -1.0]]]], np.float32), np.array([0.0, 1.0], np.float32)])
    dense.set_weights([np.array([[4.0, 0.0], [0.0, 4.0]], np.float32), np.zeros(2, np.float32)])
    return model


def _patch_image() -> np.ndarray:
    image = np.zeros((8, 8, 1), np.float32)
    image[:3, :3] = 1.0  # a bright patch in the top-left quadrant
    return image


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_the_heatmap_is_where_the_class_evidence_is(activation):
    model = _handset(activation)
    image = _patch_image()
    bright = grad_cam(model, image[None], class_index=0)[0]
    assert bright.shape == (8, 8) and bright.dtype == np.float32
    peak = np.unravel_index(np.argmax(bright), bright.shape)
    assert peak[0] < 4 and peak[1] < 4  # in the bright quadrant
    assert bright.max() == pytest.approx(1.0)
    assert bright[6:, 6:].max() < 0.05  # nothing far from the patch
    # The top class (dark: 8 of 9 tenths of the image) is explained by default,
    # and its evidence is everywhere but the patch.
    dark = grad_cam(model, image)[0]
    assert dark[6:, 6:].min() > 0.9 and dark[0, 0] < 0.05
    np.testing.assert_array_equal(grad_cam(model, image, class_index=1)[0], dark)


def test_one_class_per_image_and_an_image_with_no_evidence():
    model = _handset()
    images = np.stack([_patch_image(), np.zeros((8, 8, 1), np.float32)])
    maps = grad_cam(model, images, class_index=[0, 0])
    assert maps.shape == (2, 8, 8)
    assert maps[1].max() == 0.0  # no bright pixel: no location raises the score


def test_densenet_single_and_multi_label_heatmaps_cover_the_input():
    model = build_densenet(**TINY)
    images = np.random.default_rng(0).uniform(0, 255, (3, 28, 28, 1)).astype(np.float32)
    for m in (model, build_classifier(model, 4, multi_label=True)):
        maps = grad_cam(m, images)
        assert maps.shape == (3, 28, 28)
        assert maps.min() >= 0.0 and maps.max() <= 1.0
        assert np.isclose(maps.reshape(3, -1).max(axis=1), 1.0).all()


def test_bad_arguments_are_named():
    model = _handset()
    image = _patch_image()
    with pytest.raises(ValueError, match=r"`images` must be a batch .* \(8, 8, 1\)"):
        grad_cam(model, np.zeros((1, 9, 8, 1)))
    with pytest.raises(ValueError, match="`class_index`"):
        grad_cam(model, image, class_index=2)
    with pytest.raises(ValueError, match=r"one index or one per image \(2\)"):
        grad_cam(model, np.stack([image, image]), class_index=[0])
    with pytest.raises(ValueError, match="Grad-CAM needs a 4D feature map"):
        grad_cam(model, image, layer="avg_pool")
    with pytest.raises(ValueError, match="'nope' is not a layer"):
        grad_cam(model, image, layer="nope")
    with pytest.raises(TypeError, match="`model`"):
        grad_cam("model.keras", image)


def test_overlay_is_an_rgb_picture_of_the_image_size():
    picture = overlay(np.full((5, 6, 1), 100, np.uint8), np.linspace(0, 1, 30).reshape(5, 6))
    assert picture.shape == (5, 6, 3) and picture.dtype == np.uint8
    assert not np.array_equal(picture[0, 0], picture[-1, -1])  # cold and hot differ


def test_predict_explain_writes_overlays_and_never_replaces_without_overwrite(tmp_path, capsys):
    from PIL import Image

    model = build_densenet(**TINY)
    model.save(tmp_path / "m.keras")
    images = []
    for name, size in (("a.png", (28, 28)), ("b.png", (40, 30))):
        Image.fromarray(np.full((*size, 1), 90, np.uint8)[..., 0]).save(tmp_path / name)
        images.append(str(tmp_path / name))
    out = tmp_path / "cams"
    args = ["predict", str(tmp_path / "m.keras"), *images, "--explain", str(out)]
    result = run_command(capsys, *args)
    assert result.returncode == 0, result.stderr
    written = sorted(p.name for p in out.iterdir())
    assert written == ["a_gradcam.png", "b_gradcam.png"]
    with Image.open(out / "b_gradcam.png") as picture:  # the image's own aspect, enlarged
        assert picture.mode == "RGB" and picture.size == (30 * 6, 40 * 6)  # 224 / 40, rounded up
    before = (out / "a_gradcam.png").read_bytes()
    result = run_command(capsys, *args)
    assert result.returncode == 2 and "already exists: pass --overwrite" in result.stderr
    assert (out / "a_gradcam.png").read_bytes() == before
    assert run_command(capsys, *args, "--overwrite").returncode == 0


def test_predict_explain_refuses_a_savedmodel_and_overwrite_alone(tmp_path, capsys):
    from conftest import levels_model

    from keras_densenet.export import export_savedmodel

    version = export_savedmodel(levels_model(), tmp_path / "served")
    result = run_command(
        capsys, "predict", version, "--sample", "1", "--explain", str(tmp_path / "x")
    )
    assert result.returncode == 2 and "a SavedModel has no gradients" in result.stderr
    result = run_command(capsys, "predict", version, "--sample", "1", "--overwrite")
    assert result.returncode == 2 and "give --explain OUT_DIR" in result.stderr
    assert not (tmp_path / "x").exists()
