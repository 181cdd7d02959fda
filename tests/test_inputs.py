"""Images going into an exported model (keras_densenet.export.inputs), unit by unit.

Milliseconds each, no model: tests/test_export.py checks the same paths end to
end through exported SavedModels. Every refusal is checked by its whole message.
"""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import tensorflow as tf

from keras_densenet.export import inputs
from keras_densenet.export.inputs import (
    batch_checks,
    decode_for_serving,
    image_list,
    resize,
    same_size_batches,
    to_uint8,
)

WHOLE = "must hold raw pixel values, whole numbers in 0..255"


def _png(image: np.ndarray) -> bytes:
    return tf.io.encode_png(image).numpy()


# --- to_uint8 -------------------------------------------------------------------


def test_to_uint8_keeps_uint8_arrays_as_they_are() -> None:
    image = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    assert to_uint8(image, "x") is image


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.int16, np.uint16])
def test_to_uint8_converts_whole_numbers_from_0_to_255(dtype) -> None:
    values = np.array([[0, 1, 254, 255]], dtype=dtype)
    out = to_uint8(values, "x")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[0, 1, 254, 255]])


def test_to_uint8_takes_booleans_and_empty_arrays() -> None:
    np.testing.assert_array_equal(to_uint8(np.array([True, False]), "x"), [1, 0])
    empty = to_uint8(np.zeros((0, 3), np.float32), "x")
    assert empty.dtype == np.uint8 and empty.shape == (0, 3)


@pytest.mark.parametrize(
    ("values", "shown"),
    [
        ([0.0, -1.0], "[-1.0, 0.0] (float64)"),
        ([0.0, 256.0], "[0.0, 256.0] (float64)"),
        ([0.0, 1.5], "[0.0, 1.5] (float64)"),
        ([-0.0001, 3.0], "[-0.0001, 3.0] (float64)"),
        ([0.0, 255.5], "[0.0, 255.5] (float64)"),
        ([0.0, np.nan], "[nan, nan] (float64)"),
        ([0.0, np.inf], "[0.0, inf] (float64)"),
    ],
)
def test_to_uint8_refuses_values_that_are_not_raw_pixels(values, shown) -> None:
    with pytest.raises(ValueError) as err:
        to_uint8(np.array(values), "`images[3]`")
    assert str(err.value) == f"`images[3]` {WHOLE}, got values in {shown}."


def test_to_uint8_refuses_integers_outside_the_byte_range() -> None:
    with pytest.raises(ValueError) as err:
        to_uint8(np.array([-1, 5], np.int32), "img")
    assert str(err.value) == f"img {WHOLE}, got values in [-1, 5] (int32)."


@pytest.mark.parametrize(
    ("array", "dtype"),
    [(np.array(["a"]), "<U1"), (np.array([1 + 2j]), "complex128"), (np.array([None]), "object")],
)
def test_to_uint8_refuses_arrays_that_are_not_numbers(array, dtype) -> None:
    with pytest.raises(ValueError) as err:
        to_uint8(array, "img")
    assert str(err.value) == f"img must be a numeric pixel array, got dtype {dtype}."


# --- image_list: what it accepts --------------------------------------------------


def test_a_single_image_and_a_batch_become_lists_of_images() -> None:
    batch = np.arange(2 * 3 * 4 * 1, dtype=np.uint8).reshape(2, 3, 4, 1)
    one = image_list(batch[0], channels=1)
    assert len(one) == 1
    np.testing.assert_array_equal(one[0], batch[0])
    both = image_list(batch, channels=1)
    assert len(both) == 2
    np.testing.assert_array_equal(np.stack(both), batch)
    from_tensor = image_list(tf.constant(batch), channels=None)
    np.testing.assert_array_equal(np.stack(from_tensor), batch)


def test_lists_and_tuples_may_mix_sizes_and_files(tmp_path: pathlib.Path) -> None:
    rgb = np.full((5, 6, 3), 7, np.uint8)
    path = tmp_path / "a.png"
    path.write_bytes(_png(rgb))
    small = np.zeros((2, 2, 3), np.float32)
    images = image_list([small, str(path), path, rgb.astype(np.int64)], channels=3)
    assert [image.shape for image in images] == [(2, 2, 3), (5, 6, 3), (5, 6, 3), (5, 6, 3)]
    assert all(image.dtype == np.uint8 for image in images)
    np.testing.assert_array_equal(images[1], rgb)
    assert len(image_list((small, small), channels=3)) == 2


def test_a_file_path_on_its_own_is_one_image_converted_to_the_models_channels(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "gray.png"
    path.write_bytes(_png(np.full((4, 3, 1), 9, np.uint8)))
    for given in (str(path), path):
        (image,) = image_list(given, channels=3)
        assert image.shape == (4, 3, 3)
        np.testing.assert_array_equal(image, 9)
    (kept,) = image_list(str(path), channels=None)
    assert kept.shape == (4, 3, 1)


def test_files_over_the_pixel_limit_are_refused_by_name(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(_png(np.zeros((4, 5, 3), np.uint8)))
    assert image_list(str(path), channels=3, max_pixels=20)[0].shape == (4, 5, 3)
    with pytest.raises(ValueError, match=r"big\.png"):
        image_list(str(path), channels=3, max_pixels=19)


def test_channels_none_accepts_any_channel_count() -> None:
    images = image_list([np.zeros((2, 2, c), np.uint8) for c in (1, 2, 3, 4, 7)], channels=None)
    assert [image.shape[-1] for image in images] == [1, 2, 3, 4, 7]


def test_one_by_one_images_and_exactly_the_pixel_limit_are_accepted() -> None:
    assert image_list(np.zeros((1, 1, 3), np.uint8), channels=3)[0].shape == (1, 1, 3)
    assert len(image_list(np.zeros((4, 5, 1), np.uint8), channels=1, max_pixels=20)) == 1


# --- image_list: what it refuses ----------------------------------------------------


def _refusal(images, channels=3, max_pixels=inputs.image_files.MAX_PIXELS) -> str:
    with pytest.raises(ValueError) as err:
        image_list(images, channels, max_pixels)
    return str(err.value)


BATCH_SHAPE = (
    "`images` must be one image (height, width, channels) or a batch "
    "(batch, height, width, channels), got shape "
)


def test_arrays_of_the_wrong_rank_are_refused_with_a_hint_for_grayscale() -> None:
    hint = "; add a channel axis to grayscale images: images[..., None]."
    assert _refusal(np.zeros((4, 5))) == f"{BATCH_SHAPE}(4, 5){hint}"
    assert _refusal(np.zeros(5)) == f"{BATCH_SHAPE}(5,)."
    assert _refusal(np.zeros((1, 2, 3, 4, 5))) == f"{BATCH_SHAPE}(1, 2, 3, 4, 5)."
    assert _refusal(tf.zeros((4, 5))) == f"{BATCH_SHAPE}(4, 5){hint}"


@pytest.mark.parametrize(
    ("images", "kind"),
    [(b"\x89PNG", "bytes"), (bytearray(b"ab"), "bytearray"), (3, "int"), ({"a": 1}, "dict")],
)
def test_other_types_are_refused_by_type(images, kind) -> None:
    assert _refusal(images) == (
        f"`images` must be an array, a list of arrays or a list of image file paths, got {kind}."
    )


def test_empty_inputs_are_refused() -> None:
    assert _refusal([]) == "`images` is empty."
    assert _refusal(np.zeros((0, 2, 2, 3), np.uint8)) == "`images` is empty."


def test_list_items_of_the_wrong_rank_are_refused_by_index() -> None:
    good = np.zeros((2, 2, 3), np.uint8)
    assert _refusal([good, np.zeros((4, 5), np.uint8)]) == (
        "`images[1]` must be (height, width, channels), got shape (4, 5); "
        "add a channel axis to grayscale images: image[..., None]."
    )
    assert _refusal([np.zeros((1, 2, 2, 3), np.uint8)]) == (
        "`images[0]` must be (height, width, channels), got shape (1, 2, 2, 3)."
    )


@pytest.mark.parametrize("shape", [(0, 4, 3), (4, 0, 3), (0, 0, 3)])
def test_images_without_pixels_are_refused(shape) -> None:
    assert _refusal([np.zeros((1, 1, 3), np.uint8), np.zeros(shape, np.uint8)]) == (
        f"`images[1]` is empty: shape {shape}."
    )


def test_an_image_without_channels_is_refused_for_its_channels() -> None:
    assert _refusal([np.zeros((2, 2, 0), np.uint8)], channels=3) == (
        "`images[0]` has 0 channels (shape (2, 2, 0)) but the model takes 3."
    )


def test_images_over_the_pixel_limit_are_refused_by_index() -> None:
    assert _refusal([np.zeros((4, 5, 3), np.uint8)], max_pixels=19) == (
        "`images[0]` has 20 pixels, over the limit of 19 (`max_image_pixels`)."
    )
    assert _refusal([np.zeros((1000, 1001, 1), np.uint8)], channels=1, max_pixels=1_000_999) == (
        "`images[0]` has 1,001,000 pixels, over the limit of 1,000,999 (`max_image_pixels`)."
    )


def test_the_wrong_channel_count_is_refused_with_a_hint_for_gray_batches() -> None:
    assert _refusal([np.zeros((2, 2, 1), np.uint8)], channels=3) == (
        "`images[0]` has 1 channels (shape (2, 2, 1)) but the model takes 3."
    )
    assert _refusal([np.zeros((2, 2, 4), np.uint8)], channels=3) == (
        "`images[0]` has 4 channels (shape (2, 2, 4)) but the model takes 3."
    )
    # (batch, height, width) grayscale read as one image whose width is channels.
    assert _refusal(np.zeros((2, 28, 28), np.uint8), channels=1) == (
        "`images[0]` has 28 channels (shape (2, 28, 28)) but the model takes 1; "
        "for grayscale images of shape (batch, height, width) add a channel axis: "
        "images[..., None]."
    )
    assert _refusal([np.zeros((2, 2, 5), np.uint8)], channels=3).endswith("images[..., None].")


def test_pixel_values_are_checked_per_image_by_index() -> None:
    assert _refusal([np.zeros((2, 2, 3)), np.full((2, 2, 3), 300.0)]) == (
        f"`images[1]` {WHOLE}, got values in [300.0, 300.0] (float64)."
    )


# --- same_size_batches --------------------------------------------------------------


def test_images_are_grouped_by_shape_in_batches_of_at_most_predict_batch() -> None:
    assert inputs.PREDICT_BATCH == 64
    small = [np.full((2, 2, 1), i, np.uint8) for i in range(130)]
    big = [np.full((3, 2, 1), 200 + i, np.uint8) for i in range(3)]
    images = small[:1] + big[:1] + small[1:] + big[1:]
    batches = list(same_size_batches(images))
    assert [len(indices) for indices, _ in batches] == [64, 64, 2, 3]
    assert [batch.shape for _, batch in batches] == [
        (64, 2, 2, 1),
        (64, 2, 2, 1),
        (2, 2, 2, 1),
        (3, 3, 2, 1),
    ]
    assert batches[0][0] == [0, *range(2, 65)]
    assert batches[2][0] == [129, 130]
    assert batches[3][0] == [1, 131, 132]
    for indices, batch in batches:
        for index, image in zip(indices, batch, strict=True):
            np.testing.assert_array_equal(image, images[index])
    assert sum(len(indices) for indices, _ in batches) == len(images)


def test_exactly_one_full_batch_is_one_batch() -> None:
    images = [np.zeros((1, 1, 1), np.uint8)] * 64
    assert [len(indices) for indices, _ in same_size_batches(images)] == [64]
    assert list(same_size_batches([])) == []


# --- resize -------------------------------------------------------------------------


def test_resize_is_exact_at_the_models_size_and_bilinear_with_half_pixel_centres() -> None:
    image = np.array([[[[0], [4]]]], np.uint8)  # (1, 1, 2, 1)
    same = resize(image, 1, 2)
    assert same.dtype == tf.float32
    np.testing.assert_array_equal(same.numpy(), [[[[0.0], [4.0]]]])
    wider = resize(image, 1, 4).numpy()
    np.testing.assert_allclose(wider[0, 0, :, 0], [0.0, 1.0, 3.0, 4.0])
    taller = resize(np.array([[[[10]], [[20]]]], np.int32), 4, 1).numpy()
    np.testing.assert_allclose(taller[0, :, 0, 0], [10.0, 12.5, 17.5, 20.0])


# --- the in-graph decoding of image_bytes -------------------------------------------


def _decoded(pixels: np.ndarray, channels: int, size=None, max_pixels=10_000) -> np.ndarray:
    height, width = size or pixels.shape[:2]
    return decode_for_serving(
        tf.constant(_png(pixels)), channels, height, width, max_pixels
    ).numpy()


@pytest.mark.parametrize(
    ("pixels", "channels", "expected"),
    [
        ([10], 1, [10]),
        ([10, 99], 1, [10]),  # gray + alpha: alpha dropped
        ([255, 0, 0], 1, [76]),  # round(0.2989 * 255)
        ([0, 255, 0], 1, [150]),  # round(0.587 * 255)
        ([200, 100, 50, 7], 1, [124]),  # RGBA: alpha dropped, then gray
        ([10], 3, [10, 10, 10]),
        ([10, 99], 3, [10, 10, 10]),
        ([1, 2, 3], 3, [1, 2, 3]),
        ([1, 2, 3, 4], 3, [1, 2, 3]),
    ],
)
def test_decoding_converts_one_to_four_channels_to_the_models(pixels, channels, expected) -> None:
    image = np.tile(np.array(pixels, np.uint8), (2, 3, 1))
    out = _decoded(image, channels)
    assert out.shape == (2, 3, channels) and out.dtype == np.float32
    np.testing.assert_array_equal(out, np.tile(np.array(expected, np.float32), (2, 3, 1)))


def test_an_animated_gif_is_decoded_as_its_first_frame() -> None:
    import io

    from PIL import Image

    frames = [Image.fromarray(np.full((3, 4), v, np.uint8)) for v in (40, 200)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    out = decode_for_serving(tf.constant(buffer.getvalue()), 1, 3, 4, 100).numpy()
    assert out.shape == (3, 4, 1)
    np.testing.assert_array_equal(out, 40.0)


def test_decoding_resizes_to_the_models_size_and_sets_the_static_channels() -> None:
    image = np.zeros((2, 2, 3), np.uint8)
    image[:, 1] = 200
    out = _decoded(image, 3, size=(4, 4))
    assert out.shape == (4, 4, 3)
    np.testing.assert_allclose(out[0, :, 0], [0.0, 50.0, 150.0, 200.0])

    @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
    def decode(data):
        return decode_for_serving(data, 1, 5, 6, 100)

    spec = decode.get_concrete_function().structured_outputs
    assert spec.shape.as_list() == [5, 6, 1]


def test_decoding_refuses_images_over_the_pixel_limit_from_their_header() -> None:
    image = np.zeros((4, 5, 3), np.uint8)
    assert _decoded(image, 3, max_pixels=20).shape == (4, 5, 3)
    # In a graph, as a signature runs it: the check must be a dependency of the decoding.
    decode = tf.function(lambda data: decode_for_serving(data, 3, 4, 5, 19))
    with pytest.raises(tf.errors.InvalidArgumentError, match="over the limit of 19 pixels"):
        decode(tf.constant(_png(image)))
    with pytest.raises(tf.errors.InvalidArgumentError) as err:
        _decoded(image, 3, max_pixels=19)
    assert err.value.message.startswith(  # run eagerly: the message comes first
        "an image in `image_bytes` is over the limit of 19 pixels (`max_image_pixels`)\n"
    )


# --- batch_checks -------------------------------------------------------------------


def _check(images, channels=3, max_pixels=100) -> None:
    """Runs the checks as a loaded signature does: any shape reaches them (the
    declared one is not enforced there), so the rank is left unknown here."""

    @tf.function(input_signature=[tf.TensorSpec(None, tf.uint8)])
    def serve(x):
        with tf.control_dependencies(batch_checks(x, channels, max_pixels)):
            return tf.identity(x)

    serve(tf.constant(images, tf.uint8))


def test_batch_checks_pass_a_good_batch_including_exactly_the_pixel_limit() -> None:
    _check(np.zeros((2, 10, 10, 3)))
    _check(np.zeros((1, 2, 40, 3)))  # height x width, not width x width
    _check(np.zeros((1, 1, 1, 1)), channels=1, max_pixels=1)
    assert len(batch_checks(tf.zeros((1, 1, 1, 3), tf.uint8), 3, 1)) == 3


@pytest.mark.parametrize(
    ("shape", "channels", "message"),
    [
        ((2, 4, 4, 1), 3, "`images` must be a batch of shape [N, height, width, 3]"),
        ((2, 4, 4, 3), 1, "`images` must be a batch of shape [N, height, width, 1]"),
        ((4, 4, 3), 3, "`images` must be a batch of shape [N, height, width, 3]"),
        ((1, 4, 4, 3, 1), 3, "`images` must be a batch of shape [N, height, width, 3]"),
        ((0, 4, 4, 3), 3, "`images` must hold at least one image of at least 1x1 pixels"),
        ((1, 0, 4, 3), 3, "`images` must hold at least one image of at least 1x1 pixels"),
        ((1, 4, 0, 3), 3, "`images` must hold at least one image of at least 1x1 pixels"),
        ((1, 10, 11, 3), 3, "`images` are over the limit of 100 pixels each (`max_image_pixels`)"),
        ((1, 40, 3, 3), 3, "`images` are over the limit of 100 pixels each (`max_image_pixels`)"),
    ],
)
def test_batch_checks_name_what_is_wrong(shape, channels, message) -> None:
    with pytest.raises(tf.errors.InvalidArgumentError) as err:
        _check(np.zeros(shape), channels=channels)
    assert f"assertion failed: [{message}" in err.value.message


def test_the_pixel_limit_is_checked_in_int64() -> None:
    # 70,000 x 70,000 overflows int32; the product must still be compared exactly.
    images = tf.zeros([1, 70_000, 70_000, 0], tf.uint8)
    with pytest.raises(tf.errors.InvalidArgumentError) as err:
        batch_checks(images, 0, 4_899_999_999)
    assert err.value.message.startswith(
        "`images` are over the limit of 4899999999 pixels each (`max_image_pixels`)\n"
    )
    batch_checks(images, 0, 4_900_000_000)


def test_stream_batches_hold_one_image_at_its_own_size_and_keep_the_order(monkeypatch):
    from keras_densenet.export import inputs

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 1), dtype=np.uint8) for h, w in [(9, 7)] * 70 + [(5, 5)]]
    batches = list(inputs.stream_batches(images, 1, size=(4, 4)))
    assert [len(i) for i, _ in batches] == [64, 7]  # resized as decoded: one shape, full batches
    assert [i for idx, _ in batches for i in idx] == list(range(71))
    for indices, batch in batches:
        assert batch.shape == (len(indices), 4, 4, 1) and batch.dtype == np.float32
        np.testing.assert_allclose(
            batch[-1], inputs.resize(images[indices[-1]][None], 4, 4)[0], rtol=1e-6
        )
    # At their own size: consecutive images of one shape, within the pixel budget.
    monkeypatch.setattr(inputs, "BATCH_PIXELS", 3 * 63)
    batches = list(inputs.stream_batches(images[:5] + images[-1:] + images[:2], 1))
    assert [idx for idx, _ in batches] == [[0, 1, 2], [3, 4], [5], [6, 7]]
    assert batches[0][1].dtype == np.uint8 and batches[2][1].shape == (1, 5, 5, 1)


def test_check_items_refuses_a_bad_file_before_anything_is_decoded(tmp_path):
    from PIL import Image

    from keras_densenet.export.inputs import check_items

    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(10))
    with pytest.raises(ValueError, match=r"bad\.png"):
        check_items([str(good)] * 3 + [str(bad)])
    assert check_items([str(good)]) == [str(good)]
    with pytest.raises(ValueError, match="`images` is empty"):
        check_items([])
