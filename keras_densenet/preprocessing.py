"""ImageNet preprocessing of pretrained DenseNets (keras.applications, torchvision, timm).

All three publish DenseNets trained on images scaled to 0..1 and normalized
with ImageNet's per-channel mean and standard deviation ("torch" mode), after
torchvision's evaluation transform: resize the shorter side to 256, then
take the central 224 x 224 crop. Either normalize the pixels yourself with
`preprocess_input`, or build the model to do it (``build_densenet(...,
normalization="imagenet")``), so that it takes raw 0..255 pixels like the
models this package trains, and its exports do too.

Published top-1 accuracy (single 224 crop) of the weights each preset loads:

| preset | keras.applications | torchvision | timm |
|---|---|---|---|
| ``densenet121`` | 75.0% | 74.43% | 75.57% (``densenet121.ra_in1k``) |
| ``densenet161`` | - | 77.14% | - |
| ``densenet169`` | 76.2% | 75.60% | - |
| ``densenet201`` | 77.3% | 76.90% | - |
"""

from __future__ import annotations

from typing import Any

import numpy as np

from keras_densenet._validation import check_choice, check_positive_int

#: ImageNet's per-channel mean and standard deviation, 0..1 scale (RGB).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MODES = ("torch",)


def imagenet_normalization() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` in the 0..255 scale, for ``build_densenet(normalization=...)``."""
    return tuple(255.0 * m for m in IMAGENET_MEAN), tuple(255.0 * s for s in IMAGENET_STD)


def preprocess_input(images: Any, mode: str = "torch") -> np.ndarray:
    """Normalizes raw RGB pixels (0..255) as the pretrained DenseNets expect.

    The same as ``keras.applications.densenet.preprocess_input``: scale to
    0..1, subtract ImageNet's mean and divide by its standard deviation.

    Args:
        images: Pixels, ``(..., 3)`` channels last, 0..255.
        mode: ``"torch"`` (the only mode DenseNet weights use).

    Returns:
        float32 normalized images.

    Raises:
        ValueError: For another mode, or images without 3 channels.
    """
    check_choice("mode", mode, MODES)
    array = np.asarray(images, dtype=np.float32)
    if array.shape[-1:] != (3,):
        raise ValueError(f"`images` must be RGB (..., 3), got shape {array.shape}.")
    mean, std = imagenet_normalization()
    return (array - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def resize_and_center_crop(images: Any, resize: int = 256, crop: int = 224) -> np.ndarray:
    """torchvision's evaluation transform: shorter side to ``resize``, central ``crop``.

    Bilinear with antialiasing, as torchvision resizes PIL images and tensors.

    Args:
        images: One image ``(H, W, C)`` or a batch ``(N, H, W, C)``, any dtype.
        resize: The shorter side after resizing.
        crop: The side of the central square kept.

    Returns:
        float32 images ``(..., crop, crop, C)``.

    Raises:
        ValueError: If ``crop`` exceeds ``resize`` or the shape is not an image.
    """
    import tensorflow as tf

    check_positive_int("resize", resize, 16_384)
    check_positive_int("crop", crop, resize)
    array = np.asarray(images, dtype=np.float32)
    single = array.ndim == 3
    if single:
        array = array[None]
    if array.ndim != 4:
        raise ValueError(f"`images` must be (H, W, C) or (N, H, W, C), got {array.shape}.")
    height, width = array.shape[1:3]
    scale = resize / min(height, width)
    size = (max(resize, round(height * scale)), max(resize, round(width * scale)))
    resized = tf.image.resize(array, size, method="bilinear", antialias=True).numpy()
    top, left = (size[0] - crop) // 2, (size[1] - crop) // 2
    out = resized[:, top : top + crop, left : left + crop]
    return out[0] if single else out


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "imagenet_normalization",
    "preprocess_input",
    "resize_and_center_crop",
]
