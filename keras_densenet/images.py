"""Image files: checked from their bytes before anything decodes them.

`inspect_image` reads the format, size and channels from a file's header and
checks that the file is complete (its format's end marker is there), without
decoding it. So an empty file, a text file named ``.jpg``, a truncated JPEG
or PNG, or a small file that would decode to gigabytes (a decompression bomb)
is refused with a message naming the file, before a decoder allocates
anything or prints to stderr. `decode_image` then decodes to the file's own
channels and converts to the channels a model takes (GIF and BMP included).

Formats: JPEG, PNG, GIF (first frame) and BMP, the ones TensorFlow decodes.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from keras_densenet._validation import check_positive_int

#: File name endings of the formats read here.
EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
FORMATS = ("jpeg", "png", "gif", "bmp")
#: Default limit on width x height: 50 megapixels (a 20000 x 20000 PNG of a
#: few hundred KB would decode to 1.2 GB).
MAX_PIXELS = 50_000_000

_MAGIC = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
)
# PNG colour type -> channels (palette images decode to RGB, or RGBA with tRNS).
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}
# JPEG start-of-frame markers (SOF0..SOF15 but DHT, JPG and DAC).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    """What a file's header says.

    Attributes:
        format: One of `FORMATS`.
        width: Width in pixels.
        height: Height in pixels.
        channels: Channels a decoder returns for it (1 gray, 2 gray + alpha,
            3 RGB, 4 RGBA).
    """

    format: str
    width: int
    height: int
    channels: int


def image_format(data: bytes) -> str | None:
    """The format of encoded image bytes from their magic number, or None."""
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    return None


def _jpeg_info(data: bytes) -> tuple[int, int, int] | None:
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            position += 2
            continue
        (length,) = struct.unpack(">H", data[position + 2 : position + 4])
        if marker in _SOF and position + 10 <= len(data):
            height, width = struct.unpack(">HH", data[position + 5 : position + 9])
            return width, height, data[position + 9]
        if marker == 0xDA or length < 2:  # scan data without a frame header
            return None
        position += 2 + length
    return None


#: Bytes of a file's start and end read by `inspect_file`.
_HEAD_BYTES = 256 * 1024
_TAIL_BYTES = 1024


def _complete(data: bytes, fmt: str, tail: bytes | None = None) -> bool:
    """Whether the format's end marker is where it must be.

    With ``tail`` (the file's last bytes, when only its start was read) the
    end marker is looked for there.
    """
    if tail is not None:
        end = tail.rstrip(b"\x00\r\n\t ")
        return {
            "jpeg": b"\xff\xd9" in end[-64:],
            "png": b"IEND" in tail[-64:] and len(tail) >= tail.rfind(b"IEND") + 8,
            "gif": end[-1:] == b";",
        }.get(fmt, True)
    if fmt == "jpeg":
        # The end-of-image marker must follow the last start-of-scan (0xFFDA
        # cannot occur inside entropy-coded data, and an embedded thumbnail
        # ends before the main image's scans start).
        last_scan = data.rfind(b"\xff\xda")
        return last_scan > 0 and data.find(b"\xff\xd9", last_scan) > 0
    if fmt == "png":  # the IEND chunk, with its 4-byte CRC
        end = data.rfind(b"IEND")
        return end > 8 and len(data) >= end + 8
    if fmt == "gif":
        return data.rstrip(b"\x00")[-1:] == b";"
    return True  # BMP: checked against its pixel array size in _bmp_info


#: TensorFlow decodes a BMP of 8 bits per pixel or fewer as its palette indices
#: (a 64-colour trouser became a grey smear the model called a pullover), or not at
#: all; only an 8-bit BMP whose palette is the grey levels themselves decodes right.
_PALETTE_BMP = (
    "is a {bits}-bit palette BMP, which TensorFlow decodes as palette indices, not colours: "
    "save it as PNG (or as a 24-bit BMP)"
)
#: BMP's bits per pixel, little-endian at this offset (BITMAPINFOHEADER and later).
BMP_BITS_OFFSET = 28


def _grey_palette(data: bytes, header_size: int) -> bool:
    """Whether an 8-bit BMP's palette maps each index to the grey of that level.

    Then the indices TensorFlow decodes are the pixels (Pillow writes mode
    ``L`` images so).
    """
    if header_size < 40 or len(data) < 50:
        return False
    used = struct.unpack("<I", data[46:50])[0] or 256
    start = 14 + header_size
    palette = np.frombuffer(data[start : start + 4 * used], np.uint8)
    if used > 256 or palette.size != 4 * used:
        return False
    bgr = palette.reshape(used, 4)[:, :3]
    return bool(np.array_equal(bgr, np.repeat(np.arange(used, dtype=np.uint8)[:, None], 3, 1)))


def _bmp_info(data: bytes, size: int | None = None) -> tuple[int, int, int, bool] | None:
    size = len(data) if size is None else size
    if len(data) < 30:
        return None
    offset, header_size = struct.unpack("<II", data[10:18])
    if header_size < 12:
        return None
    if header_size == 12:  # OS/2 BITMAPCOREHEADER
        width, height, _, bits = struct.unpack("<HhHH", data[18:26])
        compression = 0
    else:
        width, height, _, bits, compression = struct.unpack("<iiHHI", data[18:34])
    height = abs(height)
    channels = {32: 4, 8: 1}.get(bits, 3)
    if bits < 24 and not (bits == 8 and _grey_palette(data, header_size)):
        channels = -bits  # a palette TensorFlow would decode as indices: refused by the caller
    complete = True
    if compression == 0 and width > 0 and bits:
        stride = ((bits * width + 31) // 32) * 4
        complete = offset + stride * height <= size
    return width, height, channels, complete


def inspect_image(
    data: bytes,
    what: str = "image",
    max_pixels: int = MAX_PIXELS,
    *,
    tail: bytes | None = None,
    size: int | None = None,
) -> ImageInfo:
    """Reads an encoded image's header and checks it, without decoding it.

    Args:
        data: The file's bytes (or its first bytes, with ``tail`` and ``size``).
        what: How to name the image in messages (e.g. its path).
        max_pixels: Largest ``width x height`` accepted.
        tail: The file's last bytes when ``data`` is only its start.
        size: The file's size when ``data`` is only its start.

    Returns:
        The `ImageInfo`.

    Raises:
        ValueError: Naming ``what``, if the bytes are empty, not a JPEG, PNG,
            GIF or BMP image, truncated, of zero size, or larger than
            ``max_pixels``.
    """
    if not data:
        raise ValueError(f"{what} is empty (0 bytes).")
    fmt = image_format(data)
    if fmt is None:
        raise ValueError(
            f"{what} is not a JPEG, PNG, GIF or BMP image (its first bytes are {data[:8]!r})."
        )
    dims: tuple[int, int, int] | None = None
    complete = _complete(data, fmt, tail)
    if fmt == "jpeg":
        dims = _jpeg_info(data)
    elif fmt == "png" and len(data) >= 26 and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        dims = (width, height, _PNG_CHANNELS.get(data[25], 3))
    elif fmt == "gif" and len(data) >= 10:
        width, height = struct.unpack("<HH", data[6:10])
        dims = (width, height, 3)
    elif fmt == "bmp":
        bmp = _bmp_info(data, size)
        if bmp is not None:
            dims, complete = bmp[:3], bmp[3]
    if dims is None or not complete:
        raise ValueError(
            f"{what} is a truncated or corrupted {fmt.upper()} file "
            f"({size if size is not None else len(data)} bytes): its header or its end is missing."
        )
    width, height, channels = dims
    if width < 1 or height < 1:
        raise ValueError(f"{what} has no pixels ({width} x {height}).")
    if width * height > max_pixels:
        raise ValueError(
            f"{what} is {width} x {height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,} (`max_image_pixels`); resize it first."
        )
    if channels < 0:
        raise ValueError(f"{what} {_PALETTE_BMP.format(bits=-channels)}.")
    return ImageInfo(fmt, width, height, channels)


def read_image_file(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> bytes:
    """Reads an image file and checks it with `inspect_image`.

    Args:
        path: The file.
        max_pixels: Largest ``width x height`` accepted.

    Returns:
        The file's bytes.

    Raises:
        ValueError: Naming the file, if it is missing, unreadable or fails
            `inspect_image`.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"Image file not found: {path!r}.")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise ValueError(f"Cannot read image file {path!r}: {err.strerror or err}.") from err
    inspect_image(data, f"Image file {path!r}", max_pixels)
    return data


def inspect_file(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> ImageInfo:
    """`inspect_image` of a file, reading only its start and end.

    Cheap enough to run over every file of an image folder before training.

    Args:
        path: The file.
        max_pixels: Largest ``width x height`` accepted.

    Returns:
        The `ImageInfo`.

    Raises:
        ValueError: Naming the file, as `inspect_image`, or if it cannot be read.
    """
    path = os.fspath(path)
    what = f"Image file {path!r}"
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(_HEAD_BYTES)
            if size <= _HEAD_BYTES:
                return inspect_image(head, what, max_pixels)
            f.seek(size - _TAIL_BYTES)
            tail = f.read()
    except OSError as err:
        raise ValueError(f"Cannot read image file {path!r}: {err.strerror or err}.") from err
    return inspect_image(head, what, max_pixels, tail=tail, size=size)


def convert_channels(image: np.ndarray, channels: int | None) -> np.ndarray:
    """Converts a decoded uint8 ``(height, width, C)`` image to 1 or 3 channels.

    Alpha is dropped; RGB becomes gray with TensorFlow's weights (as training
    converts); gray becomes RGB by repetition. ``channels=None`` only drops
    alpha.

    Args:
        image: The decoded image with 1, 2, 3 or 4 channels.
        channels: 1, 3 or None.

    Returns:
        The converted image.
    """
    have = image.shape[-1]
    if have in (2, 4):  # gray + alpha, RGBA
        image = image[..., : have - 1]
        have -= 1
    if channels is None or channels == have:
        return image
    if channels == 3:
        return np.repeat(image, 3, axis=-1)
    import tensorflow as tf

    return tf.image.rgb_to_grayscale(image).numpy()


def decode_image(
    data: bytes,
    channels: int | None = None,
    what: str = "image",
    max_pixels: int = MAX_PIXELS,
) -> np.ndarray:
    """Decodes JPEG, PNG, GIF (first frame) or BMP bytes to a uint8 array.

    The bytes are checked with `inspect_image` first; then decoded to the
    file's own channels and converted with `convert_channels`.

    Args:
        data: The encoded image.
        channels: 1 or 3 to convert to, None to keep the file's (minus alpha).
        what: How to name the image in messages.
        max_pixels: Largest ``width x height`` accepted.

    Returns:
        A uint8 array ``(height, width, channels)``.

    Raises:
        ValueError: Naming ``what``, if the bytes fail `inspect_image` or do
            not decode.
    """
    if channels not in (None, 1, 3):
        raise ValueError(f"`channels` must be None, 1 or 3, got {channels!r}.")
    inspect_image(data, what, max_pixels)
    import tensorflow as tf

    try:
        image = tf.io.decode_image(data, channels=0, expand_animations=False).numpy()
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as err:
        raise ValueError(f"Could not decode {what}: {err.message}") from err
    return convert_channels(image, channels)


def load_image_files(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    channels: int | None = None,
    max_pixels: int = MAX_PIXELS,
) -> list[np.ndarray]:
    """Reads JPEG/PNG/GIF/BMP files as uint8 arrays.

    Args:
        paths: Image file paths (or one path).
        channels: 1 or 3 to convert every image to, or None to keep each
            file's own channels (minus alpha).
        max_pixels: Largest ``width x height`` accepted.

    Returns:
        One uint8 array ``(height, width, channels)`` per file; sizes may differ.

    Raises:
        ValueError: Naming the file, if it is missing, not an image,
            truncated or too large, or if ``channels`` is not None, 1 or 3.

    Example:
        >>> [image.shape for image in load_image_files(["a.png"], channels=3)]
        [(28, 28, 3)]
    """
    check_positive_int("max_pixels", max_pixels, 2**62)
    if channels not in (None, 1, 3):
        raise ValueError(f"`channels` must be None, 1 or 3, got {channels!r}.")
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    return [
        decode_image(read_image_file(p, max_pixels), channels, repr(os.fspath(p)), max_pixels)
        for p in paths
    ]


def check_image_files(
    paths: Iterable[str], bad_images: str = "error", max_pixels: int = MAX_PIXELS
) -> tuple[list[str], list[tuple[str, str]]]:
    """Checks image files from their headers; returns the good ones and the bad.

    Args:
        paths: The files.
        bad_images: ``"error"`` raises at the first bad file; ``"skip"``
            returns the bad ones with their reasons.
        max_pixels: Largest ``width x height`` accepted.

    Returns:
        ``(good, bad)``: the paths that pass, and ``(path, reason)`` pairs.

    Raises:
        ValueError: With ``bad_images="error"``, naming the first bad file and
            how to skip such files.
    """
    good: list[str] = []
    bad: list[tuple[str, str]] = []
    for path in paths:
        try:
            inspect_file(path, max_pixels)
        except ValueError as err:
            if bad_images == "error":
                raise ValueError(
                    f"{err} Remove or replace it, or skip such files with `bad_images='skip'`."
                ) from None
            bad.append((path, str(err)))
        else:
            good.append(path)
    return good, bad


def header_dimensions(data: Any) -> Any:
    """In-graph ``[height, width]`` (int64) of encoded image bytes, from the header.

    For a ``tf.string`` scalar holding a JPEG, PNG, GIF or BMP file; ``[0, 0]``
    for anything else. Used by exported serving signatures to refuse
    oversized images before decoding them.

    Args:
        data: A scalar ``tf.string`` tensor.

    Returns:
        An int64 tensor ``[height, width]``.
    """
    import tensorflow as tf

    def field(start: int, length: int, little_endian: bool) -> Any:
        raw = tf.io.decode_raw(
            tf.strings.substr(data, start, length), tf.uint8, little_endian=little_endian
        )
        raw = tf.cast(raw, tf.int64)
        order = (
            tf.range(length, dtype=tf.int64)
            if little_endian
            else tf.range(length - 1, -1, -1, dtype=tf.int64)
        )
        return tf.reduce_sum(raw * tf.bitwise.left_shift(tf.constant(1, tf.int64), 8 * order))

    padded = data + tf.constant(b"\x00" * 32)  # short inputs read as zeros, not errors
    data = padded

    def png() -> Any:
        return tf.stack([field(20, 4, False), field(16, 4, False)])

    def gif() -> Any:
        return tf.stack([field(8, 2, True), field(6, 2, True)])

    def bmp() -> Any:
        height = field(22, 4, True)
        height = tf.where(height >= 2**31, 2**32 - height, height)  # top-down BMPs
        return tf.stack([height, field(18, 4, True)])

    def jpeg() -> Any:
        return tf.cast(tf.io.extract_jpeg_shape(padded)[:2], tf.int64)

    head = tf.strings.substr(data, 0, 8)
    return tf.case(
        [
            (tf.equal(tf.strings.substr(head, 0, 3), b"\xff\xd8\xff"), jpeg),
            (tf.equal(head, b"\x89PNG\r\n\x1a\n"), png),
            (tf.equal(tf.strings.substr(head, 0, 3), b"GIF"), gif),
            (tf.equal(tf.strings.substr(head, 0, 2), b"BM"), bmp),
        ],
        default=lambda: tf.zeros([2], tf.int64),
    )


def is_palette_bmp(data: Any) -> Any:
    """In-graph: whether encoded image bytes are a BMP TensorFlow decodes wrong.

    A BMP of 8 bits per pixel or fewer, unless it is 8-bit with the grey
    palette (index i is grey level i), whose indices are its pixels.

    Args:
        data: A scalar ``tf.string`` tensor.

    Returns:
        A boolean scalar tensor.
    """
    import tensorflow as tf

    padded = data + tf.constant(b"\x00" * 1100)  # a full palette reads as zeros, not errors

    def number(start: int, dtype: Any) -> Any:
        width = tf.dtypes.as_dtype(dtype).size
        return tf.cast(
            tf.io.decode_raw(tf.strings.substr(padded, start, width), dtype)[0], tf.int32
        )

    bits = number(BMP_BITS_OFFSET, tf.uint16)
    used = number(46, tf.int32)
    used = tf.where(tf.logical_or(used <= 0, used > 256), 256, used)
    # Past the end a substr fails: a damaged (or not a BMP) header reads zeros instead.
    start = tf.clip_by_value(14 + number(14, tf.int32), 0, tf.strings.length(padded) - 4 * 256)
    palette = tf.io.decode_raw(tf.strings.substr(padded, start, 4 * 256), tf.uint8)
    palette = tf.reshape(palette[: 4 * 256], [256, 4])[:, :3]
    levels = tf.range(256, dtype=tf.int32)[:, None]
    matches = tf.reduce_all(tf.equal(tf.cast(palette, tf.int32), levels), axis=1)
    grey = tf.reduce_all(tf.logical_or(matches, levels[:, 0] >= used))
    is_bmp = tf.equal(tf.strings.substr(padded, 0, 2), b"BM")
    readable = tf.logical_or(bits >= 24, tf.logical_and(tf.equal(bits, 8), grey))
    return tf.logical_and(is_bmp, tf.logical_not(readable))


__all__ = [
    "EXTENSIONS",
    "FORMATS",
    "MAX_PIXELS",
    "ImageInfo",
    "check_image_files",
    "convert_channels",
    "decode_image",
    "header_dimensions",
    "image_format",
    "inspect_file",
    "inspect_image",
    "is_palette_bmp",
    "load_image_files",
    "read_image_file",
]
