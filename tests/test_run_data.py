"""A training run's datasets (keras_densenet.training.data), on a real image folder.

Each image is one grey level, unique to it, so a batch says which images it
holds and whether they were augmented (a padded crop is not uniform). A second
or two each: no model is built here.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest
from PIL import Image

from keras_densenet.training import TrainConfig
from keras_densenet.training.data import TrainingData, load_training_data

#: Grey levels of the training images, per class, and of the test images.
TRAIN = {"ant": [10, 20, 30, 40, 50], "bee": [110, 120, 130, 140]}
TEST = {"ant": [60, 70], "bee": [160]}


def _folder(root: pathlib.Path, test: dict[str, list[int]] = TEST) -> pathlib.Path:
    for split, classes in (("train", TRAIN), ("test", test)):
        for name, levels in classes.items():
            os.makedirs(root / split / name, exist_ok=True)
            for level in levels:
                image = np.full((10, 12), level, np.uint8)
                Image.fromarray(image).save(root / split / name / f"{level}.png")
    return root


@pytest.fixture
def folder(tmp_path: pathlib.Path) -> pathlib.Path:
    return _folder(tmp_path / "bugs")


def _config(folder: pathlib.Path, **options) -> TrainConfig:
    args = {
        "dataset": "bugs",
        "data_dir": str(folder.parent),
        "batch_size": 2,
        "seed": 3,
        "validation_fraction": 0.0,
        "bn_recalibrate_steps": 0,
    }
    return TrainConfig(**{**args, **options})


def _batches(dataset, count: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for images, labels in dataset:
        out.append((images.numpy(), labels.numpy()))
        if count is not None and len(out) == count:
            break
    return out


def _levels(batches) -> list[float]:
    """The grey level of every image, in order; uniform images only."""
    levels = []
    for images, _ in batches:
        for image in images:
            assert image.min() == image.max(), "an augmented (non-uniform) image"
            levels.append(float(image.flat[0]))
    return levels


def test_the_test_split_validates_without_a_held_out_fraction(folder) -> None:
    data = load_training_data(_config(folder))
    assert isinstance(data, TrainingData)
    assert data.info.split == "train" and data.info.num_examples == 9
    assert data.info.class_names == ("ant", "bee")
    assert data.test_info.split == "test" and data.test_info.num_examples == 3
    assert data.validation_info.split == "test"
    assert sorted(_levels(_batches(data.validation))) == [60, 70, 160]
    assert data.recalibration is None
    assert (data.global_batch, data.steps_per_epoch) == (2, 5)  # ceil(9 / 2)


def test_a_held_out_fraction_validates_on_training_images_and_trains_on_the_rest(folder) -> None:
    data = load_training_data(_config(folder, validation_fraction=0.34, bn_recalibrate_steps=1))
    assert data.validation_info.split == "validation"
    held_out = _levels(_batches(data.validation))
    assert len(held_out) == data.validation_info.num_examples == 3
    assert set(held_out) <= {*TRAIN["ant"], *TRAIN["bee"]}
    assert data.info.num_examples == 6 and data.steps_per_epoch == 3
    # Recalibration reads the same training images, without the held-out ones.
    recalibration = _levels(_batches(data.recalibration))
    assert sorted(recalibration + held_out) == sorted([*TRAIN["ant"], *TRAIN["bee"]])


def test_images_stay_raw_pixels_at_the_configured_size_and_channels(folder) -> None:
    config = _config(folder, image_size=[6, 5], channels=3, bn_recalibrate_steps=2)
    data = load_training_data(config)
    assert data.info.image_shape == (6, 5, 3)
    for split in (data.train, data.validation, data.recalibration):
        images, _ = _batches(split, 1)[0]
        assert images.shape[1:] == (6, 5, 3)
        assert images.max() > 1.5  # 0..255, not normalized
    assert sorted(_levels(_batches(data.validation))) == [60, 70, 160]


def test_the_global_batch_is_the_per_replica_batch_times_the_replicas(folder) -> None:
    data = load_training_data(_config(folder, batch_size=2), replicas=3)
    assert data.global_batch == 6 and data.steps_per_epoch == 2  # ceil(9 / 6)
    assert [len(labels) for _, labels in _batches(data.validation)] == [3]
    assert [len(labels) for _, labels in _batches(data.train)] == [6, 3]
    one_step = load_training_data(_config(folder, batch_size=16))
    assert one_step.steps_per_epoch == 1


def test_recalibration_batches_are_shuffled_unaugmented_training_images(folder) -> None:
    data = load_training_data(_config(folder, batch_size=9, bn_recalibrate_steps=3))
    ((images, labels),) = _batches(data.recalibration)
    levels = _levels([(images, labels)])
    assert sorted(levels) == sorted([*TRAIN["ant"], *TRAIN["bee"]])
    assert levels != sorted(levels) and levels != [*TRAIN["ant"], *TRAIN["bee"]]
    assert list(labels) == [0 if level < 100 else 1 for level in levels]
    # The seed fixes the order, as it fixes the training batches'.
    again = load_training_data(_config(folder, batch_size=9, bn_recalibrate_steps=3))
    assert _levels(_batches(again.recalibration)) == levels
    other = load_training_data(_config(folder, batch_size=9, bn_recalibrate_steps=3, seed=4))
    assert _levels(_batches(other.recalibration)) != levels
    # The training batches themselves are augmented: the padded crops of a
    # batch of 9 uniform images are not all uniform.
    ((train_images, _),) = _batches(data.train)
    assert any(image.min() != image.max() for image in train_images)


def test_a_step_cap_repeats_the_training_data(folder) -> None:
    data = load_training_data(_config(folder, steps_per_epoch=7))
    assert data.steps_per_epoch == 7
    assert len(_batches(data.train, 12)) == 12  # more than the 5 batches of one pass
    uncapped = load_training_data(_config(folder))
    assert len(_batches(uncapped.train)) == 5


def test_unreadable_images_are_skipped_when_asked(folder) -> None:
    (folder / "test" / "bee" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(ValueError, match=r"broken\.png"):
        load_training_data(_config(folder))
    data = load_training_data(_config(folder, bad_images="skip"))
    assert data.test_info.num_examples == 3


def test_a_test_split_with_other_classes_is_refused_before_training(tmp_path) -> None:
    folder = _folder(tmp_path / "bugs", test={"ant": [60], "wasp": [200]})
    with pytest.raises(ValueError) as err:
        load_training_data(_config(folder))
    assert str(err.value) == (
        f"The class folders of {str(folder / 'test')!r} ['ant', 'wasp'] differ from those of "
        f"{str(folder / 'train')!r} ['ant', 'bee']: labels would not mean the same class in both."
    )


def test_a_folder_without_a_test_split_is_refused_before_training(tmp_path) -> None:
    folder = _folder(tmp_path / "bugs")
    for path in (folder / "test").rglob("*.png"):
        path.unlink()
    for path in sorted((folder / "test").rglob("*"), reverse=True):
        path.rmdir()
    (folder / "test").rmdir()
    with pytest.raises(ValueError, match="test"):
        load_training_data(_config(folder, validation_fraction=0.34))
