"""A DenseNet backbone and the task heads on top of it.

The split is keras-hub's: a *backbone* maps images to features (every dense
block's output, and after the final BN-ReLU the map a head reads), and a
*head* turns those features into a task's outputs. Unlike keras-hub, the
classifier is one flat functional graph over the backbone's own layers, so
its layers keep the keras.applications names (``conv1_conv`` ...
``bn``, ``relu``, ``avg_pool``, ``predictions``) that the weight loaders and
``.keras`` files of earlier versions use::

    backbone = build_backbone("densenet121", input_shape=(224, 224, 3))
    model = build_classifier(backbone, num_classes=14, multi_label=True)
    freeze_backbone(model)                # the head alone trains
    new = build_classifier(model, 5)      # a new head on the same layers

`backbone_of` recovers the backbone of any model this package built (a loaded
``best.keras`` included): the layers up to ``relu``. The same layers, not a
copy: a new head built on it shares every backbone weight.
"""

from __future__ import annotations

from typing import Any

import keras

from keras_densenet._validation import check_positive_int, check_rate
from keras_densenet.architecture import MAX_CLASSES, POOLINGS

#: The backbone's last layer (BN-ReLU after the last dense block).
FEATURES = "relu"
#: Names of the layers a classification head adds (keras.applications' top).
HEAD_LAYERS = ("avg_pool", "max_pool", "head_dropout", "predictions")
#: The activations of the two classification tasks.
SINGLE_LABEL, MULTI_LABEL = "softmax", "sigmoid"


def backbone_of(model: keras.Model) -> keras.Model:
    """The backbone of a model built by this package, sharing its layers.

    Args:
        model: A classifier (`build_densenet`, `build_classifier`, a loaded
            run's ``best.keras``) or a backbone.

    Returns:
        A ``keras.Model`` from the model's image input to its final BN-ReLU
        features (the layer ``relu``), named ``<model name>_backbone``.

    Raises:
        ValueError: If the model has no ``relu`` layer (it was not built by
            `build_densenet`/`build_backbone`).
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model, got {type(model).__name__}.")
    try:
        features = model.get_layer(FEATURES).output
    except ValueError:
        raise ValueError(
            f"Model {model.name!r} has no layer {FEATURES!r}: it is not a DenseNet built by "
            "keras_densenet (build_densenet or build_backbone)."
        ) from None
    if model.outputs and len(model.outputs) == 1 and model.outputs[0] is features:
        return model
    name = model.name if model.name.endswith("_backbone") else f"{model.name}_backbone"
    return keras.Model(model.input, features, name=name)


def pyramid_outputs(backbone: keras.Model) -> dict[str, Any]:
    """Every dense block's output by keras-hub's pyramid name (``P<log2 stride>``).

    Args:
        backbone: A backbone or classifier built by this package.

    Returns:
        ``{"P2": ..., "P5": ...}`` (symbolic tensors) at strides 4 to 32 for
        the ImageNet stem; ``{"P0": ..., "P2": ...}`` for the 3-block CIFAR
        stem (no stride before the first block).
    """
    names = {layer.name for layer in backbone.layers}
    stride = 4 if "pool1" in names else 1  # the ImageNet stem's conv and max pool
    pyramid = {}
    for layer in backbone.layers:
        if type(layer).__name__ == "DenseBlock":
            pyramid[f"P{stride.bit_length() - 1}"] = layer.output
            stride *= 2
    return pyramid


def classifier_head(
    features: Any,
    num_classes: int,
    *,
    activation: Any = SINGLE_LABEL,
    pooling: str = "avg",
    dropout_rate: float = 0.0,
) -> Any:
    """keras.applications' top on a feature map: global pooling, then the classifier.

    Args:
        features: The backbone's 4D features (symbolic tensor).
        num_classes: Outputs of the classifier.
        activation: ``"softmax"`` (one class per image), ``"sigmoid"`` (each
            label on its own), another Keras activation, or None (logits).
        pooling: ``"avg"`` or ``"max"``.
        dropout_rate: Dropout before the classifier, in [0, 1).

    Returns:
        The outputs: float32 even under mixed precision, so the softmax or
        sigmoid and the loss are computed in float32.
    """
    if pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name="max_pool")(features)
    else:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(features)
    if dropout_rate:
        x = keras.layers.Dropout(dropout_rate, name="head_dropout")(x)
    return keras.layers.Dense(
        num_classes, activation=activation, name="predictions", dtype="float32"
    )(x)


def check_head_options(num_classes: Any, pooling: Any, dropout_rate: Any) -> None:
    """Checks a classification head's options (named as the arguments).

    Raises:
        ValueError: For a count, pooling or rate out of range.
        TypeError: For a value of the wrong type.
    """
    check_positive_int("num_classes", num_classes, MAX_CLASSES)
    if pooling not in POOLINGS or pooling is None:
        raise ValueError(f"`pooling` must be 'avg' or 'max', got {pooling!r}.")
    check_rate("dropout_rate", dropout_rate)


def build_classifier(
    backbone: keras.Model,
    num_classes: int,
    *,
    multi_label: bool = False,
    pooling: str = "avg",
    dropout_rate: float = 0.0,
    name: str | None = None,
) -> keras.Model:
    """A classifier on a backbone's layers: a new head, the backbone's weights.

    Args:
        backbone: A backbone (`build_backbone`), or any classifier built by
            this package: its head is left out and a new one put on its
            backbone (`backbone_of`). The layers are shared, not copied.
        num_classes: Classes (single-label) or labels (multi-label).
        multi_label: Each label on its own (sigmoid outputs, for binary
            cross-entropy), instead of one class per image (softmax).
        pooling: Global ``"avg"`` (keras.applications') or ``"max"`` pooling.
        dropout_rate: Dropout before the classifier, in [0, 1) (default 0).
        name: The model's name (default: the backbone's, without
            ``_backbone``).

    Returns:
        An uncompiled ``keras.Model`` with the keras.applications layer names.

    Raises:
        ValueError: For an option out of range, or a model that has no
            DenseNet backbone.
        TypeError: For an option of the wrong type.
    """
    check_head_options(num_classes, pooling, dropout_rate)
    if not isinstance(multi_label, bool):
        raise TypeError(f"`multi_label` must be True or False, got {multi_label!r}.")
    backbone = backbone_of(backbone)
    outputs = classifier_head(
        backbone.output,
        num_classes,
        activation=MULTI_LABEL if multi_label else SINGLE_LABEL,
        pooling=pooling,
        dropout_rate=dropout_rate,
    )
    return keras.Model(
        backbone.input, outputs, name=name or backbone.name.removesuffix("_backbone")
    )


def freeze_backbone(model: keras.Model, frozen: bool = True) -> None:
    """Freezes (or unfreezes) every layer of a model but its head.

    A frozen layer's weights are left out of training, and its
    BatchNormalizations run in inference mode (Keras 3 does so for
    ``trainable=False``), as the Keras transfer-learning guide recommends.
    Recompile the model after a change.

    Args:
        model: A classifier built by this package.
        frozen: Freeze (True) or unfreeze (False).
    """
    for layer in model.layers:
        if layer.name not in HEAD_LAYERS:
            layer.trainable = not frozen


def is_multi_label(model: keras.Model) -> bool:
    """Whether a classifier's head scores each label on its own (sigmoid)."""
    try:
        activation = model.get_layer("predictions").get_config().get("activation")
    except ValueError:
        return False
    return activation == MULTI_LABEL


__all__ = [
    "FEATURES",
    "HEAD_LAYERS",
    "backbone_of",
    "build_classifier",
    "classifier_head",
    "freeze_backbone",
    "is_multi_label",
    "pyramid_outputs",
]
