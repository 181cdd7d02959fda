"""DenseNet building blocks as Keras 3 layers (NHWC).

The layers use only ``keras.layers`` and ``keras.ops``, so they run on the
TensorFlow, JAX and PyTorch backends. Sublayer names follow
``keras.applications.DenseNet*`` (``conv2_block1_0_bn``, ``pool2_conv``, ...)
so that published weights map one to one onto them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from keras_densenet import recompute
from keras_densenet._validation import check_bool, check_positive_int, check_rate
from keras_densenet.architecture import (
    BN_EPSILON,
    BN_MOMENTUM,
    LEGACY_BN_MOMENTUM,
    check_bn_epsilon,
    check_bn_momentum,
    check_compression,
    compressed_channels,
)
from keras_densenet.normalization import (
    BatchNormalization,
    batch_norm_pure,
    update_moving_statistics,
)

_PACKAGE = "keras_densenet"

#: The memory-efficient mode (on TensorFlow) stores a layer's bottleneck maps
#: when its input has at least this many channels per bottleneck channel.
_STORE_BOTTLENECK_FROM = 4


def _channels(shape: Sequence[int | None], what: str) -> int:
    if len(shape) != 4:
        raise ValueError(
            f"{what} expects a 4D NHWC input (batch, height, width, channels), "
            f"got shape {tuple(shape)}."
        )
    if shape[-1] is None:
        raise ValueError(f"{what} needs a known number of channels, got {tuple(shape)}.")
    return int(shape[-1])


def _shape_of_inputs(input_shape: Any) -> tuple[int | None, ...]:
    """Returns the concatenated shape of a tensor shape or a list of shapes."""
    if input_shape and isinstance(input_shape[0], (list, tuple)):
        shapes = [tuple(s) for s in input_shape]
        channels = sum(_channels(s, "DenseLayer") for s in shapes)
        return (*shapes[0][:-1], channels)
    return tuple(input_shape)


def _concat(inputs: Any) -> Any:
    """One tensor, or a list of them concatenated along channels."""
    if isinstance(inputs, (list, tuple)):
        return ops.concatenate(inputs, axis=-1) if len(inputs) > 1 else inputs[0]
    return inputs


def _bn(name: str, layer: keras.layers.Layer) -> BatchNormalization:
    return BatchNormalization(
        axis=-1,
        epsilon=layer.bn_epsilon,
        momentum=layer.bn_momentum,
        name=name,
        dtype=layer.dtype_policy,
    )


def _conv(
    filters: int, size: int, name: str, layer: keras.layers.Layer, use_bias: bool = False
) -> keras.layers.Conv2D:
    return keras.layers.Conv2D(
        filters,
        size,
        padding="same",
        use_bias=use_bias,
        # A fresh instance per convolution: Keras reuses an unseeded
        # initializer's values across calls, which would tie kernels together.
        # (from_config, not serialize: Keras's serializer imports TensorFlow
        # to check for it, even on the JAX and PyTorch backends.)
        kernel_initializer=type(layer.kernel_initializer).from_config(
            layer.kernel_initializer.get_config()
        ),
        kernel_regularizer=layer.kernel_regularizer,
        name=name,
        dtype=layer.dtype_policy,
    )


class _DenseNetLayer(keras.layers.Layer):
    """What every DenseNet layer takes: dropout, BN momentum and kernel settings.

    Subclasses check their own arguments, and list them in `_own_config`; the
    shared ones are checked, stored and serialized here.
    """

    def __init__(
        self,
        dropout_rate: float,
        bn_momentum: float,
        kernel_initializer: Any,
        kernel_regularizer: Any,
        bn_epsilon: float = BN_EPSILON,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.dropout_rate = check_rate("dropout_rate", dropout_rate)
        self.bn_momentum = check_bn_momentum(bn_momentum)
        self.bn_epsilon = check_bn_epsilon(bn_epsilon)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

    def _own_config(self) -> dict[str, Any]:
        return {}

    def _keep_frozen(self) -> None:
        # A frozen layer loaded from a file gets `trainable=False` before its
        # sublayers are tracked: pass it on to each of them once built.
        if self.trainable:
            return
        for value in vars(self).values():
            for layer in value if isinstance(value, list) else [value]:
                if isinstance(layer, keras.layers.Layer) and layer is not self:
                    layer.trainable = False
                    if isinstance(layer, _DenseNetLayer):
                        layer._keep_frozen()

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            self._own_config(),
            dropout_rate=self.dropout_rate,
            bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            kernel_regularizer=keras.regularizers.serialize(self.kernel_regularizer),
        )
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> _DenseNetLayer:
        # A layer saved before `bn_momentum` existed keeps the momentum it had.
        return cls(**{"bn_momentum": LEGACY_BN_MOMENTUM, **config})


class _GrowthLayer(_DenseNetLayer):
    """A layer that adds ``growth_rate`` maps per dense layer (`DenseLayer`, `DenseBlock`)."""

    def __init__(
        self,
        growth_rate: int,
        bottleneck: bool,
        bottleneck_width: int,
        memory_efficient: bool,
        folded: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.growth_rate = check_positive_int("growth_rate", growth_rate)
        self.bottleneck = bool(bottleneck)
        self.bottleneck_width = check_positive_int("bottleneck_width", bottleneck_width)
        self.memory_efficient = check_bool("memory_efficient", memory_efficient)
        if check_bool("folded", folded) and not self.bottleneck:
            raise ValueError(
                "`folded=True` needs `bottleneck=True`: without the 1x1 bottleneck no "
                "BatchNormalization follows a convolution, so there is nothing to fold."
            )
        self.folded = folded

    def _own_config(self) -> dict[str, Any]:
        config = {
            "growth_rate": self.growth_rate,
            "bottleneck": self.bottleneck,
            "bottleneck_width": self.bottleneck_width,
            "memory_efficient": self.memory_efficient,
        }
        if self.folded:  # configs of ordinary layers stay as they were
            config["folded"] = True
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class DenseLayer(_GrowthLayer):
    """The composite function H_l of a DenseNet: the k new feature maps.

    With ``bottleneck=True`` (DenseNet-B):
    BN-ReLU-Conv1x1(bottleneck_width * growth_rate)-[Dropout]-BN-ReLU-
    Conv3x3(growth_rate)-[Dropout]; without: BN-ReLU-Conv3x3(growth_rate)-
    [Dropout]. Convolutions have no bias. The layer returns only the
    ``growth_rate`` new maps; `DenseBlock` owns the concatenation.

    The input may be one NHWC tensor or a list of them (the features of all
    preceding layers), which are concatenated along channels first. With
    ``memory_efficient=True`` the layer keeps only its ``growth_rate`` new
    maps (and, in layers whose input has at least 4x the bottleneck's
    channels, the bottleneck's maps): the concatenation, where a DenseNet's
    training memory grows quadratically, and the BN-ReLUs are recomputed in
    the backward pass, on TensorFlow by `keras_densenet.recompute`, elsewhere
    (and where it does not apply) by ``keras.remat``. Dropout draws new
    numbers when recomputed, so a bottleneck layer with dropout stores its
    bottleneck's maps in training; the last dropout stays outside.

    Args:
        growth_rate: Number of new feature maps k, a positive int.
        bottleneck: Whether to use the 1x1 bottleneck convolution.
        bottleneck_width: Bottleneck channels as a multiple of ``growth_rate``.
        dropout_rate: Dropout after each convolution, in [0, 1).
        memory_efficient: Recompute the layer in the backward pass instead
            of storing its intermediate maps (see above).
        bn_momentum: Momentum of the BatchNormalization moving statistics,
            in [0, 1) (Keras convention; default 0.9, PyTorch's 0.1).
        bn_epsilon: BatchNormalization epsilon (default keras.applications'
            1.001e-5; PyTorch's is 1e-5).
        kernel_initializer: Initializer of the convolution kernels.
        kernel_regularizer: Optional regularizer of the convolution kernels.
        folded: The inference form that `keras_densenet.fold_batchnorm` builds:
            the BatchNormalization after the 1x1 bottleneck convolution is
            folded into that convolution's kernel and bias, so the layer is
            BN-ReLU-Conv1x1(bias)-ReLU-Conv3x3. Needs ``bottleneck=True``.
        **kwargs: Base layer arguments (``name``, ``dtype``, ``trainable``).

    Raises:
        ValueError: If an argument is out of its range.

    Example:
        >>> x = keras.random.normal((2, 8, 8, 16))
        >>> DenseLayer(12)(x).shape
        (2, 8, 8, 12)
    """

    #: Whether the memory-efficient mode (on TensorFlow) stores this layer's
    #: bottleneck maps instead of recomputing them; `build` decides.
    _stores_bottleneck = False

    def __init__(
        self,
        growth_rate: int,
        bottleneck: bool = True,
        bottleneck_width: int = 4,
        dropout_rate: float = 0.0,
        memory_efficient: bool = False,
        bn_momentum: float = BN_MOMENTUM,
        bn_epsilon: float = BN_EPSILON,
        kernel_initializer: Any = "he_normal",
        kernel_regularizer: Any = None,
        folded: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            growth_rate,
            bottleneck,
            bottleneck_width,
            memory_efficient,
            folded,
            dropout_rate=dropout_rate,
            bn_momentum=bn_momentum,
            bn_epsilon=bn_epsilon,
            kernel_initializer=kernel_initializer,
            kernel_regularizer=kernel_regularizer,
            **kwargs,
        )
        policy = self.dtype_policy
        prefix = self.name
        if self.bottleneck:
            self.bn1 = _bn(f"{prefix}_0_bn", self)
            self.conv1 = _conv(
                bottleneck_width * growth_rate, 1, f"{prefix}_1_conv", self, use_bias=self.folded
            )
            self.bn2 = None if self.folded else _bn(f"{prefix}_1_bn", self)
        else:
            self.bn1 = None
            self.conv1 = None
            self.bn2 = _bn(f"{prefix}_0_bn", self)
        self.conv2 = _conv(growth_rate, 3, f"{prefix}_2_conv", self)
        if self.dropout_rate > 0:
            self.dropout1 = keras.layers.Dropout(self.dropout_rate, dtype=policy)
            self.dropout2 = keras.layers.Dropout(self.dropout_rate, dtype=policy)
        else:
            self.dropout1 = self.dropout2 = None

    @property
    def input_batchnorm(self) -> keras.layers.BatchNormalization:
        """The BatchNormalization that reads the layer's (concatenated) input."""
        return self.bn1 if self.bottleneck else self.bn2

    @property
    def output_convolution(self) -> keras.layers.Conv2D:
        """The 3x3 convolution that produces the ``growth_rate`` new maps."""
        return self.conv2

    def build(self, input_shape: Any) -> None:
        shape = _shape_of_inputs(input_shape)
        channels = _channels(shape, "DenseLayer")
        # Recomputing the bottleneck's 1x1 convolution costs `channels`
        # multiply-adds per value it saves storing: the memory-efficient mode
        # stores the bottleneck's maps of the layers where that is dearest.
        self._stores_bottleneck = self.bottleneck and channels >= _STORE_BOTTLENECK_FROM * (
            self.bottleneck_width * self.growth_rate
        )
        if self.bottleneck:
            self.bn1.build(shape)
            self.conv1.build(shape)
            shape = (*shape[:-1], self.bottleneck_width * self.growth_rate)
        if self.bn2 is not None:
            self.bn2.build(shape)
        self.conv2.build(shape)
        self._keep_frozen()

    def _bottleneck(self, inputs: Any, training: Any = None) -> Any:
        x = _concat(inputs)
        x = ops.relu(self.bn1(x, training=training))
        return self.conv1(x)

    def _bottleneck_remat(self, inputs: Any, training: Any) -> Any:
        """The bottleneck alone recomputed (a layer with dropout in training).

        Dropout draws new random numbers when a function is recomputed, so it
        stays outside: the bottleneck's output is stored for it.
        """
        out = recompute.train_layer(inputs, [(self.bn1, self.conv1)], False, training)
        if out is not None:
            return out
        xs = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        bn = self.bn1
        if not (training and bn.trainable):  # inference-mode BN: nothing to update
            return keras.remat(lambda *ts: self._bottleneck(list(ts), training))(*xs)

        def bottleneck(*ts: Any) -> tuple[Any, Any, Any]:
            x = _concat(ts)
            y, mean, variance = batch_norm_pure(bn, x)
            return self.conv1(ops.relu(y)), mean, variance

        out, mean, variance = keras.remat(bottleneck)(*xs)
        update_moving_statistics(bn, mean, variance)
        return out

    def _layer_remat(self, inputs: Any, training: Any) -> Any:
        """The whole layer, recomputed in the backward pass instead of stored.

        Where `recompute.train_layer` does not apply, ``keras.remat``, whose
        function must be pure (``jax.checkpoint`` refuses state updates inside
        it, ``recompute_grad`` would apply them twice): the batch statistics
        are returned from it and the moving averages updated here.
        """
        norms = [bn for bn in (self.bn1, self.bn2) if bn is not None]
        convs = [c for c in (self.conv1, self.conv2) if c is not None]
        # (none when folded: one BatchNorm for two convolutions)
        stages = [] if self.folded else list(zip(norms, convs, strict=True))
        out = recompute.train_layer(inputs, stages, self._stores_bottleneck, training)
        if out is not None:
            return out
        xs = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        updated = [bn for bn in norms if training and bn.trainable]

        def layer(*ts: Any) -> tuple[Any, ...]:
            moments: list[Any] = []

            def normalize(bn: Any, x: Any) -> Any:
                if bn not in updated:
                    return bn(x, training=False)
                y, mean, variance = batch_norm_pure(bn, x)
                moments.extend((mean, variance))
                return y

            x = _concat(ts)
            if self.bottleneck:
                x = self.conv1(ops.relu(normalize(self.bn1, x)))
            if self.bn2 is not None:
                x = normalize(self.bn2, x)
            return (self.conv2(ops.relu(x)), *moments)

        out, *moments = keras.remat(layer)(*xs)
        for i, bn in enumerate(updated):
            update_moving_statistics(bn, moments[2 * i], moments[2 * i + 1])
        return out

    def call(self, inputs: Any, training: Any = None) -> Any:
        # Dropout between the two convolutions would draw new masks when recomputed
        # (a layer without a bottleneck has none there: it is recomputed whole).
        inner_dropout = training and self.bottleneck and self.dropout1 is not None
        if self.memory_efficient and not inner_dropout:
            x = self._layer_remat(inputs, training)
            if self.dropout2 is not None:  # the last op: outside the recomputation
                x = self.dropout2(x, training=training)
            return x
        if self.bottleneck:
            if self.memory_efficient:  # (in training, with dropout)
                x = self._bottleneck_remat(inputs, training)
            else:
                x = self._bottleneck(inputs, training)
            if self.dropout1 is not None:
                x = self.dropout1(x, training=training)
        else:
            x = _concat(inputs)
        if self.bn2 is not None:
            x = self.bn2(x, training=training)
        x = self.conv2(ops.relu(x))
        if self.dropout2 is not None:
            x = self.dropout2(x, training=training)
        return x

    def compute_output_shape(self, input_shape: Any) -> tuple[int | None, ...]:
        shape = _shape_of_inputs(input_shape)
        return (*shape[:-1], self.growth_rate)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class DenseBlock(_GrowthLayer):
    """A dense block: L `DenseLayer`s, each fed the features of all before it.

    The output has ``C_in + num_layers * growth_rate`` channels: the input
    first, then each layer's new maps in order. Layer ``i`` (1-based) is named
    ``f"{name}_block{i}"`` as in ``keras.applications``.

    Args:
        num_layers: Number of dense layers L, a positive int.
        growth_rate: Growth rate k, a positive int.
        bottleneck: Whether the layers use the 1x1 bottleneck (DenseNet-B).
        bottleneck_width: Bottleneck channels as a multiple of ``growth_rate``.
        dropout_rate: Dropout after each convolution, in [0, 1).
        memory_efficient: Keep only the list of feature maps and recompute
            each layer in the backward pass (see `DenseLayer`); memory then
            grows linearly with depth.
        bn_momentum: Momentum of the BatchNormalization moving statistics,
            in [0, 1) (Keras convention; default 0.9).
        bn_epsilon: BatchNormalization epsilon (default 1.001e-5).
        kernel_initializer: Initializer of the convolution kernels.
        kernel_regularizer: Optional regularizer of the convolution kernels.
        folded: Every layer in its inference form (see `DenseLayer`).
        **kwargs: Base layer arguments (``name``, ``dtype``, ``trainable``).

    Raises:
        ValueError: If an argument is out of its range.

    Example:
        >>> x = keras.random.normal((2, 8, 8, 16))
        >>> DenseBlock(num_layers=3, growth_rate=12)(x).shape
        (2, 8, 8, 52)
    """

    def __init__(
        self,
        num_layers: int,
        growth_rate: int,
        bottleneck: bool = True,
        bottleneck_width: int = 4,
        dropout_rate: float = 0.0,
        memory_efficient: bool = False,
        bn_momentum: float = BN_MOMENTUM,
        bn_epsilon: float = BN_EPSILON,
        kernel_initializer: Any = "he_normal",
        kernel_regularizer: Any = None,
        folded: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            growth_rate,
            bottleneck,
            bottleneck_width,
            memory_efficient,
            folded,
            dropout_rate=dropout_rate,
            bn_momentum=bn_momentum,
            bn_epsilon=bn_epsilon,
            kernel_initializer=kernel_initializer,
            kernel_regularizer=kernel_regularizer,
            **kwargs,
        )
        self.num_layers = check_positive_int("num_layers", num_layers)
        self.dense_layers = [
            DenseLayer(
                growth_rate,
                bottleneck=bottleneck,
                bottleneck_width=bottleneck_width,
                dropout_rate=self.dropout_rate,
                memory_efficient=memory_efficient,
                bn_momentum=self.bn_momentum,
                bn_epsilon=self.bn_epsilon,
                kernel_initializer=self.kernel_initializer,
                kernel_regularizer=self.kernel_regularizer,
                folded=self.folded,
                name=f"{self.name}_block{i + 1}",
                dtype=self.dtype_policy,
            )
            for i in range(num_layers)
        ]

    def build(self, input_shape: Any) -> None:
        channels = _channels(input_shape, "DenseBlock")
        spatial = tuple(input_shape[:-1])
        for i, layer in enumerate(self.dense_layers):
            layer.build((*spatial, channels + i * self.growth_rate))
        self._keep_frozen()

    def call(self, inputs: Any, training: Any = None) -> Any:
        if self.memory_efficient:
            # Keep the separate maps (linear memory); each layer concatenates
            # them inside its rematerialized function.
            features = [inputs]
            for layer in self.dense_layers:
                features.append(layer(features, training=training))
            return ops.concatenate(features, axis=-1)
        x = inputs
        for layer in self.dense_layers:
            x = ops.concatenate([x, layer(x, training=training)], axis=-1)
        return x

    def compute_output_shape(self, input_shape: Any) -> tuple[int | None, ...]:
        channels = _channels(input_shape, "DenseBlock")
        return (*tuple(input_shape[:-1]), channels + self.num_layers * self.growth_rate)

    def _own_config(self) -> dict[str, Any]:
        return {"num_layers": self.num_layers, **super()._own_config()}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TransitionLayer(_DenseNetLayer):
    """Transition between dense blocks: BN-ReLU-Conv1x1-[Dropout]-AvgPool 2x2/2.

    The 1x1 convolution has ``floor(C_in * compression)`` filters
    (DenseNet-C when ``compression < 1``). Sublayers are named
    ``f"{name}_bn"``, ``f"{name}_conv"``, ``f"{name}_pool"`` as in
    ``keras.applications``.

    Args:
        compression: Compression factor theta in (0, 1].
        dropout_rate: Dropout after the convolution, in [0, 1).
        bn_momentum: Momentum of the BatchNormalization moving statistics,
            in [0, 1) (Keras convention; default 0.9).
        bn_epsilon: BatchNormalization epsilon (default 1.001e-5).
        kernel_initializer: Initializer of the convolution kernel.
        kernel_regularizer: Optional regularizer of the convolution kernel.
        **kwargs: Base layer arguments (``name``, ``dtype``, ``trainable``).

    Raises:
        ValueError: If an argument is out of range, or if the input has so few
            channels that the compressed width would be zero.

    Example:
        >>> x = keras.random.normal((2, 8, 8, 16))
        >>> TransitionLayer(0.5)(x).shape
        (2, 4, 4, 8)
    """

    def __init__(
        self,
        compression: float = 0.5,
        dropout_rate: float = 0.0,
        bn_momentum: float = BN_MOMENTUM,
        bn_epsilon: float = BN_EPSILON,
        kernel_initializer: Any = "he_normal",
        kernel_regularizer: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            dropout_rate=dropout_rate,
            bn_momentum=bn_momentum,
            bn_epsilon=bn_epsilon,
            kernel_initializer=kernel_initializer,
            kernel_regularizer=kernel_regularizer,
            **kwargs,
        )
        self.compression = check_compression(compression)
        self.bn = _bn(f"{self.name}_bn", self)
        self.pool = keras.layers.AveragePooling2D(
            2, strides=2, name=f"{self.name}_pool", dtype=self.dtype_policy
        )
        self.dropout = (
            keras.layers.Dropout(self.dropout_rate, dtype=self.dtype_policy)
            if self.dropout_rate > 0
            else None
        )
        self.conv = None

    def _filters(self, channels: int) -> int:
        filters = compressed_channels(channels, self.compression)
        if filters < 1:
            raise ValueError(
                f"`compression`={self.compression} leaves no channels of the "
                f"{channels} input channels; use a larger compression."
            )
        return filters

    def build(self, input_shape: Any) -> None:
        channels = _channels(input_shape, "TransitionLayer")
        self.bn.build(input_shape)
        self.conv = _conv(self._filters(channels), 1, f"{self.name}_conv", self)
        self.conv.build(input_shape)
        self._keep_frozen()

    def call(self, inputs: Any, training: Any = None) -> Any:
        x = self.conv(ops.relu(self.bn(inputs, training=training)))
        if self.dropout is not None:
            x = self.dropout(x, training=training)
        return self.pool(x)

    def compute_output_shape(self, input_shape: Any) -> tuple[int | None, ...]:
        channels = _channels(input_shape, "TransitionLayer")
        batch, height, width = input_shape[:3]
        half = [None if s is None else s // 2 for s in (height, width)]
        return (batch, *half, self._filters(channels))

    def _own_config(self) -> dict[str, Any]:
        return {"compression": self.compression}
