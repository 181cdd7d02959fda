"""Loading weights, including the ``keras.applications`` ImageNet files.

``keras.applications`` publishes DenseNet-121/169/201 ImageNet weights as
legacy HDF5 files: one group per layer name, each with a ``weight_names``
attribute listing its arrays in order. The models built here use the same
layer names, so those arrays map one to one onto our variables. Nothing here
downloads anything: users fetch the file themselves.
"""

from __future__ import annotations

import os
from typing import Any

import keras
import numpy as np

#: Where keras.applications publishes the DenseNet ImageNet weights; download
#: them yourself (e.g. ``keras.utils.get_file``) and pass the local path.
KERAS_APPLICATIONS_WEIGHTS_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/densenet/"
    "{name}_weights_tf_dim_ordering_tf_kernels{suffix}.h5"
)


def _leaf_layers(model: keras.Model) -> dict[str, keras.layers.Layer]:
    """Name -> layer for every layer that owns weights, nested ones included."""
    leaves: dict[str, keras.layers.Layer] = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        own = [w for w in layer.weights if not any(w is v for v in _child_weights(layer))]
        if own and not layer.name.startswith("dropout"):
            leaves[layer.name] = layer
    return leaves


def _child_weights(layer: keras.layers.Layer) -> list[Any]:
    children = layer._flatten_layers(include_self=False, recursive=True)
    return [w for child in children for w in child.weights]


def _read_legacy_h5(path: str) -> dict[str, list[np.ndarray]]:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            group = f.get("model_weights", f)
            if "layer_names" not in group.attrs:
                raise ValueError(
                    f"Weights file {path!r} is not a keras.applications (legacy HDF5) "
                    "weights file: it has no `layer_names` attribute."
                )
            result = {}
            for raw in group.attrs["layer_names"]:
                name = raw.decode() if isinstance(raw, bytes) else str(raw)
                names = group[name].attrs.get("weight_names", [])
                arrays = [
                    np.asarray(group[name][w.decode() if isinstance(w, bytes) else w])
                    for w in names
                ]
                if arrays:
                    result[name] = arrays
            return result
    except OSError as err:
        raise ValueError(f"Cannot read weights file {path!r}: {err}") from err


def _arrays_of_model(source: keras.Model) -> dict[str, list[np.ndarray]]:
    return {
        name: [np.asarray(keras.ops.convert_to_numpy(w)) for w in layer.weights]
        for name, layer in _leaf_layers(source).items()
    }


def load_keras_applications_weights(
    model: keras.Model, source: str | os.PathLike | keras.Model
) -> None:
    """Puts ``keras.applications`` DenseNet weights into a matching model.

    Args:
        model: A model from `build_densenet` whose architecture matches the
            source (e.g. preset ``"densenet121"`` for DenseNet121 weights;
            ``include_top=False`` for the ``_notop`` files).
        source: The path of a keras.applications legacy HDF5 weights file
            (e.g. ``densenet121_weights_tf_dim_ordering_tf_kernels.h5``), or a
            ``keras.applications`` DenseNet model instance.

    Raises:
        ValueError: If the file cannot be read, or if the source's layers or
            weight shapes do not match ``model`` (nothing is changed then).
        TypeError: If ``source`` is neither a path nor a Keras model.
    """
    if isinstance(source, keras.Model):
        arrays = _arrays_of_model(source)
        what = f"model {source.name!r}"
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise ValueError(f"Weights file not found: {path!r}.")
        arrays = _read_legacy_h5(path)
        what = f"file {path!r}"
    else:
        raise TypeError(f"`source` must be a path or a keras.Model, got {type(source).__name__}.")

    targets = _leaf_layers(model)
    missing = sorted(set(targets) - set(arrays))
    extra = sorted(set(arrays) - set(targets))
    if missing or extra:
        raise ValueError(
            f"Architecture mismatch between {what} and model {model.name!r}: "
            f"{len(missing)} layers have no weights in the source (e.g. {missing[:3]}), "
            f"{len(extra)} source layers are not in the model (e.g. {extra[:3]})."
        )
    for name, layer in targets.items():
        got = [a.shape for a in arrays[name]]
        want = [tuple(w.shape) for w in layer.weights]
        if got != want:
            raise ValueError(
                f"Architecture mismatch between {what} and model {model.name!r} at layer "
                f"{name!r}: source weight shapes {got}, model expects {want}."
            )
    for name, layer in targets.items():
        layer.set_weights(arrays[name])


def load_weights(model: keras.Model, path: str | os.PathLike) -> None:
    """Loads a Keras ``.weights.h5`` or a keras.applications legacy ``.h5`` file.

    Args:
        model: The model to load into.
        path: The weights file.

    Raises:
        ValueError: If the file is missing, unreadable or does not match.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"`weights` file not found: {path!r}.")
    if path.endswith(".weights.h5"):
        try:
            model.load_weights(path)
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(
                f"Cannot load weights file {path!r} into {model.name!r}: {err}"
            ) from err
    else:
        load_keras_applications_weights(model, path)
