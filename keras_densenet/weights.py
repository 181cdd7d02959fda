"""Loading weights: Keras files, keras.applications' ImageNet files, PyTorch checkpoints.

``keras.applications`` publishes DenseNet-121/169/201 ImageNet weights as
legacy HDF5 files: one group per layer name, each with a ``weight_names``
attribute listing its arrays in order. The models built here use the same
layer names, so those arrays map one to one onto our variables.

PyTorch's DenseNets (torchvision's DenseNet-121/161/169/201, timm's
``densenet*`` checkpoints, fine-tuned state dicts) load with
`load_torch_weights`: each ``features.denseblock{b}.denselayer{i}.norm1`` ...
key maps to the keras.applications name of the same tensor, kernels are
transposed from PyTorch's (out, in, h, w) to Keras's (h, w, in, out), and
``num_batches_tracked`` is dropped. A ``.pth`` file is read with
``torch.load(weights_only=True)`` (never plain pickle), a ``.safetensors``
file with the ``safetensors`` package (no PyTorch needed).

Nothing here downloads anything: users fetch the files themselves.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np


def leaf_layers(model: keras.Model) -> dict[str, keras.layers.Layer]:
    """Name -> layer for every layer that owns weights, nested ones included (not dropout)."""
    leaves: dict[str, keras.layers.Layer] = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        own = [w for w in layer.weights if not any(w is v for v in _child_weights(layer))]
        if own and not layer.name.startswith("dropout"):
            leaves[layer.name] = layer
    return leaves


def _child_weights(layer: keras.layers.Layer) -> list[Any]:
    children = layer._flatten_layers(include_self=False, recursive=True)
    return [w for child in children for w in child.weights]


def read_legacy_h5(path: str) -> dict[str, list[np.ndarray]]:
    """A keras.applications (legacy HDF5) weights file as layer name -> arrays.

    Raises:
        ValueError: Naming the file, if it cannot be read or is not of that layout.
    """
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
        for name, layer in leaf_layers(source).items()
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
        arrays = read_legacy_h5(path)
        what = f"file {path!r}"
    else:
        raise TypeError(f"`source` must be a path or a keras.Model, got {type(source).__name__}.")

    targets = leaf_layers(model)
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
        for array, variable in zip(arrays[name], layer.weights, strict=True):
            check_weight_values(
                np.asarray(array), name, what, variance=variable.name == "moving_variance"
            )
    for name, layer in targets.items():
        layer.set_weights(arrays[name])


def load_weights(model: keras.Model, path: str | os.PathLike) -> None:
    """Loads a Keras ``.weights.h5``, a keras.applications ``.h5`` or a PyTorch checkpoint.

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
    elif path.endswith((".pth", ".pt", ".bin", ".safetensors")):
        load_torch_weights(model, path)
    else:
        load_keras_applications_weights(model, path)


# ---------------------------------------------------------------------------
# PyTorch checkpoints

# Old torchvision checkpoints name dense-layer parameters `norm.1` instead of
# `norm1` (torchvision's own loader rewrites them the same way).
_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)
_BN_KEYS = ("weight", "bias", "running_mean", "running_var")
_SAFETENSORS_SUFFIX = ".safetensors"


def _to_numpy(value: Any, key: str, what: str) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch.Tensor
        value = (
            value.detach().cpu().float().numpy()
            if value.is_floating_point()
            else (value.detach().cpu().numpy())
        )
    array = np.asarray(value)
    if array.dtype.name == "bfloat16":  # ml_dtypes' (TensorFlow and JAX register it)
        array = array.astype(np.float32)
    if array.dtype.kind not in "biufc":  # objects, strings, bytes: not a tensor
        raise ValueError(f"{what} is not a state dict: {key!r} holds a {type(value).__name__}.")
    return array


def _read_torch_file(path: str) -> Any:
    if not os.path.isfile(path):
        raise ValueError(f"PyTorch checkpoint not found: {path!r}.")
    if path.endswith(_SAFETENSORS_SUFFIX):
        try:
            import safetensors.numpy  # noqa: F401
        except ImportError as err:
            raise ImportError(
                "Reading .safetensors files needs the safetensors package: pip install safetensors."
            ) from err
        try:
            return read_safetensors(path)
        except Exception as err:  # safetensors raises its own SafetensorError
            raise ValueError(
                f"{path!r} is not a readable .safetensors file (truncated or another format): {err}"
            ) from err
    try:
        import torch
    except ImportError as err:
        raise ImportError(
            f"Reading {path!r} needs PyTorch (pip install torch), or convert it to .safetensors."
        ) from err
    try:
        # weights_only: tensors and containers only, never arbitrary pickled code.
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"{path!r} is not a readable PyTorch state dict (truncated, another format, or a "
            f"pickle of objects other than tensors): {type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}"
        ) from err


def read_torch_state_dict(source: Any) -> dict[str, np.ndarray]:
    """A PyTorch state dict as NumPy arrays, with old-style keys renamed.

    Args:
        source: A state dict (name -> tensor or array), or the path of a
            ``.pth``/``.pt``/``.bin`` file (read with
            ``torch.load(weights_only=True)``) or a ``.safetensors`` file. A
            checkpoint that wraps its state dict (``{"state_dict": ...}`` or
            ``{"model": ...}``) is unwrapped.

    Returns:
        Key -> float32 array, ``num_batches_tracked`` dropped, and
        ``norm.1``-style keys of old torchvision checkpoints renamed.

    Raises:
        ValueError: Naming the file, if it is missing, unreadable, or not a
            state dict.
        TypeError: If ``source`` is neither a mapping nor a path.
        ImportError: If the file needs a package that is not installed.
    """
    what = "the state dict"
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        what = f"PyTorch checkpoint {path!r}"
        source = _read_torch_file(path)
    elif not isinstance(source, Mapping):
        raise TypeError(
            "`source` must be a state dict or a .pth/.safetensors path, got "
            f"{type(source).__name__}."
        )
    if isinstance(source, Mapping):
        for wrapper in ("state_dict", "model", "model_state_dict"):
            if isinstance(source.get(wrapper), Mapping):
                source = source[wrapper]
                break
    if not isinstance(source, Mapping) or not source or not all(isinstance(k, str) for k in source):
        raise ValueError(f"{what} is not a state dict (a mapping of names to tensors).")
    arrays: dict[str, np.ndarray] = {}
    keys: dict[str, str] = {}
    for key, value in source.items():
        if key.endswith("num_batches_tracked"):
            continue
        name = _OLD_KEY.sub(r"\1\2", key).removeprefix("module.")  # DataParallel's prefix
        if name in arrays:
            raise ValueError(
                f"{what} holds both {keys[name]!r} and {key!r}, which name the same tensor "
                f"{name!r}: keep one of them."
            )
        array = _to_numpy(value, key, what)
        check_weight_values(array, key, what)
        arrays[name], keys[name] = array.astype(np.float32), key
    return arrays


def check_weight_values(
    array: np.ndarray, key: str, what: str, variance: bool | None = None
) -> None:
    """Refuses a weight that is not finite floating point, or a negative BN variance.

    Args:
        array: The values.
        key: Its name in the source.
        what: The source, for the message.
        variance: Whether it is a BatchNorm variance, which must not be
            negative (None: a key ending in ``running_var`` or
            ``moving_variance`` is one).

    Raises:
        ValueError: Naming the source, the tensor and what is wrong.
    """
    if array.dtype.kind != "f":
        raise ValueError(
            f"{what}: {key!r} holds {array.dtype} values; a DenseNet's weights are floating "
            "point (a file whose header declares another dtype is damaged)."
        )
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what}: {key!r} holds NaN or infinite values.")
    if variance is None:
        variance = key.endswith(("running_var", "moving_variance"))
    if variance and np.any(array < 0):
        raise ValueError(f"{what}: {key!r} holds negative variances.")


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """A ``.safetensors`` file's tensors as numpy arrays, bfloat16 ones as float32.

    Numpy has no bfloat16 of its own: ``ml_dtypes`` (a Keras dependency)
    registers one, which the ``safetensors`` package then reads.

    Raises:
        Exception: The ``safetensors`` package's own, for a damaged file.
    """
    import ml_dtypes  # noqa: F401  (numpy learns bfloat16)
    from safetensors.numpy import load_file

    return {
        key: value.astype(np.float32) if value.dtype.name == "bfloat16" else value
        for key, value in load_file(path).items()
    }


def _torch_names(layer_name: str) -> tuple[str, str] | None:
    """``(torch prefix, kind)`` of a keras.applications-named layer, or None."""
    if layer_name == "conv1_conv":
        return "features.conv0", "conv"
    if layer_name == "conv1_bn":
        return "features.norm0", "bn"
    if layer_name == "bn":
        return "features.norm5", "bn"
    if layer_name == "predictions":
        return "classifier", "dense"
    match = re.fullmatch(r"conv(\d+)_block(\d+)_([012])_(bn|conv)", layer_name)
    if match:
        block, layer, index, kind = match.groups()
        part = {
            ("0", "bn"): "norm1",
            ("1", "conv"): "conv1",
            ("1", "bn"): "norm2",
            ("2", "conv"): "conv2",
        }.get((index, kind))
        if part is None:
            return None
        prefix = f"features.denseblock{int(block) - 1}.denselayer{layer}.{part}"
        return prefix, kind
    match = re.fullmatch(r"pool(\d+)_(bn|conv)", layer_name)
    if match:
        stage, kind = match.groups()
        part = "norm" if kind == "bn" else "conv"
        return f"features.transition{int(stage) - 1}.{part}", kind
    return None


def _torch_arrays(prefix: str, kind: str, state: dict[str, np.ndarray]) -> list[tuple[str, Any]]:
    """The (key, Keras-layout array or None if missing) pairs of one layer."""
    if kind == "bn":
        keys = [f"{prefix}.{k}" for k in _BN_KEYS]
        return [(k, state.get(k)) for k in keys]
    weight = state.get(f"{prefix}.weight")
    if kind == "conv":  # (out, in, h, w) -> (h, w, in, out)
        return [(f"{prefix}.weight", None if weight is None else weight.transpose(2, 3, 1, 0))]
    bias = state.get(f"{prefix}.bias")
    return [(f"{prefix}.weight", None if weight is None else weight.T), (f"{prefix}.bias", bias)]


def torch_layer_arrays(
    layer_name: str, state: Mapping[str, np.ndarray]
) -> tuple[list[np.ndarray], list[str]] | None:
    """One Keras layer's arrays from a PyTorch state dict, in Keras layout.

    Args:
        layer_name: A keras.applications layer name (``conv2_block1_0_bn``).
        state: A state dict from `read_torch_state_dict`.

    Returns:
        ``(arrays, their PyTorch keys)``, or None if the layer has no
        PyTorch counterpart or the state dict lacks one of its tensors.
    """
    names = _torch_names(layer_name)
    if names is None:
        return None
    pairs = _torch_arrays(*names, state)
    if any(array is None for _, array in pairs):
        return None
    return [array for _, array in pairs], [key for key, _ in pairs]


def load_torch_weights(model: keras.Model, source: Any) -> None:
    """Puts a PyTorch DenseNet's weights (torchvision, timm) into a matching model.

    Covers torchvision's DenseNet-121/161/169/201 state dicts (old
    ``norm.1``-style keys included) and timm's ``densenet*`` checkpoints,
    which use the same names. Build the model with PyTorch's BatchNorm epsilon
    so outputs match exactly: ``build_densenet("densenet121",
    bn_epsilon=1e-5)`` (``build_densenet(..., weights="x.pth")`` does it
    itself), and give it torchvision's preprocessing
    (`keras_densenet.preprocessing`). A model without a classifier
    (``include_top=False``) takes the features and ignores ``classifier.*``.

    Every tensor is checked before anything is changed, so a mismatch leaves
    the model as it was.

    Args:
        model: A model from `build_densenet` with the checkpoint's
            architecture (e.g. preset ``"densenet161"`` for torchvision's
            densenet161).
        source: A state dict, or a ``.pth``/``.pt``/``.bin``/``.safetensors``
            file (see `read_torch_state_dict`).

    Raises:
        ValueError: For an unreadable source, a key the model lacks or that
            the source lacks, or a shape mismatch (the message names the first
            mismatching tensor and both shapes).
        TypeError: If ``source`` is neither a mapping nor a path.
    """
    state = read_torch_state_dict(source)
    layers = leaf_layers(model)
    order = {key: i for i, key in enumerate(state)}
    mapped = []
    for name, layer in layers.items():
        names = _torch_names(name)
        if names is None:
            if name == "normalization":
                continue
            raise ValueError(
                f"Model layer {name!r} has no counterpart in a PyTorch DenseNet: "
                "build the model with `build_densenet` (keras.applications layer names)."
            )
        mapped.append((order.get(f"{names[0]}.weight", len(order)), name, layer, names))
    plan = []
    used: set[str] = set()
    # In the checkpoint's own order, so the first mismatch named is the first one there.
    for _, name, layer, names in sorted(mapped, key=lambda item: item[0]):
        pairs = _torch_arrays(*names, state)
        for (key, array), variable in zip(pairs, layer.weights, strict=True):
            if array is None:
                raise ValueError(
                    f"The PyTorch state dict has no {key!r} for model layer {name!r}: it is "
                    "not a checkpoint of this architecture."
                )
            if tuple(array.shape) != tuple(variable.shape):
                raise ValueError(
                    f"Architecture mismatch at {key!r}: the checkpoint has shape "
                    f"{tuple(state[key].shape)} (PyTorch layout), model layer {name!r} expects "
                    f"{tuple(variable.shape)} (Keras layout)."
                )
            used.add(key)
        plan.append((layer, [array for _, array in pairs]))
    # A features-only model takes the features and leaves the checkpoint's head.
    head = {"predictions": "classifier.", "bn": "features.norm5."}
    ignored = {
        key
        for layer, prefix in head.items()
        if layer not in layers
        for key in state
        if key.startswith(prefix)
    }
    extra = sorted(set(state) - used - ignored)
    if extra:
        raise ValueError(
            f"The PyTorch state dict has {len(extra)} tensor(s) the model lacks, e.g. "
            f"{extra[:3]}: it is not a checkpoint of this architecture."
        )
    for layer, arrays in plan:
        layer.set_weights(arrays)


# ---------------------------------------------------------------------------
# keras-hub


def keras_hub_name(name: str) -> str | None:
    """Our layer name for a keras-hub ``DenseNetBackbone`` layer name, or None.

    ``stack1_block1_1_bn`` is our ``conv2_block1_0_bn``, ``transition1_conv``
    our ``pool2_conv``; the stem and the final ``bn`` keep their names.
    """
    if name in ("conv1_conv", "conv1_bn", "bn"):
        return name
    match = re.fullmatch(r"stack(\d+)_block(\d+)_([12])_(bn|conv)", name)
    if match:
        stack, block, index, kind = match.groups()
        ours = {("1", "bn"): "0_bn", ("1", "conv"): "1_conv", ("2", "bn"): "1_bn"}
        return f"conv{int(stack) + 1}_block{block}_{ours.get((index, kind), '2_conv')}"
    match = re.fullmatch(r"transition(\d+)_(bn|conv)", name)
    if match:
        return f"pool{int(match.group(1)) + 1}_{match.group(2)}"
    return None


def load_keras_hub_weights(model: keras.Model, backbone: keras.Model) -> None:
    """Copies a keras-hub ``DenseNetBackbone``'s weights into a matching model.

    The layers map one to one (``stack1_block1_1_bn`` is our
    ``conv2_block1_0_bn``, ``transition1_conv`` our ``pool2_conv``, ...), so
    every weight loads. Outputs are identical for odd input sizes only:
    keras-hub's 7x7/2 stem convolution and 3x3/2 max pool use
    ``padding="same"``, which pads even inputs asymmetrically (0 or 2 pixels
    before, 1 or 3 after), while this package pads symmetrically as
    keras.applications and torchvision do, so on even inputs the two models
    see their images shifted by a pixel.

    Args:
        model: A model from `build_densenet` with the backbone's layout
            (``include_top=False``, ``pooling=None``).
        backbone: A ``keras_hub.models.DenseNetBackbone``, or the path of one
            saved on disk (a ``.keras`` file or a preset directory).

    Raises:
        ValueError: If a layer has no counterpart or a shape differs (nothing
            is changed then), or ``backbone`` is a path that does not exist
            (a preset *name* would be a download: fetch it yourself).
        TypeError: If ``backbone`` is neither a Keras model nor a path.
    """
    if isinstance(backbone, (str, os.PathLike)):
        from keras_densenet.pretrained import identify, load_keras_hub

        path = os.fspath(backbone)
        if not os.path.exists(path):
            raise ValueError(
                f"keras-hub backbone {path!r} not found: pass a DenseNetBackbone, its .keras "
                "file or its preset directory (preset names are downloaded, which this "
                "package never does)."
            )
        source = identify(path)
        if source.kind != "keras-hub":
            raise ValueError(f"{path!r} is not a keras-hub backbone: it is a {source.kind} file.")
        backbone = load_keras_hub(path)
    if not isinstance(backbone, keras.Model):
        raise TypeError(
            f"`backbone` must be a keras_hub DenseNetBackbone or its path, got "
            f"{type(backbone).__name__}."
        )
    targets = leaf_layers(model)
    plan = []
    for name, layer in leaf_layers(backbone).items():
        ours = keras_hub_name(name)
        if ours is None or ours not in targets:
            raise ValueError(
                f"keras-hub layer {name!r} has no counterpart in model {model.name!r}: build it "
                "with the backbone's blocks, growth rate and include_top=False."
            )
        got = [tuple(w.shape) for w in layer.weights]
        want = [tuple(w.shape) for w in targets[ours].weights]
        if got != want:
            raise ValueError(
                f"Architecture mismatch at keras-hub layer {name!r}: shapes {got}, model layer "
                f"{ours!r} expects {want}."
            )
        plan.append((targets[ours], layer.get_weights()))
    loaded = {layer.name for layer, _ in plan}
    missing = sorted(set(targets) - loaded - {"normalization"})
    if missing:
        raise ValueError(f"The keras-hub backbone has no weights for model layers {missing[:3]}.")
    for layer, arrays in plan:
        layer.set_weights(arrays)
