"""Tests of keras_densenet.data on real TensorFlow pipelines and real files."""

from __future__ import annotations

import dataclasses
import functools
import gzip
import os
import struct
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_densenet import data
from keras_densenet.data import (
    FASHION_MNIST_CLASSES,
    PAD,
    SAMPLE_NAME,
    SAMPLE_PATH,
    DatasetInfo,
    DatasetNotFoundError,
    load_dataset,
    make_sample,
    read_idx,
)

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"


@pytest.fixture
def debian_fashion_mnist():
    """The real Fashion-MNIST IDX files: required, never skipped."""
    if not os.path.exists(os.path.join(DEBIAN_DIR, "train-images-idx3-ubyte.gz")):
        pytest.fail(
            f"Fashion-MNIST IDX files not in {DEBIAN_DIR}: bash .ci/setup installs Debian's "
            "dataset-fashion-mnist (as root), or apt-get install dataset-fashion-mnist"
        )
    return DEBIAN_DIR


@functools.cache
def _sample() -> dict[str, np.ndarray]:
    with np.load(SAMPLE_PATH) as npz:
        return {k: npz[k] for k in npz.files}


def _collect(dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    batches = list(dataset.as_numpy_iterator())
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


def _write_idx(path: os.PathLike, array: np.ndarray, compress: bool = True) -> str:
    codes = {np.dtype("uint8"): 0x08, np.dtype(">i4"): 0x0C}
    array = np.asarray(array)
    if array.dtype == np.int32:
        array = array.astype(">i4")
    payload = bytes([0, 0, codes[array.dtype], array.ndim])
    payload += struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path = os.fspath(path)
    with open(path, "wb") as f:
        f.write(gzip.compress(payload) if compress else payload)
    return path


def _write_idx_dir(directory: os.PathLike, train_per_class: int = 3) -> None:
    """IDX files of a few real images from the embedded sample."""
    sample = _sample()
    names = {"train": ("x_train", "y_train"), "test": ("x_test", "y_test")}
    for split, (x_key, y_key) in names.items():
        x, y = sample[x_key], sample[y_key]
        keep = np.concatenate([np.flatnonzero(y == c)[:train_per_class] for c in range(10)])
        image_file, label_file = data.IDX_FILES[split]
        _write_idx(os.path.join(directory, image_file + ".gz"), x[np.sort(keep), ..., 0])
        _write_idx(os.path.join(directory, label_file + ".gz"), y[np.sort(keep)].astype(np.uint8))


def _match_crop(original: np.ndarray, augmented: np.ndarray, pad_value: np.ndarray):
    """(dy, dx, flipped) if `augmented` is a crop of the padded original, else None."""
    height, width = original.shape[:2]
    padded = np.pad(original - pad_value, ((PAD, PAD), (PAD, PAD), (0, 0))) + pad_value
    for dy in range(2 * PAD + 1):
        for dx in range(2 * PAD + 1):
            crop = padded[dy : dy + height, dx : dx + width]
            for flipped, candidate in ((False, crop), (True, crop[:, ::-1])):
                if np.allclose(candidate, augmented, atol=1e-4):
                    return dy, dx, flipped
    return None


# ---------------------------------------------------------------------------
# The embedded sample and the pipeline


def test_sample_file_is_small_balanced_and_complete():
    assert os.path.isfile(SAMPLE_PATH)
    assert os.path.getsize(SAMPLE_PATH) < 2.2e6
    sample = _sample()
    assert sample["x_train"].dtype == np.uint8 and sample["x_train"].shape[1:] == (28, 28, 1)
    assert sample["x_test"].dtype == np.uint8 and sample["x_test"].shape[1:] == (28, 28, 1)
    assert len(sample["x_train"]) + len(sample["x_test"]) >= 2000
    for split in ("train", "test"):
        counts = np.bincount(sample[f"y_{split}"], minlength=10)
        assert len(counts) == 10 and len(set(counts.tolist())) == 1, counts
        assert len(np.unique(sample[f"{split}_indices"])) == len(sample[f"y_{split}"])
    assert tuple(sample["class_names"]) == FASHION_MNIST_CLASSES
    assert "Fashion-MNIST" in str(sample["provenance"])
    # Real photographs, not noise: many black background pixels and a wide range.
    assert (sample["x_train"] == 0).mean() > 0.3 and sample["x_train"].max() == 255


def test_sample_images_are_the_real_fashion_mnist_images(debian_fashion_mnist):
    sample = _sample()
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(os.path.join(DEBIAN_DIR, f"{prefix}-images-idx3-ubyte.gz"))
        labels = read_idx(os.path.join(DEBIAN_DIR, f"{prefix}-labels-idx1-ubyte.gz"))
        index = sample[f"{split}_indices"]
        np.testing.assert_array_equal(sample[f"x_{split}"][..., 0], images[index])
        np.testing.assert_array_equal(sample[f"y_{split}"], labels[index])


def test_make_sample_rebuilds_the_shipped_file_atomically(debian_fashion_mnist, tmp_path):
    out = make_sample(DEBIAN_DIR, tmp_path / "sample.npz")
    assert out == str(tmp_path / "sample.npz")
    assert os.listdir(tmp_path) == ["sample.npz"]  # no temporary file left behind
    with np.load(out) as rebuilt:
        for key in ("x_train", "y_train", "x_test", "y_test", "train_indices"):
            np.testing.assert_array_equal(rebuilt[key], _sample()[key])
    small = make_sample(DEBIAN_DIR, tmp_path / "small.npz", train_per_class=2, test_per_class=1)
    with np.load(small) as npz:
        assert np.bincount(npz["y_train"]).tolist() == [2] * 10
        assert np.bincount(npz["y_test"]).tolist() == [1] * 10
    with pytest.raises(ValueError, match="train_per_class"):
        make_sample(DEBIAN_DIR, tmp_path / "x.npz", train_per_class=7000)


def test_pipeline_shapes_dtypes_and_info():
    dataset, info = load_dataset(SAMPLE_NAME, "train", batch_size=256, seed=0)
    assert dataset.element_spec[0].shape.as_list() == [None, 28, 28, 1]
    assert dataset.element_spec[0].dtype == tf.float32
    assert dataset.element_spec[1].dtype == tf.int32
    images, labels = _collect(dataset)
    assert images.shape == (3000, 28, 28, 1) and labels.shape == (3000,)
    assert np.bincount(labels).tolist() == [300] * 10
    assert info == DatasetInfo(
        name=SAMPLE_NAME,
        split="train",
        num_classes=10,
        image_shape=(28, 28, 1),
        class_names=FASHION_MNIST_CLASSES,
        num_examples=3000,
        mean=info.mean,
        std=info.std,
        source="sample",
        label_counts=(300,) * 10,  # the sample is class-balanced
    )
    raw = _sample()["x_train"].astype(np.float64)
    np.testing.assert_allclose(info.mean, [raw.mean()], rtol=1e-9)
    np.testing.assert_allclose(info.std, [raw.std()], rtol=1e-9)
    assert info.normalization == (info.mean, info.std)
    batches = list(load_dataset(SAMPLE_NAME, "test", batch_size=300, drop_remainder=True)[0])
    assert [len(b[1]) for b in batches] == [300, 300, 300]


def test_normalisation_uses_training_statistics():
    train, train_info = load_dataset(SAMPLE_NAME, "train", augment=False, shuffle=False)
    images, _ = _collect(train)
    assert abs(images.mean()) < 1e-4 and abs(images.std() - 1.0) < 1e-4
    test, test_info = load_dataset(SAMPLE_NAME, "test")
    assert (test_info.mean, test_info.std) == (train_info.mean, train_info.std)
    test_images, test_labels = _collect(test)
    expected = (_sample()["x_test"] - np.float32(train_info.mean[0])) / np.float32(
        train_info.std[0]
    )
    np.testing.assert_allclose(test_images, expected, atol=1e-5)
    np.testing.assert_array_equal(test_labels, _sample()["y_test"])


def test_normalize_false_keeps_raw_pixels_for_in_model_normalization():
    raw, info = load_dataset(SAMPLE_NAME, "train", normalize=False, augment=False, shuffle=False)
    images, _ = _collect(raw)
    assert images.dtype == np.float32
    np.testing.assert_array_equal(images, _sample()["x_train"].astype(np.float32))
    # With augmentation, raw + a Normalization layer gives the normalized pipeline exactly:
    # padding is with the mean, i.e. zero after normalization.
    norm_layer = keras.layers.Normalization(
        mean=info.mean, variance=[s * s for s in info.std], axis=-1
    )
    raw_aug, _ = next(iter(load_dataset(SAMPLE_NAME, "train", normalize=False, seed=5)[0]))
    normalized_aug, _ = next(iter(load_dataset(SAMPLE_NAME, "train", seed=5)[0]))
    np.testing.assert_allclose(norm_layer(raw_aug), normalized_aug, atol=1e-4)


def test_augmentation_is_padded_random_crop_and_flip():
    kwargs = {"batch_size": 64, "shuffle": False, "seed": 0}
    plain, _ = next(iter(load_dataset(SAMPLE_NAME, "train", augment=False, **kwargs)[0]))
    augmented, labels = next(iter(load_dataset(SAMPLE_NAME, "train", **kwargs)[0]))
    assert augmented.shape == plain.shape == (64, 28, 28, 1)
    np.testing.assert_array_equal(labels, _sample()["y_train"][:64])
    changed = np.abs(augmented.numpy() - plain.numpy()).max(axis=(1, 2, 3)) > 1e-6
    assert changed.mean() > 0.5
    matches = [
        _match_crop(p, a, 0.0)
        for p, a in zip(plain.numpy()[:24], augmented.numpy()[:24], strict=True)
    ]
    assert all(m is not None for m in matches), matches
    assert any(m[2] for m in matches) and not all(m[2] for m in matches)  # flips, sometimes
    assert len({m[:2] for m in matches}) > 3  # several different crops
    # The test split is not augmented unless asked.
    test_a, _ = next(iter(load_dataset(SAMPLE_NAME, "test", augment=False)[0]))
    test_b, _ = next(iter(load_dataset(SAMPLE_NAME, "test")[0]))
    np.testing.assert_array_equal(test_a, test_b)


def test_seed_makes_shuffling_and_augmentation_deterministic():
    def first_batches(seed, epochs=1):
        dataset, _ = load_dataset(SAMPLE_NAME, "train", batch_size=32, seed=seed)
        return [next(iter(dataset)) for _ in range(epochs)]

    (a1, a2), (b1,) = first_batches(3, epochs=2), first_batches(3)
    np.testing.assert_array_equal(a1[0], b1[0])
    np.testing.assert_array_equal(a1[1], b1[1])
    assert not np.array_equal(a1[1], a2[1])  # reshuffled every epoch
    (c1,) = first_batches(4)
    assert not np.array_equal(a1[1], c1[1])


def test_validation_is_carved_deterministically_off_train():
    kwargs = {"validation_fraction": 0.1, "augment": False, "shuffle": False}
    train, train_info = load_dataset(SAMPLE_NAME, "train", **kwargs)
    val, val_info = load_dataset(SAMPLE_NAME, "validation", **kwargs)
    assert (train_info.num_examples, val_info.num_examples) == (2700, 300)
    assert train_info.mean == val_info.mean
    _, val_labels = _collect(val)
    np.testing.assert_array_equal(val_labels, _sample()["y_train"][2700:])
    train_images, _ = _collect(train)
    assert abs(train_images.mean()) < 1e-4  # statistics of the 2700 kept for training
    with pytest.raises(ValueError, match="validation_fraction"):
        load_dataset(SAMPLE_NAME, "validation")


def test_resizing_and_grayscale_to_rgb_are_options():
    dataset, info = load_dataset(SAMPLE_NAME, "test", image_size=(32, 32), channels=3)
    images, _ = next(iter(dataset))
    assert images.shape[1:] == (32, 32, 3) and info.image_shape == (32, 32, 3)
    assert len(info.mean) == 3 and info.mean[0] == info.mean[2]
    np.testing.assert_allclose(images[..., 0], images[..., 2])


def test_dataset_info_is_frozen_and_validated():
    _, info = load_dataset(SAMPLE_NAME, "test")
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.split = "train"
    with pytest.raises(ValueError, match="split"):
        dataclasses.replace(info, split="dev")
    with pytest.raises(ValueError, match="class_names"):
        dataclasses.replace(info, num_classes=3)
    with pytest.raises(ValueError, match="std"):
        dataclasses.replace(info, std=(0.0,))


# ---------------------------------------------------------------------------
# IDX files


def test_idx_source_reads_the_debian_files(debian_fashion_mnist, tmp_path):
    images = read_idx(os.path.join(DEBIAN_DIR, "train-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(DEBIAN_DIR, "train-labels-idx1-ubyte.gz"))
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [6000] * 10
    # An empty data_dir: no prepared TFDS copy, so the Debian IDX files are used.
    dataset, info = load_dataset("fashion_mnist", "train", data_dir=tmp_path, batch_size=500)
    assert (info.source, info.num_examples, info.image_shape) == ("idx", 60000, (28, 28, 1))
    assert info.class_names == FASHION_MNIST_CLASSES
    np.testing.assert_allclose(info.mean, [images.mean()], rtol=1e-9)
    _, test_info = load_dataset("fashion_mnist", "test", data_dir=tmp_path)
    assert test_info.num_examples == 10000 and test_info.mean == info.mean
    batch_images, batch_labels = next(iter(dataset))
    assert batch_images.shape == (500, 28, 28, 1)
    assert set(np.unique(batch_labels).tolist()) <= set(range(10))


def test_read_idx_round_trip(tmp_path):
    array = np.arange(24, dtype=np.int32).reshape(2, 3, 4) - 5
    assert (
        read_idx(_write_idx(tmp_path / "a.idx", array, compress=False)).tolist() == array.tolist()
    )
    images = _sample()["x_test"][:5, ..., 0]
    np.testing.assert_array_equal(read_idx(_write_idx(tmp_path / "b.gz", images)), images)


@pytest.mark.reliability("bad_input")
@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda raw: raw[:-7], "truncated"),
        (lambda raw: raw[:10], "truncated"),
        (lambda raw: raw + b"\0", "corrupted"),
        (lambda raw: b"\1\2" + raw[2:], "not an IDX file"),
        (lambda raw: raw[:3] + b"\0" + raw[4:], "not an IDX file"),
    ],
)
@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_rejects_damaged_files(tmp_path, damage, message, compress):
    raw = bytes([0, 0, 8, 3]) + struct.pack(">3I", 4, 5, 6) + bytes(range(120))
    path = tmp_path / "damaged-images-idx3-ubyte"
    path.write_bytes(gzip.compress(damage(raw)) if compress else damage(raw))
    with pytest.raises(ValueError, match=message) as err:
        read_idx(path)
    assert str(path) in str(err.value)


@pytest.mark.reliability("bad_input")
def test_read_idx_rejects_broken_gzip(tmp_path):
    good = gzip.compress(bytes([0, 0, 8, 1]) + struct.pack(">I", 5000) + bytes(5000))
    for name, raw in (("cut.gz", good[: len(good) // 2]), ("bad.gz", good[:20] + b"x" * 40)):
        (tmp_path / name).write_bytes(raw)
        with pytest.raises(ValueError, match=f"{name}.*(truncated|corrupted)"):
            read_idx(tmp_path / name)


def test_idx_source_from_data_dir_and_no_flip_for_digits(tmp_path, monkeypatch):
    monkeypatch.setitem(data.IDX_DIRS, "mnist", ())
    _write_idx_dir(tmp_path, train_per_class=3)
    kwargs = {"data_dir": tmp_path, "shuffle": False, "seed": 1, "batch_size": 30}
    dataset, info = load_dataset("mnist", "train", **kwargs)
    assert (info.source, info.num_examples, info.class_names[3]) == ("idx", 30, "3")
    augmented, _ = next(iter(dataset))
    plain, _ = next(iter(load_dataset("mnist", "train", augment=False, **kwargs)[0]))
    matches = [
        _match_crop(p, a, 0.0) for p, a in zip(plain.numpy(), augmented.numpy(), strict=True)
    ]
    assert all(m is not None and not m[2] for m in matches), matches  # cropped, never flipped
    flipped = load_dataset("mnist", "train", flip=True, **kwargs)[0]
    matches = [
        _match_crop(p, a, 0.0)
        for p, a in zip(plain.numpy(), next(iter(flipped))[0].numpy(), strict=True)
    ]
    assert any(m[2] for m in matches)


@pytest.mark.reliability("bad_input")
def test_corrupted_idx_file_in_data_dir_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setitem(data.IDX_DIRS, "mnist", ())
    _write_idx_dir(tmp_path)
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:-12])
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte\.gz"):
        load_dataset("mnist", "train", data_dir=tmp_path)


# ---------------------------------------------------------------------------
# TFDS


def test_tfds_source_with_mock_data():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=10):
        dataset, info = load_dataset("cifar10", "train", batch_size=4, seed=0)
        images, labels = next(iter(dataset))
        assert images.shape == (4, 32, 32, 3) and images.dtype == tf.float32
        assert labels.dtype == tf.int32
        assert (info.source, info.num_examples, info.num_classes) == ("tfds", 10, 10)
        assert info.image_shape == (32, 32, 3) and len(info.mean) == 3
        assert sum(len(b[1]) for b in dataset) == 10
        dataset, info = load_dataset("fashion_mnist", "test", batch_size=3, channels=3)
        assert next(iter(dataset))[0].shape == (3, 28, 28, 3)
        assert info.class_names == FASHION_MNIST_CLASSES and info.image_shape == (28, 28, 3)


@functools.cache
def _tiny_tfds_builder():
    import tensorflow_datasets as tfds

    class KerasDensenetTinyImages(tfds.core.GeneratorBasedBuilder):
        """Three classes of random 8x8 RGB images: a real, locally prepared TFDS dataset."""

        VERSION = tfds.core.Version("1.0.0")
        # TFDS looks for metadata files next to a builder's package; tests/ is none.
        pkg_dir_path = tfds.core.Path(os.path.dirname(os.path.abspath(__file__)))

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(shape=(8, 8, 3)),
                        "label": tfds.features.ClassLabel(names=["a", "b", "c"]),
                    }
                ),
                supervised_keys=("image", "label"),
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(20, 0), "test": self._generate_examples(6, 1)}

        def _generate_examples(self, n, seed):
            rng = np.random.default_rng(seed)
            for i in range(n):
                image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                yield i, {"image": image, "label": i % 3}

    return KerasDensenetTinyImages


def test_tfds_source_uses_a_prepared_data_dir(tmp_path):
    builder_class = _tiny_tfds_builder()
    name = "keras_densenet_tiny_images"
    with pytest.raises(DatasetNotFoundError, match="not prepared"):
        load_dataset(name, "train", data_dir=tmp_path)
    builder_class(data_dir=str(tmp_path)).download_and_prepare()
    dataset, info = load_dataset(name, "train", data_dir=tmp_path, batch_size=8)
    assert (info.source, info.num_examples, info.class_names) == ("tfds", 20, ("a", "b", "c"))
    assert [len(labels) for _, labels in dataset] == [8, 8, 4]
    _, test_info = load_dataset(name, "test", data_dir=tmp_path)
    assert test_info.num_examples == 6 and test_info.mean == info.mean
    with pytest.raises(ValueError, match=r"split.*validation_fraction"):
        load_dataset(name, "validation", data_dir=tmp_path)
    kwargs = {"data_dir": tmp_path, "validation_fraction": 0.25, "shuffle": False}
    _, val_info = load_dataset(name, "validation", **kwargs)
    _, carved_info = load_dataset(name, "train", **kwargs)
    assert (carved_info.num_examples, val_info.num_examples) == (15, 5)
    assert carved_info.mean != info.mean  # statistics of the 15 kept examples


# ---------------------------------------------------------------------------
# Image folders


def _write_folder(root: os.PathLike, rgb: bool) -> dict[str, np.ndarray]:
    from PIL import Image

    rng = np.random.default_rng(0)
    written = {}
    for split, per_class in (("train", 3), ("test", 2)):
        for cls in ("cat", "dog"):
            os.makedirs(os.path.join(root, split, cls))
            for i in range(per_class):
                shape = (10, 12, 3) if rgb else (10, 12)
                pixels = rng.integers(0, 256, shape, dtype=np.uint8)
                path = os.path.join(root, split, cls, f"{i}.png")
                Image.fromarray(pixels).save(path)
                written[path] = pixels
    return written


def test_image_folder_source(tmp_path):
    written = _write_folder(tmp_path / "pets", rgb=True)
    root = str(tmp_path / "pets")
    kwargs = {"normalize": False, "augment": False, "shuffle": False}
    dataset, info = load_dataset(root, "train", batch_size=4, cache=str(tmp_path / "c"), **kwargs)
    assert (info.source, info.class_names, info.num_examples) == ("folder", ("cat", "dog"), 6)
    assert info.image_shape == (10, 12, 3)
    images, labels = _collect(dataset)
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]
    expected = [
        written[os.path.join(root, "train", c, f"{i}.png")]
        for c in ("cat", "dog")
        for i in range(3)
    ]
    np.testing.assert_array_equal(images, np.stack(expected).astype(np.float32))
    assert any(name.startswith("c.train") for name in os.listdir(tmp_path))  # the file cache
    test, test_info = load_dataset("pets", "test", data_dir=tmp_path, batch_size=8)
    assert test_info.num_examples == 4 and test_info.mean == info.mean
    assert next(iter(test))[0].shape == (4, 10, 12, 3)
    with pytest.raises(ValueError, match="validation"):
        load_dataset(root, "validation")


def test_grayscale_image_folder_without_split_folders(tmp_path):
    _write_folder(tmp_path, rgb=False)
    train_dir = str(tmp_path / "train")
    dataset, info = load_dataset(train_dir, "train", batch_size=6, image_size=(16, 16))
    assert info.image_shape == (16, 16, 1) and info.num_examples == 6
    assert next(iter(dataset))[0].shape == (6, 16, 16, 1)
    _, val_info = load_dataset(train_dir, "validation", validation_fraction=0.34)
    assert val_info.num_examples == 2
    with pytest.raises(ValueError, match="test"):
        load_dataset(train_dir, "test")


# ---------------------------------------------------------------------------
# Missing data and bad arguments


@pytest.mark.reliability("bad_input")
def test_missing_dataset_lists_the_sources_tried(tmp_path, monkeypatch):
    monkeypatch.setitem(data.IDX_DIRS, "mnist", ())
    start = time.monotonic()
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("mnist", "train", data_dir=tmp_path)
    message = str(err.value)
    for expected in ("tfds", "idx", "folder", "sample", "download=True", "dataset-fashion-mnist"):
        assert expected in message
    with pytest.raises(DatasetNotFoundError, match="no_such_dataset_kd"):
        load_dataset("no_such_dataset_kd", "test")
    assert time.monotonic() - start < 20
    assert issubclass(DatasetNotFoundError, ValueError)


@pytest.mark.reliability("faults")
def test_download_is_stopped_after_the_timeout(tmp_path, monkeypatch):
    monkeypatch.setitem(data.IDX_DIRS, "mnist", ())
    start = time.monotonic()
    with pytest.raises(DatasetNotFoundError, match="tfds download"):
        load_dataset("mnist", "train", data_dir=tmp_path, download=True, download_timeout=0.5)
    assert time.monotonic() - start < 20


@pytest.mark.parametrize(
    ("kwargs", "error", "argument"),
    [
        ({"split": "dev"}, ValueError, "split"),
        ({"name": ""}, ValueError, "name"),
        ({"name": 3}, ValueError, "name"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"batch_size": 2.5}, TypeError, "batch_size"),
        ({"data_dir": 5}, ValueError, "data_dir"),
        ({"download": "yes"}, TypeError, "download"),
        ({"download_timeout": 0}, ValueError, "download_timeout"),
        ({"augment": "yes"}, TypeError, "augment"),
        ({"flip": 1}, TypeError, "flip"),
        ({"normalize": None}, TypeError, "normalize"),
        ({"shuffle": "no"}, TypeError, "shuffle"),
        ({"seed": -1}, ValueError, "seed"),
        ({"cache": 3}, ValueError, "cache"),
        ({"image_size": (0, 32)}, ValueError, "image_size"),
        ({"image_size": 32}, ValueError, "image_size"),
        ({"channels": 2}, ValueError, "channels"),
        ({"validation_fraction": 1.0}, ValueError, "validation_fraction"),
        ({"drop_remainder": None}, TypeError, "drop_remainder"),
    ],
)
def test_bad_arguments_fail_before_reading_data(kwargs, error, argument, monkeypatch):
    def forbidden(*args, **kw):
        raise AssertionError("data was read before the arguments were checked")

    from keras_densenet.data import sources

    for loader in ("_load_sample", "load_tfds", "_load_idx", "load_folder"):
        monkeypatch.setattr(sources, loader, forbidden)
    call = {"name": SAMPLE_NAME, "split": "train", **kwargs}
    with pytest.raises(error, match=f"`{argument}`"):
        load_dataset(call.pop("name"), call.pop("split"), **call)
