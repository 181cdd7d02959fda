"""Image files checked from their bytes: formats, channels, truncation, bombs."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_densenet import images

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)
FORMATS = ("PNG", "JPEG", "GIF", "BMP")


def encode(fmt: str, mode: str = "RGB", size: tuple[int, int] | None = None) -> bytes:
    image = Image.fromarray(RGB).convert(mode) if size is None else Image.new(mode, size)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_header_gives_size_and_both_channel_counts_decode(fmt, mode):
    data = encode(fmt, mode)
    info = images.inspect_image(data, fmt)
    assert (info.format, info.width, info.height) == (fmt.lower(), 30, 20)
    # GIF, BMP and 1-channel files decode to either channel count (the
    # quickstart's models take 1 channel, ImageNet models 3).
    gray, rgb = images.decode_image(data, 1), images.decode_image(data, 3)
    assert gray.shape == (20, 30, 1) and rgb.shape == (20, 30, 3)
    assert gray.dtype == rgb.dtype == np.uint8
    if fmt in ("PNG", "BMP"):  # lossless: the pixels themselves
        expected = np.asarray(Image.fromarray(RGB).convert(mode))
        if mode == "L":
            np.testing.assert_array_equal(gray[..., 0], expected)
        else:
            np.testing.assert_array_equal(rgb, expected)
    in_graph = tf.function(images.header_dimensions)(tf.constant(data)).numpy()
    assert list(in_graph) == [20, 30]


@pytest.mark.reliability("bad_input")
@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_files_are_refused_before_decoding(fmt):
    data = encode(fmt)
    for cut in (len(data) // 2, len(data) - 3):
        with pytest.raises(ValueError, match=f"truncated or corrupted {fmt}"):
            images.inspect_image(data[:cut], "cut.img")


@pytest.mark.reliability("bad_input")
@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "is empty"),
        (b"this is a text file named .jpg", "not a JPEG, PNG, GIF or BMP"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 10, "truncated or corrupted JPEG"),
    ],
)
def test_not_images(data, match):
    with pytest.raises(ValueError, match=match):
        images.inspect_image(data, "x.jpg")


@pytest.mark.reliability("bad_input")
@pytest.mark.parametrize("fmt", ["PNG", "GIF", "BMP", "JPEG"])
def test_decompression_bomb_is_refused_from_its_header(fmt):
    width, height = (20_000, 20_000) if fmt != "GIF" else (65_000, 65_000)
    if fmt in ("BMP", "JPEG"):  # write only a header: the body would be gigabytes
        data = _bomb_header(fmt, width, height)
    else:
        data = (
            encode(fmt, "L", (width, height)) if fmt == "PNG" else _bomb_header(fmt, width, height)
        )
    with pytest.raises(ValueError, match="over the limit of 50,000,000"):
        images.inspect_image(data, "bomb")
    dims = tf.function(images.header_dimensions)(tf.constant(data)).numpy()
    assert list(dims) == [height, width]
    if fmt == "BMP":  # 8 bits per pixel without the grey palette: refused once not a bomb
        with pytest.raises(ValueError, match="8-bit palette BMP"):
            images.inspect_image(data, "bomb", max_pixels=width * height + 1)
    else:
        assert images.inspect_image(data, "bomb", max_pixels=width * height + 1).width == width


def _bomb_header(fmt: str, width: int, height: int) -> bytes:
    import struct

    if fmt == "GIF":
        return b"GIF89a" + struct.pack("<HH", width, height) + b"\x00\x00\x00" + b";"
    if fmt == "BMP":
        header = struct.pack("<2sIHHI", b"BM", 0, 0, 0, 54)
        dib = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, 0, 0, 0, 0, 0)
        return header + dib  # RLE-compressed: size not checkable, dimensions are
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return (
        b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
        + sof
        + (b"\xff\xda\x00\x08\x01\x01\x00\x00?\x00\x00\xff\xd9")
    )


def test_inspect_file_reads_only_start_and_end(tmp_path):
    big = encode("PNG", "RGB", (3000, 3000))
    noise = Image.fromarray(RNG.integers(0, 256, (700, 700, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    noise.save(buffer, "PNG")
    data = buffer.getvalue()
    assert len(data) > 300_000  # more than the head inspect_file reads
    path = tmp_path / "noise.png"
    path.write_bytes(data)
    assert images.inspect_file(path).width == 700
    path.write_bytes(data[:-20])  # lost its IEND chunk
    with pytest.raises(ValueError, match="truncated"):
        images.inspect_file(path)
    (tmp_path / "big.png").write_bytes(big)
    assert images.inspect_file(tmp_path / "big.png").height == 3000


def test_check_image_files_error_or_skip(tmp_path):
    good = tmp_path / "good.png"
    good.write_bytes(encode("PNG"))
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.png.*is empty.*bad_images='skip'"):
        images.check_image_files([str(good), str(empty)])
    kept, bad = images.check_image_files([str(good), str(empty)], "skip")
    assert kept == [str(good)] and [p for p, _ in bad] == [str(empty)]


def test_load_image_files_converts_alpha_and_channels(tmp_path):
    rgba = tmp_path / "a.png"
    Image.fromarray(np.dstack([RGB, np.full((20, 30), 128, np.uint8)])).save(rgba)
    (image,) = images.load_image_files([rgba])
    np.testing.assert_array_equal(image, RGB)  # alpha dropped
    (gray,) = images.load_image_files([rgba], channels=1)
    expected = tf.image.rgb_to_grayscale(RGB).numpy()
    np.testing.assert_array_equal(gray, expected)
    with pytest.raises(ValueError, match="channels"):
        images.load_image_files([rgba], channels=2)


def _bmp(mode: str, colours: int | None = None) -> bytes:
    image = Image.fromarray(RGB)
    if colours:
        image = image.quantize(colours)
    buffer = io.BytesIO()
    image.convert(mode).save(buffer, "BMP") if not colours else image.save(buffer, "BMP")
    return buffer.getvalue()


@pytest.mark.reliability("silent wrong answer")
def test_palette_bmps_are_refused_where_tensorflow_would_decode_their_indices():
    palette, one_bit = _bmp("P", colours=64), _bmp("1")
    grey, colour = _bmp("L"), _bmp("RGB")
    for data, bits in ((palette, 8), (one_bit, 1)):
        with pytest.raises(ValueError, match=rf"is a {bits}-bit palette BMP.*save it as PNG"):
            images.inspect_image(data, "shirt.bmp")
    # Pillow's grey BMPs are 8-bit with the grey palette: the indices are the pixels.
    np.testing.assert_array_equal(
        images.decode_image(grey, 1)[..., 0], np.asarray(Image.fromarray(RGB).convert("L"))
    )
    check = tf.function(images.is_palette_bmp)
    assert [bool(check(tf.constant(d))) for d in (palette, one_bit, grey, colour)] == [
        True,
        True,
        False,
        False,
    ]
    assert not bool(check(tf.constant(encode("PNG"))))
