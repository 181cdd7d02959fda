"""`DenseNetHyperModel`: a KerasTuner hypermodel trained with the package's recipe.

Its space is a `keras_densenet.tuning.space.SearchSpace`; its ``fit`` trains
on the base config's own data with `keras_densenet.training`'s pipeline (the
paper's SGD recipe, the dtype policy and XLA options of the base
`TrainConfig`), so a trial is a short ``keras-densenet train`` run, scored on
recalibrated BatchNorm statistics.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras

try:
    import keras_tuner
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "Hyperparameter search needs KerasTuner: pip install 'keras-densenet[tuning]'."
    ) from err

from keras_densenet._validation import check_int
from keras_densenet.architecture import count_trainable_params
from keras_densenet.batchnorm import BatchNormRecalibration
from keras_densenet.training import (
    TrainConfig,
    TrainingData,
    build_training_model,
    dtype_policy,
    load_training_data,
)
from keras_densenet.training.data import class_weight_map
from keras_densenet.tuning.space import (
    ARCH_FIELDS,
    MULTI_LABEL_OBJECTIVE,
    OBJECTIVE,
    SearchSpace,
)


class PrunedTrialError(keras_tuner.errors.FailedTrialError):
    """A configuration over the parameter budget, rejected before it is built."""


class DenseNetHyperModel(keras_tuner.HyperModel):
    """A KerasTuner search space of DenseNets, trained with the package's recipe.

    ``build(hp)`` draws ``bottleneck``, ``layers_per_block`` (the depth is
    ``6n + 4`` with bottlenecks, ``3n + 4`` without, so every draw is a valid
    3-block CIFAR DenseNet), ``growth_rate``, ``compression``,
    ``dropout_rate`` and ``learning_rate``, each with a default, so an empty
    ``HyperParameters`` gives DenseNet-BC (L=40, k=12, theta=0.5). Any
    dimension can be held with ``fixed={...}`` or with ``hp.Fixed`` before
    ``build``; ``fixed`` may also name ``depth`` (any valid depth) or
    ``blocks`` (layers per block, which selects the ImageNet stem as
    ``build_densenet(blocks=...)`` does) instead of ``layers_per_block``.
    Architecture or learning-rate options set in ``base`` are held fixed too.

    ``fit`` ignores data passed to it and trains on the base config's dataset
    with `keras_densenet.training.load_training_data` (loaded once per
    process), with the dtype policy, XLA mode, batch size, schedule and
    ``steps_per_epoch`` of ``base``. For Hyperband, a trial that continues an
    earlier one gets a fresh learning-rate schedule over its own epochs.

    Args:
        base: Training options (a `TrainConfig` or a dict of its fields); its
            ``preset`` is ignored, the searched values replace it.
        ranges: Name -> ``(low, high)`` (ints may add a step:
            ``(low, high, step)``) or, for ``bottleneck``, the allowed values.
            Names: see `SEARCH_SPACE`; missing names keep its ranges.
        fixed: Name -> value held for every trial; names of `SEARCH_SPACE`
            plus ``depth`` and ``blocks``.
        max_params: Optional budget of trainable parameters; larger
            configurations raise `PrunedTrialError` in ``build`` before any
            model is built.
        strategy: Optional ``tf.distribute`` strategy the models are built for.
        name: Optional name of the hypermodel.
        tunable: Whether the hyperparameters are added to the search space.

    Raises:
        ValueError: For an unknown name, a bad range (low > high, out of
            bounds, wrong shape), a bad fixed value, a name both ranged and
            fixed, a ``depth`` invalid for an allowed bottleneck setting, or a
            bad ``max_params``.

    Example:
        >>> hypermodel = DenseNetHyperModel(
        ...     {"dataset": "fashion_mnist_sample"}, ranges={"growth_rate": (8, 24)},
        ...     fixed={"bottleneck": True}, max_params=200_000)
        >>> model = hypermodel.build(keras_tuner.HyperParameters())
    """

    def __init__(
        self,
        base: TrainConfig | Mapping[str, Any] | None = None,
        *,
        ranges: Mapping[str, Any] | None = None,
        fixed: Mapping[str, Any] | None = None,
        max_params: int | None = None,
        strategy: Any = None,
        name: str | None = None,
        tunable: bool = True,
    ) -> None:
        super().__init__(name=name, tunable=tunable)
        if base is not None and not isinstance(base, (TrainConfig, Mapping)):
            raise ValueError(f"`base` must be a TrainConfig, a dict or None, got {base!r}.")
        self.base = TrainConfig() if base is None else TrainConfig.coerce(base)
        self.search_space = SearchSpace(
            {field: getattr(self.base, field) for field in ARCH_FIELDS}, ranges, fixed
        )
        if max_params is not None:
            check_int("max_params", max_params, 1, 2**62)
        self.max_params = max_params
        self.strategy = strategy
        self._data: TrainingData | None = None

    @property
    def space(self) -> dict[str, Any]:
        """The search space: name -> range or choices (see `SearchSpace`)."""
        return self.search_space.space

    @property
    def fixed(self) -> dict[str, Any]:
        """The values held fixed in every trial."""
        return self.search_space.fixed

    def architecture(self, hp: Any) -> dict[str, Any]:
        """Draws (or reads) one configuration's values from ``hp``.

        Args:
            hp: A ``keras_tuner.HyperParameters``.

        Returns:
            ``TrainConfig`` architecture fields (see `SearchSpace.architecture`).
        """
        return self.search_space.architecture(hp)

    def declare_hyperparameters(self, hp: Any) -> None:
        """Registers the whole space in ``hp`` without building a model.

        Args:
            hp: A ``keras_tuner.HyperParameters``.
        """
        self.architecture(hp)

    def trial_config(self, hp: Any, epochs: int | None = None) -> TrainConfig:
        """The training options of one configuration: ``base`` plus ``hp``'s values.

        Args:
            hp: A ``keras_tuner.HyperParameters``.
            epochs: Epochs to compile the learning-rate schedule for (default:
                the base config's).

        Returns:
            The validated `TrainConfig`.

        Raises:
            ValueError: If ``hp`` holds a value the model builder refuses.
        """
        # The searched values replace the base's preset and architecture.
        changes = {"preset": None, "depth": None, "blocks": None, **self.architecture(hp)}
        if epochs is not None:
            changes["epochs"] = epochs
        return self.base.replace(**changes)

    # -- data, size, build, fit ----------------------------------------------

    @property
    def data(self) -> TrainingData:
        """The base config's training data, loaded on first use."""
        if self._data is None:
            replicas = self.strategy.num_replicas_in_sync if self.strategy is not None else 1
            self._data = load_training_data(self.base, replicas)
        return self._data

    def trainable_params(self, config: TrainConfig) -> int:
        """Trainable parameters of one configuration on the base data (closed form).

        Args:
            config: A trial's `TrainConfig` (see `trial_config`).

        Returns:
            The count `count_trainable_params` gives for the data's input
            shape and number of classes.
        """
        info = self.data.info
        return count_trainable_params(
            None,
            **config.architecture(),
            input_shape=info.image_shape,
            num_classes=info.num_classes,
        )

    def check_budget(self, hp: Any) -> None:
        """Refuses a configuration over ``max_params`` (counted in closed form).

        Args:
            hp: A ``keras_tuner.HyperParameters`` with the configuration.

        Raises:
            PrunedTrialError: If ``max_params`` is set and exceeded.
        """
        if self.max_params is None:
            return
        params = self.trainable_params(self.trial_config(hp.copy()))
        if params > self.max_params:
            raise PrunedTrialError(
                f"pruned: {params:,} trainable parameters > max_params={self.max_params:,}"
            )

    def build(self, hp: Any) -> keras.Model:
        """Builds and compiles one configuration.

        Args:
            hp: A ``keras_tuner.HyperParameters``; Hyperband's
                ``tuner/epochs`` and ``tuner/initial_epoch`` values set the
                length of the learning-rate schedule.

        Returns:
            The compiled model.

        Raises:
            PrunedTrialError: If ``max_params`` is set and the configuration
                has more trainable parameters (nothing is built).
            ValueError: If the configuration does not fit the data.
        """
        epochs = None
        if "tuner/epochs" in hp.values:
            epochs = hp.values["tuner/epochs"] - hp.values.get("tuner/initial_epoch", 0)
        config = self.trial_config(hp, epochs=max(1, epochs) if epochs is not None else None)
        self.check_budget(hp)
        if config.seed is not None:
            keras.utils.set_random_seed(config.seed)
        with dtype_policy(config.precision):
            return build_training_model(config, self.data, self.strategy)

    def fit(self, hp: Any, model: keras.Model, *args: Any, **kwargs: Any) -> Any:
        """Trains one configuration on the base config's data.

        Args:
            hp: The trial's ``keras_tuner.HyperParameters``.
            model: The model `build` returned.
            *args: Must be empty: the data comes from the base config.
            **kwargs: ``callbacks``, ``epochs``, ``initial_epoch`` and
                ``verbose`` from the tuner.

        Returns:
            The ``keras.callbacks.History``.

        Raises:
            keras_tuner.errors.FatalValueError: If data or other ``fit``
                arguments were passed to ``search``.
        """
        allowed = {"callbacks", "epochs", "initial_epoch", "verbose"}
        if args or set(kwargs) - allowed:
            raise keras_tuner.errors.FatalValueError(
                "DenseNetHyperModel trains on the base config's dataset: pass no data to "
                f"search() (only {sorted(allowed)}), got {len(args)} positional and "
                f"{sorted(set(kwargs) - allowed)} keyword arguments."
            )
        data = self.data
        callbacks = [keras.callbacks.TerminateOnNaN(), *kwargs.get("callbacks", [])]
        if self.base.bn_recalibrate_steps:
            # Trials are scored on the BN statistics they will be used with.
            callbacks.append(
                BatchNormRecalibration(data.recalibration, self.base.bn_recalibrate_steps)
            )
        return model.fit(
            data.train,
            validation_data=data.validation,
            epochs=kwargs.get("epochs", self.base.epochs),
            initial_epoch=kwargs.get("initial_epoch", 0),
            steps_per_epoch=data.steps_per_epoch if self.base.steps_per_epoch else None,
            class_weight=class_weight_map(data),
            callbacks=callbacks,
            shuffle=False,  # the tf.data pipeline shuffles
            verbose=kwargs.get("verbose", self.base.verbose),
        )

    @property
    def objective(self) -> str:
        """What trials are scored by: ``val_accuracy``, or ``val_auroc`` on a label file."""
        from keras_densenet.data.labels import is_label_file

        return MULTI_LABEL_OBJECTIVE if is_label_file(self.base.dataset) else OBJECTIVE

    def describe(self) -> dict[str, Any]:
        """The search space as JSON-ready data (ranges, choices and fixed values)."""
        return {"space": self.search_space.describe(), "max_params": self.max_params}


__all__ = ["DenseNetHyperModel", "PrunedTrialError"]
