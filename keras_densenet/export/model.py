"""What gets exported: the model, its class names, and its serving precision.

A model trained under ``mixed_float16`` or ``mixed_bfloat16`` is rebuilt
under the float32 policy for serving by default (`with_serving_dtype`): the
same architecture, the same weights (stored in float32 anyway), float32
arithmetic. On CPUs TF Serving runs low-precision graphs slower than float32
(tensorflow/tensorflow#45441) and TFLite converts them poorly
(tensorflow/tensorflow#46380); a GPU server may keep the low-precision graph.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from keras_densenet import rundir
from keras_densenet._validation import check_choice

if TYPE_CHECKING:
    import keras

#: Channel counts an exported graph can decode images to.
CHANNELS = (1, 3)
#: TFLite quantizations: none (float32) or full-integer int8.
QUANTIZATIONS = ("float32", "int8")
#: Serving precisions: the dtype of the graph's arithmetic.
SERVING_DTYPES = ("float32", "float16", "bfloat16")
_POLICY_OF = {"float32": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}
# Layers that compute in float32 whatever the policy (build_densenet's classifier).
_FLOAT32_LAYERS = ("predictions",)


def load_keras_model(
    path: str | os.PathLike, *, allow_unsafe: bool = False
) -> tuple[keras.Model, list[str] | None]:
    """Loads a ``.keras`` model, or a run directory's model, with its class names.

    A run directory is one written by training: its ``best.keras`` is used
    (``last.keras`` if there is no ``best.keras``). Class names come from the
    ``summary.json`` next to the model file, if there is one.

    Args:
        path: A ``.keras`` file or a training run directory.
        allow_unsafe: Load a file that carries code (a ``Lambda`` layer).

    Returns:
        ``(model, class_names)``; ``class_names`` is None without a summary.

    Raises:
        ValueError: If the path does not exist, is not a ``.keras`` file or a
            run directory, cannot be loaded, or has an unreadable summary.
    """
    path = rundir.model_file(path)
    model = rundir.load_model(path, compile=False, allow_unsafe=allow_unsafe)
    return model, rundir.class_names(path)


def resolve_model(model: Any, allow_unsafe: bool = False) -> tuple[keras.Model, list[str] | None]:
    """A model and its stored class names, from a model or a path.

    Raises:
        TypeError: If ``model`` is neither a ``keras.Model`` nor a path.
        ValueError: As `load_keras_model`.
    """
    import keras

    if isinstance(model, keras.Model):
        return model, None
    if isinstance(model, (str, os.PathLike)):
        return load_keras_model(model, allow_unsafe=allow_unsafe)
    raise TypeError(
        f"`model` must be a keras.Model, a `.keras` file or a run directory, got {model!r}."
    )


def model_thresholds(model: keras.Model, source: Any = None) -> list[float] | None:
    """A multi-label model's decision thresholds, one per label; None if single-label.

    Args:
        model: The model.
        source: The path it came from: a run directory (or a ``.keras`` file
            in one) gives the run's ``thresholds.json``.

    Returns:
        The run's thresholds, else `keras_densenet.scores.DEFAULT_THRESHOLD`
        for every label; None for a single-label (softmax) model.

    Raises:
        ValueError: If the run's thresholds do not fit the model's labels.
    """
    from keras_densenet.evaluation import run_thresholds
    from keras_densenet.heads import is_multi_label
    from keras_densenet.scores import DEFAULT_THRESHOLD

    if not is_multi_label(model):
        return None
    labels = int(model.output_shape[-1])
    thresholds = None
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        thresholds = run_thresholds(path if os.path.isdir(path) else os.path.dirname(path))
    if thresholds is None:
        return [DEFAULT_THRESHOLD] * labels
    if len(thresholds) != labels:
        raise ValueError(
            f"The run's {rundir.THRESHOLDS} has {len(thresholds)} thresholds for a model of "
            f"{labels} labels."
        )
    return thresholds


def model_spec(model: keras.Model) -> tuple[int, int, int, int]:
    """``(height, width, channels, num_classes)`` of an image classifier.

    Raises:
        RuntimeError: If the Keras backend is not TensorFlow.
        ValueError: If the model is not a one-input, one-output image
            classifier with a fixed input size and 1 or 3 channels.
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            f"Exporting needs the TensorFlow backend (KERAS_BACKEND=tensorflow), not "
            f"{keras.backend.backend()!r}."
        )
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(
            f"Export needs a model with one image input and one output, got "
            f"{len(model.inputs)} inputs and {len(model.outputs)} outputs."
        )
    in_shape = tuple(model.inputs[0].shape)
    out_shape = tuple(model.outputs[0].shape)
    if len(in_shape) != 4 or in_shape[1] is None or in_shape[2] is None:
        raise ValueError(
            f"Export needs a fixed (height, width, channels) model input, got {in_shape}; "
            "build the model with e.g. input_shape=(32, 32, 3)."
        )
    if in_shape[3] not in CHANNELS:
        raise ValueError(
            f"Export supports images with channels in {CHANNELS}, the model takes {in_shape}."
        )
    if len(out_shape) != 2 or out_shape[1] is None:
        raise ValueError(
            f"Export needs a classifier with output (batch, num_classes), got {out_shape}; "
            "build it with include_top=True."
        )
    return int(in_shape[1]), int(in_shape[2]), int(in_shape[3]), int(out_shape[1])


def check_class_names(class_names: Any, num_classes: int) -> list[str]:
    """Validated class names (default ``"0"``, ``"1"``, ...).

    Names are printed by ``predict`` and stored in the export, so control
    characters (line breaks, terminal escape sequences) are refused.

    Raises:
        TypeError: If ``class_names`` is not a sequence of strings.
        ValueError: For the wrong number of names, an empty name, or a name
            with a control character.
    """
    if class_names is None:
        return [str(i) for i in range(num_classes)]
    if isinstance(class_names, (str, bytes)) or not isinstance(class_names, Iterable):
        raise TypeError(f"`class_names` must be a sequence of strings, got {class_names!r}.")
    names = list(class_names)
    if len(names) != num_classes or not all(isinstance(n, str) and n for n in names):
        raise ValueError(
            f"`class_names` must be {num_classes} non-empty strings (one per model output), "
            f"got {len(names)}: {names!r}."
        )
    for name in names:
        if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in name):
            raise ValueError(
                f"`class_names` must not contain control characters (line breaks, terminal "
                f"escapes), got {name!r}."
            )
    return names


def dtype_of(model: keras.Model) -> str:
    """The serving dtype a model computes in: the compute dtype of most layers."""
    counts: dict[str, int] = {}
    for layer in model._flatten_layers(include_self=False, recursive=False):
        if layer.weights:
            counts[layer.compute_dtype] = counts.get(layer.compute_dtype, 0) + 1
    return max(counts, key=counts.get) if counts else "float32"


def _set_policies(config: Any, policy: str) -> Any:
    """Every layer config's ``dtype`` replaced by ``policy`` (classifier excepted)."""
    if isinstance(config, list):
        return [_set_policies(item, policy) for item in config]
    if not isinstance(config, dict):
        return config
    result = {k: _set_policies(v, policy) for k, v in config.items()}
    inner = result.get("config")
    if (
        isinstance(inner, dict)
        and "dtype" in inner
        and "class_name" in result
        and result["class_name"] != "InputLayer"
        and inner.get("name") not in _FLOAT32_LAYERS
    ):
        inner["dtype"] = policy
    return result


def with_serving_dtype(model: keras.Model, serving_dtype: str | None = None) -> keras.Model:
    """The model rebuilt to compute in ``serving_dtype``, with the same weights.

    ``None`` means float32. A model that already computes in that dtype is
    returned as it is. The classifier stays float32, as `build_densenet`
    makes it.

    Args:
        model: A functional Keras model.
        serving_dtype: ``"float32"``, ``"float16"`` (``mixed_float16``
            arithmetic) or ``"bfloat16"`` (``mixed_bfloat16``), or None.

    Returns:
        The model to export.

    Raises:
        ValueError: For an unknown ``serving_dtype``, or a model that cannot be
            rebuilt from its config (it then cannot be converted).
    """
    serving_dtype = check_choice("serving_dtype", serving_dtype or "float32", SERVING_DTYPES)
    if dtype_of(model) == serving_dtype:
        return model
    import keras

    import keras_densenet.layers  # noqa: F401  (registers the layers for from_config)

    policy = keras.mixed_precision.DTypePolicy(_POLICY_OF[serving_dtype])
    try:
        # A subclassed model without get_config fails already here.
        config = _set_policies(model.get_config(), keras.saving.serialize_keras_object(policy))
        rebuilt = model.__class__.from_config(config)
    except Exception as err:
        raise ValueError(
            f"Cannot rebuild model {model.name!r} in {serving_dtype}: {type(err).__name__}: {err}"
        ) from err
    rebuilt.set_weights(model.get_weights())
    return rebuilt


__all__ = [
    "CHANNELS",
    "QUANTIZATIONS",
    "SERVING_DTYPES",
    "check_class_names",
    "dtype_of",
    "load_keras_model",
    "model_spec",
    "resolve_model",
    "with_serving_dtype",
]
