"""Pretrained weights for a backbone, from any source a DenseNet user has on disk.

`identify` tells what a weights path is from its bytes (no TensorFlow, so the
command line refuses a wrong file before its start-up): a keras.applications
HDF5 file, a torchvision/timm ``.pth``/``.safetensors`` checkpoint, a
keras-hub DenseNet backbone (a ``.keras`` file or a preset directory), or a
``.keras`` file or run directory of this package. `load_backbone_weights`
puts its backbone into a model's backbone and leaves the head alone: a
classifier in the source is ignored, whatever its size, while every
backbone tensor must be there with its shape (the first one that is not is
named, and nothing is changed). Where the source's stem takes 3 channels and
the model 1, the stem kernel is summed over RGB (as timm's
``adapt_input_conv`` does), so a grey image gives the response its RGB copy
would; the other way round, the kernel is shared out over the channels.

`PretrainedSource.normalization` is the input normalization the weights were
trained with: ImageNet's mean and std for keras.applications, torchvision,
timm and keras-hub weights, the source model's own for a model of this
package.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from typing import Any

import numpy as np

#: What `identify` recognizes.
KINDS = ("keras.applications", "torch", "keras-hub", "keras", "run")
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ZIP_MAGIC = b"PK\x03\x04"
_TORCH_SUFFIXES = (".pth", ".pt", ".bin")
_WEIGHTS_ALLOWED = (
    "a keras.applications .h5 file, a torchvision/timm .pth/.pt/.bin/.safetensors "
    "checkpoint, a keras-hub DenseNet backbone (.keras file or preset directory), or a "
    ".keras file or run directory of keras_densenet"
)


@dataclasses.dataclass(frozen=True)
class PretrainedSource:
    """A pretrained-weights path and what it holds.

    Attributes:
        path: The file or directory.
        kind: One of `KINDS`.
        imagenet: Whether the weights expect ImageNet-normalized inputs
            (keras.applications, torchvision, timm, keras-hub).
    """

    path: str
    kind: str
    imagenet: bool

    def describe(self) -> str:
        """``"torch checkpoint 'x.pth'"`` and the like, for messages and logs."""
        names = {
            "keras.applications": "keras.applications weights file",
            "torch": "PyTorch checkpoint",
            "keras-hub": "keras-hub backbone",
            "keras": "Keras model file",
            "run": "run directory",
        }
        return f"{names[self.kind]} {self.path!r}"


def _head_bytes(path: str, count: int = 16) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(count)
    except OSError as err:
        raise ValueError(f"`weights` {path!r} cannot be read: {err.strerror or err}.") from None


def _zip_config(path: str) -> dict[str, Any]:
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except Exception as err:  # zip, zlib, JSON and key errors alike
        raise ValueError(
            f"`weights` {path!r} is not a valid .keras file ({type(err).__name__}): truncated "
            "or corrupted."
        ) from None
    return config if isinstance(config, dict) else {}


def _is_keras_hub(config: dict[str, Any]) -> bool:
    module = str(config.get("module", ""))
    return module.startswith("keras_hub") or "DenseNetBackbone" in str(config.get("class_name"))


def _safetensors_ok(path: str) -> bool:
    head = _head_bytes(path, 9)
    if len(head) < 9:
        return False
    size = int.from_bytes(head[:8], "little")
    return 2 <= size <= os.path.getsize(path) - 8 and head[8:9] == b"{"


def identify(path: str | os.PathLike) -> PretrainedSource:
    """What a pretrained-weights path holds, read from its bytes (no TensorFlow).

    Args:
        path: A weights file or directory (see the module's docstring).

    Returns:
        The `PretrainedSource`.

    Raises:
        ValueError: Naming the path, if it does not exist, is of no kind read
            here, or is of another format than its extension says.
    """
    from keras_densenet import rundir

    path = os.fspath(path)
    rundir.check_link(path, "weights")
    if os.path.isdir(path):
        return _identify_directory(path)
    if not os.path.exists(path):
        from keras_densenet.models import WEIGHTS_HINT

        raise ValueError(f"`weights` not found: {path!r}; {WEIGHTS_HINT}.")
    if not os.path.isfile(path):
        raise ValueError(f"`weights` {path!r} is not a file or directory.")
    head = _head_bytes(path)
    if path.endswith(".weights.h5"):
        raise ValueError(
            f"`weights` {path!r} is a Keras .weights.h5 file, which holds no layer names to "
            "match a new head against: pass the .keras model or run directory it came from, "
            "or the original .pth/.safetensors checkpoint."
        )
    if path.endswith(".h5"):
        if not head.startswith(_HDF5_MAGIC):
            raise ValueError(f"`weights` {path!r} ends in .h5 but is not an HDF5 file.")
        return PretrainedSource(path, "keras.applications", True)
    if path.endswith(".keras"):
        if not head.startswith(_ZIP_MAGIC):
            raise ValueError(f"`weights` {path!r} ends in .keras but is not a .keras (zip) file.")
        kind = "keras-hub" if _is_keras_hub(_zip_config(path)) else "keras"
        return PretrainedSource(path, kind, kind == "keras-hub")
    if path.endswith(".safetensors"):
        if not _safetensors_ok(path):
            raise ValueError(f"`weights` {path!r} ends in .safetensors but is not one.")
        return PretrainedSource(path, "torch", True)
    if path.endswith(_TORCH_SUFFIXES):
        # torch.save writes a zip archive (or, before PyTorch 1.6, a pickle).
        if not (head.startswith(_ZIP_MAGIC) or head[:1] == b"\x80"):
            kind = "an HDF5 file" if head.startswith(_HDF5_MAGIC) else "not a PyTorch file"
            raise ValueError(
                f"`weights` {path!r} ends in {os.path.splitext(path)[1]} but is {kind}."
            )
        return PretrainedSource(path, "torch", True)
    raise ValueError(f"`weights` must be {_WEIGHTS_ALLOWED}; got {path!r}.")


def _identify_directory(path: str) -> PretrainedSource:
    from keras_densenet import rundir

    config_path = os.path.join(path, "config.json")
    if os.path.isfile(config_path):  # a keras-hub preset has a config.json too
        try:
            with open(config_path, encoding="utf-8") as f:
                config = json.load(f)
        except (OSError, ValueError, UnicodeDecodeError):
            config = {}
        if isinstance(config, dict) and _is_keras_hub(config):
            return PretrainedSource(path, "keras-hub", True)
    if rundir.is_run_dir(path):
        rundir.model_file(path)  # a run directory without a model is named now
        return PretrainedSource(path, "run", False)
    raise ValueError(
        f"`weights` directory {path!r} is neither a run directory (best.keras, last.keras) nor "
        "a keras-hub DenseNet preset directory (config.json naming DenseNetBackbone)."
    )


# ---------------------------------------------------------------------------
# Reading a source's backbone as {our layer name: (arrays, source names)}

Arrays = dict[str, tuple[list[np.ndarray], list[str]]]


def _from_model(source: Any, rename: Any = None) -> Arrays:
    from keras_densenet.weights import leaf_layers

    arrays: Arrays = {}
    for name, layer in leaf_layers(source).items():
        ours = rename(name) if rename else name
        if ours is None:
            raise ValueError(f"the source layer {name!r} has no place in a DenseNet backbone")
        values = [np.asarray(w.numpy() if hasattr(w, "numpy") else w) for w in layer.weights]
        arrays[ours] = (values, [f"{name}/{w.name}" for w in layer.weights])
    return arrays


def load_keras_hub(path: str) -> Any:
    """A keras-hub backbone saved on disk: a ``.keras`` file or a preset directory."""
    try:
        import keras_hub
    except ImportError as err:
        raise ImportError(
            f"Reading the keras-hub backbone {path!r} needs keras-hub: pip install keras-hub."
        ) from err
    if os.path.isdir(path):
        return keras_hub.models.Backbone.from_preset(path)
    import keras

    return keras.saving.load_model(path, compile=False)


def _from_torch(path: str, targets: dict[str, Any]) -> Arrays:
    from keras_densenet.weights import read_torch_state_dict, torch_layer_arrays

    state = read_torch_state_dict(path)
    arrays: Arrays = {}
    for name in targets:
        found = torch_layer_arrays(name, state)
        if found is not None:
            arrays[name] = found
    used = {key for _, keys in arrays.values() for key in keys}
    extra = sorted(k for k in set(state) - used if not k.startswith("classifier."))
    if extra:
        raise ValueError(
            f"the checkpoint has {len(extra)} tensor(s) the backbone lacks, e.g. {extra[:3]}: "
            "it is not a checkpoint of this architecture"
        )
    return arrays


def read_backbone_arrays(source: PretrainedSource, targets: dict[str, Any]) -> Arrays:
    """A source's weights by our layer names, in Keras layout.

    Args:
        source: What `identify` found.
        targets: The backbone's layers by name (to look the PyTorch keys up).

    Returns:
        Layer name -> (its arrays, the source's names for them).

    Raises:
        ValueError: For a source that cannot be read or has layers that no
            DenseNet backbone has.
    """
    from keras_densenet import weights

    if source.kind == "keras.applications":
        return {
            name: (values, [f"{name}/{i}" for i in range(len(values))])
            for name, values in weights.read_legacy_h5(source.path).items()
        }
    if source.kind == "torch":
        return _from_torch(source.path, targets)
    if source.kind == "keras-hub":
        return _from_model(load_keras_hub(source.path), weights.keras_hub_name)
    from keras_densenet import rundir

    return _from_model(rundir.load_model(source.path, compile=False))


def _adapt_stem(kernel: np.ndarray, channels: int) -> np.ndarray:
    """A stem kernel for ``channels`` input channels (timm's ``adapt_input_conv``)."""
    if kernel.shape[2] == 3 and channels == 1:
        return kernel.sum(axis=2, keepdims=True)
    if kernel.shape[2] == 1:
        return np.repeat(kernel, channels, axis=2) / channels
    return kernel


def load_backbone_weights(model: Any, weights: str | os.PathLike) -> PretrainedSource:
    """Loads pretrained weights into a model's backbone; its head is left as it is.

    Args:
        model: A backbone or classifier built by this package (its layers
            up to ``relu`` take the weights; a ``normalization`` layer and
            the head are left alone).
        weights: Any path `identify` reads.

    Returns:
        The `PretrainedSource` that was loaded.

    Raises:
        ValueError: Naming the path and the first backbone tensor that is
            missing or of another shape (nothing is changed then), or for a
            path of no kind read here.
        ImportError: If the source needs a package that is not installed.
    """
    from keras_densenet.heads import HEAD_LAYERS, backbone_of
    from keras_densenet.weights import check_weight_values, leaf_layers

    source = identify(weights)
    targets = {
        name: layer
        for name, layer in leaf_layers(backbone_of(model)).items()
        if name != "normalization"
    }
    try:
        arrays = read_backbone_arrays(source, targets)
    except ValueError as err:
        raise ValueError(f"Cannot load {source.describe()}: {err}") from None
    plan = []
    for name, layer in targets.items():
        if name not in arrays:
            raise ValueError(
                f"Backbone mismatch: {source.describe()} has no weights for backbone layer "
                f"{name!r}: it is another architecture (check --preset, --blocks, "
                "--growth-rate)."
            )
        values, keys = arrays[name]
        if name == "conv1_conv":
            values = [_adapt_stem(values[0], int(layer.weights[0].shape[2]))]
        for value, key, variable in zip(values, keys, layer.weights, strict=False):
            if tuple(value.shape) != tuple(variable.shape):
                raise ValueError(
                    f"Backbone mismatch at {key!r} of {source.describe()}: shape "
                    f"{tuple(value.shape)}, the model's {name!r} expects "
                    f"{tuple(variable.shape)} (check --preset, --blocks, --growth-rate)."
                )
            check_weight_values(
                np.asarray(value),
                key,
                source.describe(),
                variance=variable.name == "moving_variance",
            )
        if len(values) != len(layer.weights):
            raise ValueError(
                f"Backbone mismatch at {name!r} of {source.describe()}: {len(values)} arrays, "
                f"the model's layer has {len(layer.weights)}."
            )
        plan.append((layer, values))
    extra = sorted(set(arrays) - set(targets) - set(HEAD_LAYERS) - {"normalization"})
    if extra:
        raise ValueError(
            f"Backbone mismatch: {source.describe()} has layers the model's backbone lacks, "
            f"e.g. {extra[:3]}: it is another architecture (check --preset, --blocks)."
        )
    for layer, values in plan:
        layer.set_weights(values)
    return source


def _fit_channels(mean: Any, std: Any, channels: int) -> tuple[list[float], list[float]]:
    if len(mean) != channels:  # averaged over the channels, then repeated
        mean, std = ([float(np.mean(v))] * channels for v in (mean, std))
    return [float(v) for v in mean], [float(v) for v in std]


def imagenet_statistics(channels: int) -> tuple[list[float], list[float]]:
    """ImageNet's ``(mean, std)`` in the 0..255 scale, averaged over RGB for 1 channel."""
    from keras_densenet.preprocessing import imagenet_normalization

    return _fit_channels(*imagenet_normalization(), channels)


def source_normalization(
    source: PretrainedSource, channels: int
) -> tuple[list[float], list[float]] | None:
    """The input normalization (0..255 scale) the weights were trained with.

    Args:
        source: What `identify` found.
        channels: The new model's input channels: statistics of another
            channel count are averaged over the channels, then repeated
            (ImageNet's RGB statistics for a grey model, as timm does).

    Returns:
        ``(mean, std)`` per channel, or None where the source model has no
        normalization layer of its own (a ``.keras`` file that does its
        preprocessing outside).
    """
    if source.imagenet:
        return imagenet_statistics(channels)
    from keras_densenet import rundir

    model = rundir.load_model(source.path, compile=False)
    try:
        layer = model.get_layer("normalization")
    except ValueError:
        return None
    mean = np.ravel(np.asarray(layer.mean)).tolist()
    std = np.sqrt(np.ravel(np.asarray(layer.variance))).tolist()
    return _fit_channels(mean, std, channels)


__all__ = [
    "KINDS",
    "PretrainedSource",
    "identify",
    "imagenet_statistics",
    "load_backbone_weights",
    "load_keras_hub",
    "read_backbone_arrays",
    "source_normalization",
]
