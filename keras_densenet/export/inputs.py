"""Images going into an exported model: validated, batched and resized.

`image_list` turns anything `predict` accepts (arrays, lists of arrays, image
file paths) into validated uint8 ``(height, width, channels)`` images;
`serving_pixels` and `decode_for_serving` are the in-graph versions the
SavedModel signatures run, with the same pixel limit as the Python side.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from keras_densenet import images as image_files

#: Images per batch when predicting.
PREDICT_BATCH = 64


def to_uint8(image: Any, what: str) -> np.ndarray:
    """Raw pixels as uint8, refusing values that are not whole numbers in 0..255.

    Raises:
        ValueError: Naming ``what``, for non-numeric arrays or values outside 0..255.
    """
    array = np.asarray(image)
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{what} must be a numeric pixel array, got dtype {array.dtype}.")
    if array.size and (
        not np.all(np.isfinite(array))
        or array.min() < 0
        or array.max() > 255
        or np.any(array != np.round(array))
    ):
        raise ValueError(
            f"{what} must hold raw pixel values, whole numbers in 0..255, got values in "
            f"[{array.min()}, {array.max()}] ({array.dtype})."
        )
    return array.astype(np.uint8)


def _items(images: Any) -> list[Any]:
    if isinstance(images, (str, os.PathLike)):
        return [images]
    if isinstance(images, np.ndarray) or tf.is_tensor(images):
        array = np.asarray(images)
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4:
            hint = (
                "; add a channel axis to grayscale images: images[..., None]."
                if array.ndim in (2, 3)
                else "."
            )
            raise ValueError(
                f"`images` must be one image (height, width, channels) or a batch "
                f"(batch, height, width, channels), got shape {array.shape}{hint}"
            )
        return list(array)
    if isinstance(images, Sequence) and not isinstance(images, (bytes, bytearray)):
        return list(images)
    raise ValueError(
        f"`images` must be an array, a list of arrays or a list of image file paths, "
        f"got {type(images).__name__}."
    )


def image_list(
    images: Any, channels: int | None, max_pixels: int = image_files.MAX_PIXELS
) -> list[np.ndarray]:
    """Validated uint8 ``(height, width, channels)`` images from any accepted input.

    Args:
        images: An array ``(batch, H, W, C)`` or ``(H, W, C)``, a list of such
            arrays (sizes may differ), or image file paths.
        channels: The channels the model takes (files are converted to it),
            or None to accept any.
        max_pixels: Largest ``width x height`` accepted.

    Returns:
        The images.

    Raises:
        ValueError: Naming the image or file, for a bad shape, value, channel
            count, file, or an image over ``max_pixels``.
    """
    items = _items(images)
    if not items:
        raise ValueError("`images` is empty.")
    result = []
    for i, item in enumerate(items):
        if isinstance(item, (str, os.PathLike)):
            result += image_files.load_image_files([item], channels, max_pixels)
            continue
        what = f"`images[{i}]`"
        image = to_uint8(item, what)
        if image.ndim != 3:
            hint = "; add a channel axis to grayscale images: image[..., None]" * (image.ndim == 2)
            raise ValueError(
                f"{what} must be (height, width, channels), got shape {image.shape}{hint}."
            )
        if min(image.shape[:2]) < 1:
            raise ValueError(f"{what} is empty: shape {image.shape}.")
        if image.shape[0] * image.shape[1] > max_pixels:
            raise ValueError(
                f"{what} has {image.shape[0] * image.shape[1]:,} pixels, over the limit of "
                f"{max_pixels:,} (`max_image_pixels`)."
            )
        if channels is not None and image.shape[-1] != channels:
            hint = (
                "; for grayscale images of shape (batch, height, width) add a channel axis: "
                "images[..., None]"
            ) * (image.shape[-1] > 4)
            raise ValueError(
                f"{what} has {image.shape[-1]} channels (shape {image.shape}) but the model "
                f"takes {channels}{hint}."
            )
        result.append(image)
    return result


#: The most pixels (height x width, summed over a batch) `stream_batches` puts in one
#: batch of images at their own size: 16 megapixels, one 12-megapixel photo a batch.
BATCH_PIXELS = 16_000_000


def check_items(images: Any, max_pixels: int = image_files.MAX_PIXELS) -> list[Any]:
    """The items of ``images`` (`image_list`'s input), files checked from their headers.

    Every file is read only as far as its header and end (no decoding), so a
    bad file among many is refused before any work.

    Raises:
        ValueError: For an empty input or a file that is not a readable image.
    """
    items = _items(images)
    if not items:
        raise ValueError("`images` is empty.")
    for item in items:
        if isinstance(item, (str, os.PathLike)):
            image_files.inspect_file(item, max_pixels)
    return items


def stream_batches(
    items: Sequence[Any],
    channels: int | None,
    max_pixels: int = image_files.MAX_PIXELS,
    size: tuple[int, int] | None = None,
) -> Iterator[tuple[list[int], Any]]:
    """Decodes images one at a time and yields them in batches of bounded memory.

    With ``size``, each image is resized to it as soon as it is decoded, so
    only one image is ever held at its own size; without it, consecutive
    images of one shape share a batch of at most `PREDICT_BATCH` images and
    `BATCH_PIXELS` pixels. Memory does not grow with the number of images.

    Args:
        items: What `check_items` returned.
        channels: The channels the model takes (files are converted to it).
        max_pixels: Largest ``width x height`` accepted.
        size: ``(height, width)`` to resize to, or None to keep each size.

    Yields:
        ``(indices, batch)``: float32 ``[n, height, width, channels]`` with
        ``size``, else uint8 images of one shape.
    """
    indices: list[int] = []
    pending: list[Any] = []
    pixels = 0
    for index, item in enumerate(items):
        (image,) = image_list([item], channels, max_pixels)
        if size is not None:
            image = resize(image[None], *size)[0]
        area = int(image.shape[0]) * int(image.shape[1])
        full = len(pending) == PREDICT_BATCH or (size is None and pixels + area > BATCH_PIXELS)
        if pending and (full or tuple(image.shape) != tuple(pending[0].shape)):
            yield indices, np.stack(pending)
            indices, pending, pixels = [], [], 0
        indices.append(index)
        pending.append(np.asarray(image))
        pixels += area
    if pending:
        yield indices, np.stack(pending)


def same_size_batches(images: list[np.ndarray]) -> Iterator[tuple[list[int], np.ndarray]]:
    """Groups images by shape into stacked batches of at most `PREDICT_BATCH`.

    Yields:
        ``(indices, batch)`` pairs.
    """
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        by_shape.setdefault(image.shape, []).append(i)
    for indices in by_shape.values():
        for start in range(0, len(indices), PREDICT_BATCH):
            chunk = indices[start : start + PREDICT_BATCH]
            yield chunk, np.stack([images[i] for i in chunk])


def resize(images: Any, height: int, width: int) -> tf.Tensor:
    """Raw pixels (any numeric dtype) -> float32 at the model's size.

    Bilinear resizing with half-pixel centres is exact when the size already
    matches, so inputs of the right size reach the model unchanged.
    """
    images = tf.cast(images, tf.float32)
    return tf.image.resize(images, (height, width), method="bilinear")


def _to_channels(image: tf.Tensor, channels: int) -> tf.Tensor:
    """In-graph: a decoded image with 1-4 channels -> ``channels`` (1 or 3)."""
    have = tf.shape(image)[-1]
    # Drop alpha: 2 -> 1 (gray + alpha), 4 -> 3 (RGBA).
    image = tf.cond(
        tf.logical_or(tf.equal(have, 2), tf.equal(have, 4)),
        lambda: image[..., : have - 1],
        lambda: image,
    )
    gray = tf.equal(tf.shape(image)[-1], 1)
    if channels == 1:
        return tf.cond(
            gray,
            lambda: image,
            lambda: tf.cast(
                tf.round(tf.image.rgb_to_grayscale(tf.cast(image, tf.float32))), tf.uint8
            ),
        )
    return tf.cond(gray, lambda: tf.image.grayscale_to_rgb(image), lambda: image)


def decode_for_serving(
    data: tf.Tensor, channels: int, height: int, width: int, max_pixels: int
) -> tf.Tensor:
    """In-graph: one encoded image -> float32 ``[height, width, channels]``.

    The header's size is checked against ``max_pixels`` before decoding, so
    a decompression bomb is refused without allocating its pixels; the image
    is decoded to its own channels (GIF and BMP included) and converted.
    """
    dims = image_files.header_dimensions(data)
    check = tf.debugging.assert_less_equal(
        dims[0] * dims[1],
        tf.constant(max_pixels, tf.int64),
        message=f"an image in `image_bytes` is over the limit of {max_pixels} pixels "
        "(`max_image_pixels`)",
    )
    palette = tf.debugging.assert_equal(
        image_files.is_palette_bmp(data),
        False,
        message="an image in `image_bytes` is a palette BMP (8 bits per pixel or fewer), "
        "which TensorFlow decodes as palette indices: send PNG or a 24-bit BMP",
    )
    with tf.control_dependencies([check, palette]):
        image = tf.io.decode_image(data, channels=0, dtype=tf.uint8, expand_animations=False)
    image = _to_channels(image, channels)
    image.set_shape([None, None, channels])
    return resize(image[None], height, width)[0]


def batch_checks(images: tf.Tensor, channels: int, max_pixels: int) -> list[tf.Operation]:
    """In-graph checks of a uint8 image batch, with errors that say what is wrong.

    Signatures do not enforce their declared shapes (TF Serving and
    ``tf.saved_model.load`` accept any shape of the right dtype), and a rank
    check is constant-folded away because the declared rank is 4, so the
    shape is padded with zeros: a rank-3 input shows up as 0 channels, a
    rank-5 one as a non-zero fifth dimension.
    """
    shape = tf.concat([tf.shape(images), tf.zeros([4], tf.int32)], axis=0)
    return [
        tf.debugging.assert_equal(
            shape[3:5],
            tf.constant([channels, 0]),
            message=f"`images` must be a batch of shape [N, height, width, {channels}]",
        ),
        tf.debugging.assert_positive(
            shape[:3], message="`images` must hold at least one image of at least 1x1 pixels"
        ),
        tf.debugging.assert_less_equal(
            tf.cast(shape[1], tf.int64) * tf.cast(shape[2], tf.int64),
            tf.constant(max_pixels, tf.int64),
            message=f"`images` are over the limit of {max_pixels} pixels each (`max_image_pixels`)",
        ),
    ]


__all__ = [
    "PREDICT_BATCH",
    "batch_checks",
    "check_items",
    "decode_for_serving",
    "image_list",
    "resize",
    "same_size_batches",
    "stream_batches",
    "to_uint8",
]
