"""Where the network looked: Grad-CAM heatmaps (Selvaraju et al., ICCV 2017).

`grad_cam` weighs a feature map's channels by the spatial mean of the class
score's gradient and keeps the positive part, one heatmap per image at the
input's resolution. The score is the class's logit (before the softmax or
sigmoid, as the paper asks), read from the classifier's own kernel and bias,
so multi-label models work the same way. On this package's models the
default feature map is ``relu``: the last dense block's features after the
final BatchNorm-ReLU, the map the classifier pools; there Grad-CAM is the
class activation map of CheXNet (Zhou et al., 2016). `overlay` blends a
heatmap onto its image for people.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from keras_densenet._validation import check_int

if TYPE_CHECKING:  # Keras is imported where a model is used: the CLI checks paths first
    import keras

#: The feature map explained by default (the classifier's input before pooling).
DEFAULT_LAYER = "relu"
#: `write_explanations` enlarges smaller pictures (nearest neighbour) to about this side.
MIN_PICTURE_SIDE = 224


def _feature_layer(model: keras.Model, layer: str | None) -> keras.layers.Layer:
    name = DEFAULT_LAYER if layer is None else layer
    if not isinstance(name, str):
        raise TypeError(f"`layer` must be a layer name or None, got {layer!r}.")
    try:
        found = model.get_layer(name)
    except ValueError:
        raise ValueError(
            f"`layer` {name!r} is not a layer of model {model.name!r}"
            + (" (pass the name of its last 4D feature map)" if layer is None else "")
            + "."
        ) from None
    if len(found.output.shape) != 4:
        raise ValueError(
            f"`layer` {name!r} has output shape {tuple(found.output.shape)}: Grad-CAM needs a 4D "
            "feature map (batch, height, width, channels)."
        )
    return found


def _scores_model(model: keras.Model, features: keras.layers.Layer) -> tuple[keras.Model, Any]:
    """A model giving the feature map and what the class scores are computed from.

    With a ``predictions`` Dense layer (this package's head), its input: the
    logits are then ``input @ kernel + bias``. Otherwise the model's output.
    """
    import keras

    try:
        head = model.get_layer("predictions")
    except ValueError:
        head = None
    if isinstance(head, keras.layers.Dense):
        return keras.Model(model.inputs, [features.output, head.input]), head
    return keras.Model(model.inputs, [features.output, model.output]), None


def grad_cam(
    model: keras.Model,
    images: Any,
    class_index: int | Sequence[int] | None = None,
    *,
    layer: str | None = None,
) -> np.ndarray:
    """Grad-CAM heatmaps: where each image's class score comes from.

    Args:
        model: An image classifier (softmax or sigmoid outputs), e.g. from
            `build_densenet` or a run's ``best.keras``.
        images: A batch ``(N, H, W, C)`` (or one image ``(H, W, C)``) of what
            the model takes: raw 0..255 pixels for the models this package
            trains.
        class_index: The class (label) to explain: one index for every image,
            one per image, or None for each image's top class.
        layer: The feature map's layer name (default ``"relu"``, the last
            dense block's features after the final BatchNorm-ReLU).

    Returns:
        float32 heatmaps ``(N, H, W)`` at the input's resolution, each scaled
        to [0, 1] (all zeros where no location raises the score).

    Raises:
        ValueError: For images of another shape than the model takes, a class
            index out of range, or a layer that is not a 4D feature map.
        TypeError: For arguments of the wrong type.
    """
    import keras
    import tensorflow as tf

    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model, got {type(model).__name__}.")
    array = np.asarray(images, dtype=np.float32)
    if array.ndim == 3:
        array = array[None]
    want = tuple(model.input_shape[1:])
    if array.ndim != 4 or any(
        w is not None and w != g for w, g in zip(want, array.shape[1:], strict=True)
    ):
        raise ValueError(
            f"`images` must be a batch (N, H, W, C) of the model's input {want}, got shape "
            f"{array.shape}."
        )
    features_layer = _feature_layer(model, layer)
    scorer, head = _scores_model(model, features_layer)
    num_classes = int(model.output_shape[-1])
    if class_index is not None:
        indices = [class_index] * len(array) if np.ndim(class_index) == 0 else list(class_index)
        if len(indices) != len(array):
            raise ValueError(
                f"`class_index` must be one index or one per image ({len(array)}), got "
                f"{len(indices)}."
            )
        indices = [check_int("class_index", i, 0, num_classes - 1) for i in indices]
    x = tf.constant(array)
    with tf.GradientTape() as tape:
        features, last = scorer(x, training=False)
        tape.watch(features)
        if head is not None:
            logits = tf.matmul(tf.cast(last, head.kernel.dtype), head.kernel) + head.bias
        else:
            logits = tf.cast(last, tf.float32)
        if class_index is None:
            indices = tf.argmax(logits, axis=-1).numpy().tolist()
        score = tf.reduce_sum(logits * tf.one_hot(indices, num_classes, dtype=logits.dtype), -1)
    grads = tape.gradient(score, features)
    weights = tf.reduce_mean(tf.cast(grads, tf.float32), axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * tf.cast(features, tf.float32), axis=-1))
    cam = tf.image.resize(cam[..., None], array.shape[1:3], method="bilinear")[..., 0]
    peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
    cam = tf.math.divide_no_nan(cam, peak)
    return np.clip(cam.numpy(), 0.0, 1.0).astype(np.float32)


def overlay(image: Any, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """An RGB uint8 picture: the image in grey or colour with the heatmap over it.

    Args:
        image: ``(H, W, C)`` pixels, 0..255.
        heatmap: ``(H, W)`` values in [0, 1] (`grad_cam`'s).
        alpha: The heatmap's weight in the blend, in [0, 1].

    Returns:
        ``(H, W, 3)`` uint8.
    """
    from matplotlib import colormaps

    pixels = np.asarray(image, dtype=np.float32)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    colours = colormaps["jet"](np.clip(heatmap, 0.0, 1.0))[..., :3] * 255.0
    blended = (1.0 - alpha) * pixels[..., :3] + alpha * colours
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def explanation_paths(out_dir: str | os.PathLike, labels: Sequence[str]) -> list[str]:
    """Where `write_explanations` puts each image's overlay: ``<stem>_gradcam.png``.

    Args:
        out_dir: The output directory.
        labels: Each image's file path (or a name for an in-memory image).

    Returns:
        One path per image; a stem seen before gets ``_2``, ``_3``, ...
    """
    seen: dict[str, int] = {}
    paths = []
    for label in labels:
        stem = os.path.splitext(os.path.basename(os.fspath(label)))[0] or "image"
        seen[stem] = seen.get(stem, 0) + 1
        suffix = f"_{seen[stem]}" if seen[stem] > 1 else ""
        paths.append(os.path.join(os.fspath(out_dir), f"{stem}{suffix}_gradcam.png"))
    return paths


def check_explanation_paths(paths: Sequence[str], overwrite: bool) -> None:
    """Refuses to replace a file (or to write onto a directory) without ``overwrite``.

    Raises:
        ValueError: Naming the first path in the way.
    """
    for path in paths:
        if os.path.isdir(path):
            raise ValueError(f"Grad-CAM output {path!r} is a directory.")
        if os.path.lexists(path) and not overwrite:
            raise ValueError(
                f"Grad-CAM output {path!r} already exists: pass overwrite (--overwrite) to "
                "replace it, or choose another directory."
            )


def write_explanations(
    model: keras.Model,
    images: Any,
    paths: Sequence[str],
    *,
    overwrite: bool = False,
    max_image_pixels: int | None = None,
) -> list[str]:
    """Writes each image with its top class's Grad-CAM heatmap over it, as PNG.

    One image at a time, decoded only when its turn comes (memory does not
    grow with their number); each file is written to a temporary name, then
    renamed.

    Args:
        model: The classifier (a Keras model: a SavedModel has no gradients
            of its features to read).
        images: What `keras_densenet.export.predict` takes: uint8 images
            ``(H, W, C)`` of any size, or image file paths. Each is resized to
            the model's input as `predict` does, and the heatmap back to the
            image's size.
        paths: Where to write each (`explanation_paths`).
        overwrite: Replace existing files.
        max_image_pixels: Largest ``width x height`` accepted (default: the
            package's limit).

    Returns:
        The written paths.

    Raises:
        ValueError: If a path exists and ``overwrite`` is False (checked for
            every path before anything is written).
    """
    import io

    import tensorflow as tf
    from PIL import Image

    from keras_densenet import _io
    from keras_densenet import images as image_files
    from keras_densenet.export.inputs import check_items, image_list, resize

    check_explanation_paths(paths, overwrite)
    limit = image_files.MAX_PIXELS if max_image_pixels is None else max_image_pixels
    items = check_items(images, limit)
    if len(items) != len(paths):
        raise ValueError(f"{len(items)} images but {len(paths)} output paths.")
    height, width, channels = model.input_shape[1:4]
    written = []
    for item, path in zip(items, paths, strict=True):
        (pixels,) = image_list([item], channels, limit)
        heat = grad_cam(model, resize(pixels[None], height, width).numpy())[0]
        heat = tf.image.resize(heat[..., None], pixels.shape[:2], method="bilinear").numpy()
        picture = Image.fromarray(overlay(pixels, heat[..., 0]))
        scale = -(-MIN_PICTURE_SIDE // max(picture.size))  # small images enlarged for people
        if scale > 1:
            picture = picture.resize((picture.width * scale, picture.height * scale), 0)
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        written.append(_io.write_bytes(path, buffer.getvalue()))
    return written


__all__ = [
    "DEFAULT_LAYER",
    "check_explanation_paths",
    "explanation_paths",
    "grad_cam",
    "overlay",
    "write_explanations",
]
