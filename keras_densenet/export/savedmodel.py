"""TF Serving SavedModels: signatures, numbered versions, atomic publishing.

A SavedModel goes to ``<model_dir>/<version>/``, the layout TF Serving
watches, and loads with TensorFlow alone (``tf.saved_model.load``, TF Serving,
``saved_model_cli``): neither Keras nor this package is needed. Signatures:

- ``serving_default``: ``images`` uint8 ``[N, height, width, C]`` of any
  height and width, resized (bilinear) to the model's input size in the graph.
- ``serving_bytes``: ``image_bytes`` string ``[N]`` of encoded JPEG, PNG, GIF
  or BMP files, decoded to their own channels, converted to C and resized in
  the graph; an image whose header announces more than ``max_image_pixels``
  pixels is refused before it is decoded.
- Both return ``probabilities`` float32 ``[N, num_classes]`` and ``classes``
  int64 ``[N]`` (the top-1 class index), float32 even for mixed-precision
  models. A multi-label model returns ``probabilities`` (one sigmoid score
  per label) and ``predicted`` int64 ``[N, num_labels]`` instead of
  ``classes``: 1 where a label's score reaches its decision threshold.
- ``metadata``: no inputs; returns ``class_names`` string ``[num_classes]``,
  ``input_shape`` int64 ``[3]``, ``serving_dtype`` string and
  ``max_image_pixels`` int64; a multi-label model's also ``thresholds``
  float32 ``[num_labels]``.

The class names are also in ``<version>/assets.extra/class_names.txt``, one a
line, a multi-label model's thresholds in ``assets.extra/thresholds.json``
(label name -> threshold), and what was exported in
``<version>/assets.extra/export.json``, for tools that do not run TensorFlow.
"""

from __future__ import annotations

import errno
import json
import os
import time
import uuid
from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from keras_densenet import _io, rundir
from keras_densenet import images as image_files
from keras_densenet._validation import check_bool, check_int
from keras_densenet.export import folding
from keras_densenet.export.inputs import batch_checks, decode_for_serving, resize
from keras_densenet.export.model import (
    check_class_names,
    dtype_of,
    model_spec,
    resolve_model,
    with_serving_dtype,
)
from keras_densenet.export.versions import (
    TEMP_PREFIX,
    check_version,
    list_versions,
    remove,
    remove_stale_scratch,
    replace_dir,
    savedmodel_dir,
    scratch_name,
    taken_versions,
)

SERVING_DEFAULT = "serving_default"
SERVING_BYTES = "serving_bytes"
METADATA = "metadata"
IMAGES_INPUT = "images"
BYTES_INPUT = "image_bytes"
PROBABILITIES = "probabilities"
CLASSES = "classes"
PREDICTED = "predicted"
CLASS_NAMES_FILE = "class_names.txt"
THRESHOLDS_FILE = "thresholds.json"
EXPORT_INFO_FILE = "export.json"
REQUEST_FORMATS = ("instances", "inputs")


def _serving_outputs(
    model: keras.Model, pixels: tf.Tensor, thresholds: tf.Tensor | None = None
) -> dict[str, tf.Tensor]:
    # The classifier computes in float32 already; the cast guarantees the
    # documented output dtype for any model.
    probabilities = tf.cast(model(pixels, training=False), tf.float32)
    if thresholds is not None:
        return {
            PROBABILITIES: probabilities,
            PREDICTED: tf.cast(probabilities >= thresholds, tf.int64),
        }
    return {
        PROBABILITIES: probabilities,
        CLASSES: tf.argmax(probabilities, axis=-1, output_type=tf.int64),
    }


def build_archive(
    model: keras.Model,
    class_names: list[str],
    max_image_pixels: int = image_files.MAX_PIXELS,
    thresholds: Sequence[float] | None = None,
) -> keras.export.ExportArchive:
    """The ``ExportArchive`` with the three signatures (see the module docstring).

    Args:
        model: An image classifier (see `keras_densenet.export.model.model_spec`).
        class_names: One name per class.
        max_image_pixels: Largest ``height x width`` a request may send.
        thresholds: A multi-label model's decision thresholds, one per
            label; None for a single-label model.

    Returns:
        The archive, ready for ``write_out``.
    """
    height, width, channels, _ = model_spec(model)
    archive = keras.export.ExportArchive()
    archive.track(model)
    names = tf.Variable(class_names, dtype=tf.string, trainable=False, name="class_names")
    # A variable collection is restored by a plain tf.saved_model.load as
    # `loaded.class_names`, and the metadata signature serves it.
    archive.add_variable_collection("class_names", [names])
    serving_dtype = dtype_of(model)
    cuts = None if thresholds is None else tf.constant(list(thresholds), tf.float32)

    def serve_images(images: tf.Tensor) -> dict[str, tf.Tensor]:
        with tf.control_dependencies(batch_checks(images, channels, max_image_pixels)):
            pixels = resize(images, height, width)
        return _serving_outputs(model, pixels, cuts)

    def serve_bytes(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        shape = tf.concat([tf.shape(image_bytes), tf.zeros([2], tf.int32)], axis=0)
        check = tf.debugging.assert_equal(
            tf.logical_and(shape[0] > 0, tf.equal(shape[1], 0)),
            True,
            message="`image_bytes` must be a non-empty 1-D batch of encoded images",
        )
        with tf.control_dependencies([check]):
            image_bytes = tf.identity(image_bytes)
        pixels = tf.map_fn(
            lambda data: decode_for_serving(data, channels, height, width, max_image_pixels),
            image_bytes,
            fn_output_signature=tf.TensorSpec([height, width, channels], tf.float32),
        )
        return _serving_outputs(model, pixels, cuts)

    def metadata() -> dict[str, tf.Tensor]:
        fields = {
            "class_names": tf.identity(names),
            "input_shape": tf.constant([height, width, channels], tf.int64),
            "serving_dtype": tf.constant(serving_dtype),
            "max_image_pixels": tf.constant(max_image_pixels, tf.int64),
        }
        if cuts is not None:
            fields["thresholds"] = tf.identity(cuts)
        return fields

    archive.add_endpoint(
        SERVING_DEFAULT,
        serve_images,
        input_signature=[tf.TensorSpec([None, None, None, channels], tf.uint8, IMAGES_INPUT)],
    )
    archive.add_endpoint(
        SERVING_BYTES,
        serve_bytes,
        input_signature=[tf.TensorSpec([None], tf.string, BYTES_INPUT)],
    )
    archive.add_endpoint(METADATA, metadata, input_signature=[])
    return archive


def _pretrained_weights(model: Any) -> str | None:
    """The ``weights`` a run directory (or a model file in one) was fine-tuned from."""
    if not isinstance(model, (str, os.PathLike)):
        return None
    path = os.fspath(model)
    directory = path if os.path.isdir(path) else os.path.dirname(path)
    if not os.path.isfile(os.path.join(directory, rundir.CONFIG)):
        return None
    try:
        return rundir.read_config(directory).get("weights")
    except ValueError:
        return None


def export_savedmodel(
    model: keras.Model | str | os.PathLike,
    model_dir: str | os.PathLike,
    version: int | None = None,
    class_names: Sequence[str] | None = None,
    overwrite: bool = False,
    *,
    serving_dtype: str | None = None,
    fold_batchnorm: bool = True,
    max_image_pixels: int = image_files.MAX_PIXELS,
    thresholds: Sequence[float] | None = None,
    allow_unsafe: bool = False,
) -> str:
    """Exports an image classifier as a TF Serving SavedModel version.

    The SavedModel is written to a hidden temporary directory inside
    ``model_dir`` (TF Serving loads only all-digit names), flushed to disk, and
    renamed to ``<model_dir>/<version>`` only when complete, so TF Serving never
    sees a partial export. The signatures are described in the module
    docstring: ``serving_default`` (uint8 images, any size), ``serving_bytes``
    (encoded images) and ``metadata`` (class names, input shape, serving
    dtype, pixel limit).

    A model trained under a mixed-precision policy is exported as a float32
    graph unless ``serving_dtype`` says otherwise (see
    `keras_densenet.export.model.with_serving_dtype`). Each BatchNormalization
    that directly follows a convolution is folded into it (see
    `keras_densenet.export.fold_batchnorm`): the same outputs up to float32
    rounding, less work per request.

    Note that TF Serving does not reload a version number it has already
    loaded: roll out a new model as a new version rather than overwriting.
    Exporting an unchanged model file with the same options again (no
    ``version`` given, no ``overwrite``) writes nothing and returns the highest version, which
    holds it already (``export.json`` records a ``fingerprint`` of both).

    Args:
        model: A ``keras.Model`` taking raw pixels (0..255, shape
            ``(height, width, channels)`` with 1 or 3 channels) and returning
            class probabilities; or a ``.keras`` file or run directory (see
            `load_keras_model`).
        model_dir: The model's directory, e.g. ``saved_models/<model_name>``;
            created if missing.
        version: A positive int, or None for one more than the highest
            existing version (1 for the first).
        class_names: One name per class. Default: the run's ``summary.json``
            names when ``model`` is a path, else ``"0"``, ``"1"``, ...
        overwrite: Replace an existing version (atomically on Linux).
        serving_dtype: ``"float32"`` (default), ``"float16"`` or
            ``"bfloat16"``: the dtype the served graph computes in.
        fold_batchnorm: Fold BatchNormalizations into the convolutions
            before them (default True); False exports the graph as trained.
        max_image_pixels: Largest ``height x width`` a request may send; an
            encoded image announcing more is refused before decoding.
        thresholds: A multi-label (sigmoid) model's decision thresholds, one
            per label in [0, 1]. Default: the run's ``thresholds.json`` when
            ``model`` is a path, else 0.5. Refused for a single-label model.
        allow_unsafe: Load a model file that carries code (a ``Lambda`` layer).

    Returns:
        The path of the version directory.

    Raises:
        FileExistsError: If the version exists and ``overwrite`` is False.
        ValueError: For a bad ``version``, ``class_names``, ``serving_dtype``
            or ``max_image_pixels``, a model that is not an image classifier
            with a fixed input size, or a bad path.
        TypeError: If ``model`` is neither a model nor a path, or
            ``class_names`` is not a sequence.
        RuntimeError: If the Keras backend is not TensorFlow.

    Example:
        >>> export_savedmodel(model, "saved_models/fashion", class_names=names)
        'saved_models/fashion/1'
    """
    requested = check_version(version)
    check_bool("overwrite", overwrite)
    check_bool("fold_batchnorm", fold_batchnorm)
    check_int("max_image_pixels", max_image_pixels, 1, 2**62)
    model_dir = os.fspath(model_dir)
    _check_target(model_dir, requested, overwrite)
    source, stored_names = resolve_model(model, allow_unsafe=allow_unsafe)
    spec = model_spec(source)
    names = check_class_names(class_names if class_names is not None else stored_names, spec[3])
    thresholds = _checked_thresholds(source, model, thresholds)
    served = with_serving_dtype(source, serving_dtype)
    if fold_batchnorm:
        served = folding.fold_batchnorm(served)
    _writable_model_dir(model_dir)
    fingerprint = _fingerprint(
        model, names, thresholds, dtype_of(served), fold_batchnorm, max_image_pixels
    )
    if requested is None and not overwrite and fingerprint is not None:
        same = _version_holding(model_dir, fingerprint)
        if same is not None:  # an unchanged model exported again: that version holds it
            return same
    version = requested if requested is not None else _next_free(model_dir)
    info = {
        "source": model if isinstance(model, (str, os.PathLike)) else None,
        "pretrained_weights": _pretrained_weights(model),
        "model": source.name,
        "trained_dtype": dtype_of(source),
        "serving_dtype": dtype_of(served),
        "batchnorm_folded": folding.batchnorm_count(source) - folding.batchnorm_count(served),
        "input_shape": list(spec[:3]),
        "num_classes": spec[3],
        "multi_label": thresholds is not None,
        "max_image_pixels": max_image_pixels,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "fingerprint": fingerprint,
    }
    # os.mkdir, unlike mkdtemp, honours the umask (mkdtemp's 0700 would hide
    # the model from a TF Serving running as another user).
    tmp = os.path.join(model_dir, scratch_name(TEMP_PREFIX, version) + uuid.uuid4().hex[:8])
    os.mkdir(tmp)
    try:
        build_archive(served, names, max_image_pixels, thresholds).write_out(tmp, verbose=False)
        extra = os.path.join(tmp, "assets.extra")
        os.makedirs(extra, exist_ok=True)
        if thresholds is not None:
            with open(os.path.join(extra, THRESHOLDS_FILE), "w", encoding="utf-8") as f:
                json.dump(dict(zip(names, thresholds, strict=True)), f, indent=2)
        with open(os.path.join(extra, CLASS_NAMES_FILE), "w", encoding="utf-8") as f:
            f.write("".join(f"{n}\n" for n in names))
        with open(os.path.join(extra, EXPORT_INFO_FILE), "w", encoding="utf-8") as f:
            json.dump({**info, "version": version}, f, indent=2, default=str)
        _io.fsync_tree(tmp)
        return _publish(tmp, model_dir, version, requested is not None, overwrite)
    except BaseException:
        remove(tmp)
        raise


def _checked_thresholds(source: keras.Model, model: Any, given: Any) -> list[float] | None:
    """The thresholds to export: given, else the run's, else 0.5; None if single-label."""
    import numpy as np

    from keras_densenet.export.model import model_thresholds

    stored = model_thresholds(source, model)
    if given is None:
        return stored
    if stored is None:
        raise ValueError(
            "`thresholds` apply to a multi-label (sigmoid) model; this one is softmax."
        )
    values = np.asarray(given, dtype=np.float64).reshape(-1)
    if len(values) != len(stored) or not np.all((values >= 0) & (values <= 1)):
        raise ValueError(
            f"`thresholds` must be {len(stored)} numbers in [0, 1] (one per label), got {given!r}."
        )
    return [float(v) for v in values]


def _fingerprint(model: Any, *options: Any) -> str | None:
    """A digest of a model file and the export's options; None for a model in memory."""
    import hashlib

    if not isinstance(model, (str, os.PathLike)):
        return None
    digest = hashlib.sha256()
    with open(rundir.model_file(model), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    digest.update(json.dumps(options, default=str).encode())
    return digest.hexdigest()


def _version_holding(model_dir: str, fingerprint: str) -> str | None:
    """The highest version whose export record has this fingerprint, if it is the highest."""
    versions = list_versions(model_dir) if os.path.isdir(model_dir) else []
    if not versions:
        return None
    path = os.path.join(model_dir, str(versions[-1]))
    try:
        info = read_export_info(path)
    except ValueError:
        return None
    return path if info.get("fingerprint") == fingerprint else None


def _check_target(model_dir: str, requested: int | None, overwrite: bool) -> None:
    """Refuses a requested version that exists (without ``overwrite``) or is a file."""
    if requested is None:
        return
    target = os.path.join(model_dir, str(requested))
    if os.path.lexists(target) and not os.path.isdir(target):
        raise ValueError(
            f"{target!r} exists and is not a version directory: remove it or choose another "
            "`version`."
        )
    if os.path.exists(target) and not overwrite:
        raise FileExistsError(
            f"Version {requested} already exists at {target!r}; pass `overwrite=True` to "
            "replace it, or `version=None` for the next free version."
        )


def _writable_model_dir(model_dir: str) -> None:
    """Creates ``model_dir`` if needed, checks it is writable, clears dead scratch."""
    try:
        os.makedirs(model_dir, exist_ok=True)
    except OSError as err:
        raise ValueError(
            f"`model_dir` {model_dir!r} cannot be created: {err.strerror or err}."
        ) from err
    if not os.access(model_dir, os.W_OK):
        raise ValueError(f"`model_dir` {model_dir!r} is not writable.")
    remove_stale_scratch(model_dir)


def _next_free(model_dir: str) -> int:
    taken = taken_versions(model_dir)
    return taken[-1] + 1 if taken else 1


def _publish(tmp: str, model_dir: str, version: int, requested: bool, overwrite: bool) -> str:
    """Renames the complete export ``tmp`` into place; returns the version directory.

    A requested version is replaced only with ``overwrite``; a next-free
    version that another export took meanwhile moves on to the next number.
    """
    target = os.path.join(model_dir, str(version))
    while True:
        if os.path.exists(target):
            if overwrite and requested:
                replace_dir(tmp, target, version)
                return target
            if requested:
                raise FileExistsError(
                    f"Version {version} appeared at {target!r} during the export."
                )
            version = _next_free(model_dir)
            target = os.path.join(model_dir, str(version))
            continue
        try:
            os.rename(tmp, target)
            return target
        except OSError as err:  # lost a race for `target`
            if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise


def read_export_info(version_dir: str | os.PathLike) -> dict[str, Any]:
    """What `export_savedmodel` recorded in ``assets.extra/export.json``.

    Args:
        version_dir: An exported version directory.

    Returns:
        ``{"serving_dtype", "trained_dtype", "input_shape", "num_classes",
        "max_image_pixels", "version", ...}``.

    Raises:
        ValueError: If the file is missing or corrupted.
    """
    return _io.read_json(
        os.path.join(os.fspath(version_dir), "assets.extra", EXPORT_INFO_FILE), "export record"
    )


__all__ = [
    "BYTES_INPUT",
    "CLASSES",
    "CLASS_NAMES_FILE",
    "EXPORT_INFO_FILE",
    "IMAGES_INPUT",
    "METADATA",
    "PROBABILITIES",
    "REQUEST_FORMATS",
    "SERVING_BYTES",
    "SERVING_DEFAULT",
    "build_archive",
    "export_savedmodel",
    "list_versions",
    "read_export_info",
    "savedmodel_dir",
]
