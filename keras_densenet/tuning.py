"""Hyperparameter search over DenseNet architectures with KerasTuner.

`DenseNetHyperModel` is a ``keras_tuner.HyperModel`` whose space covers the
growth rate k, the transition compression theta, the depth of the paper's
3-block CIFAR layout (drawn as ``layers_per_block`` n, so only valid depths
``6n + 4`` with bottlenecks and ``3n + 4`` without are ever built), bottleneck
on/off, dropout and the learning rate. Its ``fit`` trains with the package's
own pipeline (`keras_densenet.training.load_training_data` and
`keras_densenet.training.build_training_model`: the paper's SGD recipe, the
dtype policy and XLA options of the base `TrainConfig`), so a trial is a short
``keras-densenet train`` run.

`tune` runs Hyperband (default), Bayesian optimization (which needs
scikit-learn: ``pip install 'keras-tuner[bayesian]'``) or random search and
leaves in ``out``::

    tuning/x/
      search/                    # KerasTuner's project: oracle.json, trial_*/
      tune_config.json           # what was asked (a restart must ask the same)
      results.csv  results.json  # every trial, ranked best first
      accuracy_vs_params.png     # validation accuracy against trainable params
      best_config.json           # a TrainConfig dict: keras-densenet train --config
      best.keras                 # the best trial's model at its best epoch

Parameter budget: with ``max_params`` every configuration's trainable
parameters are counted in closed form (`count_trainable_params`, no model is
built). One over the budget is refused before anything is built:
``DenseNetHyperModel.build`` raises `PrunedTrialError` (a
``keras_tuner.errors.FailedTrialError``), and the tuners `make_tuner` makes
check the budget before KerasTuner even clears the session for a build, so
the oracle records a ``FAILED`` trial (``PRUNED`` in the results) in
milliseconds. Pruned trials count towards ``max_trials`` but not towards
KerasTuner's limit of consecutive failures (``max_consecutive_failed_trials``),
which is kept for real crashes.

Resuming: the search state lives in ``out/search`` and is reloaded when the
same ``out`` is used again (KerasTuner's ``overwrite=False``): finished trials
are kept, a trial that was running when the process died is run again, and
the search goes on to ``max_trials``. ``overwrite=True`` (``--overwrite``)
starts afresh.

Distributed search uses KerasTuner's own chief/worker mode: start the same
command (same ``out`` on a shared file system, same options) once as the
chief and once per worker, with these environment variables::

    KERASTUNER_ORACLE_IP=10.0.0.1 KERASTUNER_ORACLE_PORT=8000 \\
        KERASTUNER_TUNER_ID=chief keras-densenet tune ... --out /shared/tuning/x
    KERASTUNER_ORACLE_IP=10.0.0.1 KERASTUNER_ORACLE_PORT=8000 \\
        KERASTUNER_TUNER_ID=worker0 keras-densenet tune ... --out /shared/tuning/x

Start every process with the same options: the chief records them in
``tune_config.json``, and a worker builds each trial from its own options and
the hyperparameters the chief sends. The chief (any ``KERASTUNER_TUNER_ID``
containing ``"chief"``) only serves the oracle over gRPC (``grpcio``,
installed with TensorFlow) and trains nothing; each worker asks it for trials,
trains them, writes checkpoints into the shared ``out`` and reports back. When
the search is over the chief writes the results, ``best_config.json`` and
``best.keras``; a worker just returns. KerasTuner's chief checks for finished
workers every 20 seconds, so it may exit up to 20 s after the last worker, and
with Hyperband a worker waiting for a round to finish asks the chief again
without pause (KerasTuner 1.4 has no back-off).

Example:
    >>> summary = tune(
    ...     {"dataset": "fashion_mnist_sample", "steps_per_epoch": 20},
    ...     tuner="random", max_trials=4, max_epochs=2, out="tuning/x")
    >>> summary["best"]["val_accuracy"], summary["best_config"]
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import keras

try:
    import keras_tuner
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "Hyperparameter search needs KerasTuner: pip install 'keras-densenet[tuning]'."
    ) from err

from keras_densenet import _io, rundir
from keras_densenet._io import write_json
from keras_densenet.batchnorm import BatchNormRecalibration, recalibrate_batchnorm
from keras_densenet.layers import compressed_channels
from keras_densenet.models import resolve_config
from keras_densenet.training import (
    TrainConfig,
    TrainingData,
    build_training_model,
    dtype_policy,
    load_training_data,
    make_strategy,
)

#: The tuners `tune` can run.
TUNERS = ("hyperband", "bayesian", "random")
#: The tuner's objective: the best validation accuracy of a trial's epochs.
OBJECTIVE = "val_accuracy"
#: KerasTuner's project folder inside ``out``.
PROJECT_NAME = "search"
#: What each trial records next to KerasTuner's ``trial.json``.
TRIAL_INFO = "densenet_trial.json"

#: The default search space: name -> range (or choices), step, sampling and
#: the default value (the defaults give DenseNet-BC with L=40, k=12).
SEARCH_SPACE: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "growth_rate": MappingProxyType({"range": (8, 48), "step": 4, "default": 12}),
        "compression": MappingProxyType({"range": (0.3, 1.0), "default": 0.5}),
        "layers_per_block": MappingProxyType({"range": (1, 16), "step": 1, "default": 6}),
        "bottleneck": MappingProxyType({"choices": (True, False), "default": True}),
        "dropout_rate": MappingProxyType({"range": (0.0, 0.3), "default": 0.0}),
        "learning_rate": MappingProxyType(
            {"range": (0.01, 0.3), "sampling": "log", "default": 0.1}
        ),
    }
)
#: Names that can only be fixed (they replace ``layers_per_block``).
FIXED_ONLY = ("depth", "blocks")
_INT_NAMES = ("growth_rate", "layers_per_block")
_ARCH_FIELDS = (
    "depth",
    "blocks",
    "growth_rate",
    "compression",
    "bottleneck",
    "dropout_rate",
    "learning_rate",
)
_CSV_COLUMNS = (
    "rank",
    "trial_id",
    "status",
    "val_accuracy",
    "trainable_params",
    "epochs",
    "time_s",
    "depth",
    "blocks",
    "growth_rate",
    "compression",
    "bottleneck",
    "dropout_rate",
    "learning_rate",
    "tuner_id",
    "note",
)


class PrunedTrialError(keras_tuner.errors.FailedTrialError):
    """A configuration over the parameter budget, rejected before it is built."""


# ---------------------------------------------------------------------------
# Closed-form parameter count


def count_trainable_params(
    preset: str | None = None, *, include_top: bool = True, **overrides: Any
) -> int:
    """Trainable parameters of a DenseNet, counted without building it.

    Takes the architecture arguments of `keras_densenet.build_densenet` and
    gives exactly ``sum(prod(w.shape) for w in model.trainable_weights)`` of
    the model it would build (BN moving statistics and the normalization
    layer are not trainable).

    Args:
        preset: Optional name in `keras_densenet.models.PRESETS`.
        include_top: Count the classifier.
        **overrides: Architecture arguments of ``build_densenet`` (``depth``,
            ``blocks``, ``growth_rate``, ``compression``, ``bottleneck``,
            ``bottleneck_width``, ``num_init_features``, ``stem``,
            ``input_shape``, ``num_classes``, ...).

    Returns:
        The number of trainable parameters.

    Raises:
        ValueError: As `keras_densenet.models.resolve_config`.
        TypeError: As `keras_densenet.models.resolve_config`.

    Example:
        >>> count_trainable_params("densenet_bc_100_12")
        769162
    """
    config = resolve_config(preset, **overrides)
    k, width = config["growth_rate"], config["bottleneck_width"] * config["growth_rate"]
    channels = config["num_init_features"]
    in_channels = config["input_shape"][-1]
    if config["stem"] == "cifar":
        total = 9 * in_channels * channels  # 3x3 conv, no bias
    else:
        total = 49 * in_channels * channels + 2 * channels  # 7x7 conv + BN
    blocks = config["blocks"]
    for i, layers in enumerate(blocks):
        for _ in range(layers):
            total += 2 * channels  # BN gamma and beta of the layer's input
            if config["bottleneck"]:
                total += channels * width + 2 * width + 9 * width * k
            else:
                total += 9 * channels * k
            channels += k
        if i < len(blocks) - 1:
            out = compressed_channels(channels, config["compression"])
            total += 2 * channels + channels * out
            channels = out
    total += 2 * channels  # final BN
    if include_top:
        total += channels * config["num_classes"] + config["num_classes"]
    return total


# ---------------------------------------------------------------------------
# The search space


def _check_value(name: str, value: Any, where: str | None = None) -> Any:
    """Validates one value of a search dimension; returns it normalized.

    ``where`` names the argument in the message, e.g. ``ranges['growth_rate'][0]``.
    """
    label = f"`{where or name}`"
    if name in _INT_NAMES:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{label} must be a positive integer, got {value!r}.")
        return value
    if name == "bottleneck":
        if not isinstance(value, bool):
            raise ValueError(f"{label} must be True or False, got {value!r}.")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"{label} must be a number, got {value!r}.")
    if name == "compression" and not 0.0 < value <= 1.0:
        raise ValueError(f"{label} must be in (0, 1], got {value!r}.")
    if name == "dropout_rate" and not 0.0 <= value < 1.0:
        raise ValueError(f"{label} must be in [0, 1), got {value!r}.")
    if name == "learning_rate" and not (0.0 < value < math.inf):
        raise ValueError(f"{label} must be a finite number > 0, got {value!r}.")
    return float(value)


def _check_range(name: str, spec: Any) -> dict[str, Any]:
    """Turns a user's range for one dimension into a full space entry."""
    entry = dict(SEARCH_SPACE[name])
    if name == "bottleneck":
        if isinstance(spec, bool):
            spec = (spec,)
        if isinstance(spec, (str, bytes)) or not isinstance(spec, Sequence) or not spec:
            raise ValueError(
                f"`ranges['bottleneck']` must be True, False or a non-empty sequence of them, "
                f"got {spec!r}."
            )
        choices = tuple(dict.fromkeys(_check_value(name, v, "ranges['bottleneck']") for v in spec))
        entry["choices"] = choices
        entry["default"] = entry["default"] if entry["default"] in choices else choices[0]
        return entry
    steps_allowed = name in _INT_NAMES
    shape = "(low, high) or (low, high, step)" if steps_allowed else "(low, high)"
    if (
        isinstance(spec, (str, bytes))
        or not isinstance(spec, Sequence)
        or len(spec) not in ((2, 3) if steps_allowed else (2,))
    ):
        raise ValueError(f"`ranges[{name!r}]` must be {shape}, got {spec!r}.")
    low = _check_value(name, spec[0], f"ranges[{name!r}][0]")
    high = _check_value(name, spec[1], f"ranges[{name!r}][1]")
    if low > high:
        raise ValueError(
            f"`ranges[{name!r}]` has low > high ({low!r} > {high!r}): give (low, high)."
        )
    entry["range"] = (low, high)
    if len(spec) == 3:
        step = spec[2]
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise ValueError(f"`ranges[{name!r}]` step must be a positive integer, got {step!r}.")
        entry["step"] = step
    default = min(max(entry["default"], low), high)
    if steps_allowed:  # snap to the grid low, low + step, ...
        step = entry["step"]
        default = min(low + round((default - low) / step) * step, low + (high - low) // step * step)
    entry["default"] = default
    return entry


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
        if base is None:
            base = TrainConfig()
        elif not isinstance(base, TrainConfig):
            if not isinstance(base, Mapping):
                raise ValueError(f"`base` must be a TrainConfig, a dict or None, got {base!r}.")
            base = TrainConfig.from_dict(base)
        ranges = _check_mapping("ranges", ranges)
        fixed = _check_mapping("fixed", fixed)
        known = (*SEARCH_SPACE, *FIXED_ONLY)
        for what, names, allowed in (
            ("ranges", ranges, tuple(SEARCH_SPACE)),
            ("fixed", fixed, known),
        ):
            unknown = sorted(set(names) - set(allowed))
            if unknown:
                raise ValueError(
                    f"Unknown search-space names in `{what}`: {unknown}; known: {list(allowed)}."
                )
        both = sorted(set(ranges) & set(fixed))
        if both:
            raise ValueError(f"{both} given in both `ranges` and `fixed`: give each in one.")
        fixed = dict(fixed)
        for field in _ARCH_FIELDS:  # the base config's own choices are held fixed
            value = getattr(base, field)
            if value is None:
                continue
            value = tuple(value) if field == "blocks" else value
            given = fixed.get(field)
            if field in fixed and (tuple(given) if field == "blocks" else given) != value:
                raise ValueError(
                    f"`base` sets {field}={value!r} but `fixed` sets {field}={fixed[field]!r}."
                )
            if field in ranges:
                raise ValueError(
                    f"`base` sets {field}={value!r}, which holds it fixed, but `ranges` "
                    f"searches it: drop one."
                )
            fixed[field] = value

        layout = [name for name in FIXED_ONLY if name in fixed]
        if layout and "layers_per_block" in ranges:
            raise ValueError(
                f"`ranges['layers_per_block']` has no effect with a fixed {layout[0]}: drop one."
            )
        space = {name: _check_range(name, ranges[name]) for name in ranges}
        for name in SEARCH_SPACE:
            space.setdefault(name, dict(SEARCH_SPACE[name]))
        self.fixed = self._check_fixed(fixed, space)
        self.space = space
        self.base = base
        if max_params is not None and (
            isinstance(max_params, bool) or not isinstance(max_params, int) or max_params < 1
        ):
            raise ValueError(
                f"`max_params` must be a positive integer or None, got {max_params!r}."
            )
        self.max_params = max_params
        self.strategy = strategy
        self._data: TrainingData | None = None

    @staticmethod
    def _check_fixed(fixed: dict[str, Any], space: dict[str, Any]) -> dict[str, Any]:
        checked: dict[str, Any] = {}
        for name, value in fixed.items():
            if name in SEARCH_SPACE:
                checked[name] = _check_value(name, value, f"fixed[{name!r}]")
        layouts = [n for n in ("layers_per_block", *FIXED_ONLY) if n in fixed]
        if len(layouts) > 1:
            raise ValueError(
                f"`fixed` may hold only one of layers_per_block, depth and blocks, got {layouts}."
            )
        if "blocks" in fixed:
            blocks = fixed["blocks"]
            if (
                isinstance(blocks, (str, bytes))
                or not isinstance(blocks, Sequence)
                or not blocks
                or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in blocks)
            ):
                raise ValueError(
                    f"`fixed['blocks']` must be a non-empty sequence of positive ints, e.g. "
                    f"(6, 12, 24, 16); got {blocks!r}."
                )
            checked["blocks"] = tuple(blocks)
        if "depth" in fixed:
            depth = fixed["depth"]
            bottlenecks = (
                (checked["bottleneck"],)
                if "bottleneck" in checked
                else space["bottleneck"]["choices"]
            )
            for bottleneck in bottlenecks:
                divisor = 6 if bottleneck else 3
                if (
                    isinstance(depth, bool)
                    or not isinstance(depth, int)
                    or depth < 4 + divisor
                    or (depth - 4) % divisor
                ):
                    raise ValueError(
                        f"`fixed['depth']`={depth!r} is not a valid 3-block depth "
                        f"{'with' if bottleneck else 'without'} bottleneck: (depth - 4) must be "
                        f"a positive multiple of {divisor}, e.g. {4 + 6 * divisor}. Fix "
                        "`bottleneck` too, or pick a depth valid for both (4 + 6n)."
                    )
            checked["depth"] = depth
        return checked

    # -- drawing -----------------------------------------------------------

    def _dimension(self, hp: Any, name: str) -> Any:
        if name in self.fixed:
            return hp.Fixed(name, self.fixed[name])
        entry = self.space[name]
        if name == "bottleneck":
            if len(entry["choices"]) == 1:
                return hp.Fixed(name, entry["choices"][0])
            return hp.Boolean(name, default=entry["default"])
        low, high = entry["range"]
        if low == high:
            return hp.Fixed(name, low)
        if name in _INT_NAMES:
            return hp.Int(name, low, high, step=entry["step"], default=entry["default"])
        return hp.Float(
            name, low, high, sampling=entry.get("sampling", "linear"), default=entry["default"]
        )

    def architecture(self, hp: Any) -> dict[str, Any]:
        """Draws (or reads) one configuration's values from ``hp``.

        Args:
            hp: A ``keras_tuner.HyperParameters``.

        Returns:
            ``TrainConfig`` architecture fields: ``depth`` or ``blocks``,
            ``growth_rate``, ``compression``, ``bottleneck``,
            ``dropout_rate`` and ``learning_rate``.
        """
        bottleneck = self._dimension(hp, "bottleneck")
        layout: dict[str, Any]
        if "blocks" in self.fixed:
            text = hp.Fixed("blocks", ",".join(map(str, self.fixed["blocks"])))
            layout = {"blocks": [int(b) for b in text.split(",")]}
        elif "depth" in self.fixed:
            layout = {"depth": hp.Fixed("depth", self.fixed["depth"])}
        elif "depth" in hp:  # fixed by the caller with hp.Fixed("depth", ...)
            layout = {"depth": hp.get("depth")}
        else:
            layers = self._dimension(hp, "layers_per_block")
            layout = {"depth": (6 if bottleneck else 3) * layers + 4}
        return {
            **layout,
            "growth_rate": self._dimension(hp, "growth_rate"),
            "compression": self._dimension(hp, "compression"),
            "bottleneck": bottleneck,
            "dropout_rate": self._dimension(hp, "dropout_rate"),
            "learning_rate": self._dimension(hp, "learning_rate"),
        }

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
        options = {
            **self.base.to_dict(),
            "preset": None,
            "depth": None,
            "blocks": None,
            **self.architecture(hp),
        }
        if epochs is not None:
            options["epochs"] = epochs
        return TrainConfig.from_dict(options)

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
            callbacks=callbacks,
            shuffle=False,  # the tf.data pipeline shuffles
            verbose=kwargs.get("verbose", self.base.verbose),
        )

    def describe(self) -> dict[str, Any]:
        """The search space as JSON-ready data (ranges, choices and fixed values)."""
        space = {}
        for name, entry in self.space.items():
            if name in self.fixed:
                space[name] = {"fixed": self.fixed[name]}
            else:
                space[name] = {k: list(v) if isinstance(v, tuple) else v for k, v in entry.items()}
        for name in FIXED_ONLY:
            if name in self.fixed:
                value = self.fixed[name]
                space[name] = {"fixed": list(value) if isinstance(value, tuple) else value}
                space.pop("layers_per_block", None)
        return {"space": space, "max_params": self.max_params}


def _check_mapping(name: str, value: Any) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"`{name}` must be a dict of search-space names or None, got {value!r}.")
    return value


# ---------------------------------------------------------------------------
# Tuners: KerasTuner's three, with pruning-aware oracles and per-trial records


def _is_pruned(trial: Any) -> bool:
    return PrunedTrialError.__name__ in (trial.message or "")


class _PruneAwareOracle:
    """Counts only real crashes, not pruned trials, as consecutive failures."""

    def _check_consecutive_failures(self) -> None:
        consecutive = 0
        for trial_id in self.end_order:
            trial = self.trials[trial_id]
            if trial.status == "FAILED":
                if _is_pruned(trial):
                    continue  # cheap and expected: neither counts nor resets
                consecutive += 1
            else:
                consecutive = 0
            if consecutive == self.max_consecutive_failed_trials:
                raise RuntimeError(
                    f"Number of consecutive failures exceeded the limit of "
                    f"{self.max_consecutive_failed_trials}.\n{trial.message or ''}"
                )


class _HyperbandOracle(_PruneAwareOracle, keras_tuner.oracles.HyperbandOracle):
    def __init__(self, *, max_trials: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_trials = max_trials  # Hyperband has no cap of its own


class _RandomSearchOracle(_PruneAwareOracle, keras_tuner.oracles.RandomSearchOracle):
    pass


class _BayesianOracle(_PruneAwareOracle, keras_tuner.oracles.BayesianOptimizationOracle):
    pass


class _DenseNetTuner:
    """Tuner mixin: cheap space declaration, and a record of each trial."""

    def __init__(self, oracle: Any, hypermodel: DenseNetHyperModel, **kwargs: Any) -> None:
        # The KerasTuner subclasses only build their oracle in __init__; ours
        # is built by `make_tuner`, so go straight to the base Tuner.
        keras_tuner.Tuner.__init__(self, oracle=oracle, hypermodel=hypermodel, **kwargs)

    def _populate_initial_space(self) -> None:
        # KerasTuner builds a whole model here to discover the space; the
        # space has no conditional parts, so declaring it is enough.
        hp = self.oracle.get_space()
        self.hypermodel.declare_hyperparameters(hp)
        self.oracle.update_space(hp)

    def _build_hypermodel(self, hp: Any) -> keras.Model:
        # Checkpoints hold SGD's slots but a new model's optimizer is unbuilt:
        # Keras warns and skips them, which is what a fresh schedule wants.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            return super()._build_hypermodel(hp)

    def load_model(self, trial: Any) -> keras.Model:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            model = super().load_model(trial)
        # Load again into a built optimizer, so the trained SGD state (momentum,
        # step count) comes along and a saved model reloads without warnings.
        with keras_tuner.engine.tuner.maybe_distribute(self.distribution_strategy):
            model.optimizer.build(model.trainable_variables)
            model.load_weights(self._get_checkpoint_fname(trial.trial_id))
        return model

    def _try_run_and_update_trial(self, trial: Any, *args: Any, **kwargs: Any) -> None:
        # Prune here, before KerasTuner clears the session and collects garbage
        # for a build (about a second) and prints the traceback of every failed
        # trial; the oracle still gets a FAILED trial, as from FailedTrialError.
        started = time.perf_counter()
        try:
            self.hypermodel.check_budget(trial.hyperparameters)
        except PrunedTrialError as err:
            trial.status = keras_tuner.engine.trial.TrialStatus.FAILED
            trial.message = f"{type(err).__module__}.{type(err).__name__}: {err}"
            info = {"tuner_id": self.tuner_id, "time_s": round(time.perf_counter() - started, 3)}
            write_json(os.path.join(self.get_trial_dir(trial.trial_id), TRIAL_INFO), info)
            if getattr(self.oracle, "verbose", 1):  # a worker's oracle client has none
                print(f"Trial {trial.trial_id} {err}")
            return
        super()._try_run_and_update_trial(trial, *args, **kwargs)

    def run_trial(self, trial: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        info: dict[str, Any] = {"tuner_id": self.tuner_id}
        try:
            results = super().run_trial(trial, *args, **kwargs)
            epochs = [h.epoch[-1] + 1 for h in results if getattr(h, "epoch", None)]
            info["epochs"] = max(epochs) if epochs else None
            return results
        finally:
            info["time_s"] = round(time.perf_counter() - started, 3)
            write_json(os.path.join(self.get_trial_dir(trial.trial_id), TRIAL_INFO), info)


class _Hyperband(_DenseNetTuner, keras_tuner.Hyperband):
    pass


class _RandomSearch(_DenseNetTuner, keras_tuner.RandomSearch):
    pass


class _Bayesian(_DenseNetTuner, keras_tuner.BayesianOptimization):
    pass


def _check_search_args(
    tuner: Any, max_trials: Any, max_epochs: Any, factor: Any, max_failures: Any
) -> None:
    if tuner not in TUNERS:
        raise ValueError(f"`tuner` must be one of {TUNERS}, got {tuner!r}.")
    for name, value, low in (
        ("max_trials", max_trials, 1),
        ("max_epochs", max_epochs, 1),
        ("factor", factor, 2),
        ("max_consecutive_failed_trials", max_failures, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"`{name}` must be an integer >= {low}, got {value!r}.")


def make_tuner(
    hypermodel: DenseNetHyperModel,
    tuner: str = "hyperband",
    *,
    max_trials: int = 10,
    max_epochs: int = 20,
    factor: int = 3,
    directory: str | os.PathLike = "tuning/default",
    overwrite: bool = False,
    seed: int | None = None,
    max_consecutive_failed_trials: int = 3,
) -> keras_tuner.Tuner:
    """Creates a KerasTuner tuner for a `DenseNetHyperModel`.

    Args:
        hypermodel: The search space.
        tuner: ``"hyperband"``, ``"bayesian"`` or ``"random"``.
        max_trials: Most trials to run (Hyperband stops after this many too).
        max_epochs: Hyperband's largest number of epochs per model.
        factor: Hyperband's reduction factor (>= 2).
        directory: Where KerasTuner keeps its project (``directory/search``).
        overwrite: Start afresh instead of reloading an existing project.
        seed: The oracle's random seed.
        max_consecutive_failed_trials: Crashed trials in a row (pruned ones
            not counted) that stop the search.

    Returns:
        The tuner (a subclass of ``keras_tuner.Hyperband``,
        ``BayesianOptimization`` or ``RandomSearch``).

    Raises:
        ValueError: For an unknown tuner or a bad count.
    """
    _check_search_args(tuner, max_trials, max_epochs, factor, max_consecutive_failed_trials)
    common = {
        "objective": keras_tuner.Objective(OBJECTIVE, direction="max"),
        "seed": seed,
        "max_consecutive_failed_trials": max_consecutive_failed_trials,
    }
    if tuner == "hyperband":
        oracle = _HyperbandOracle(
            max_trials=max_trials, max_epochs=max_epochs, factor=factor, **common
        )
        cls: type = _Hyperband
    elif tuner == "bayesian":
        oracle, cls = _BayesianOracle(max_trials=max_trials, **common), _Bayesian
    else:
        oracle, cls = _RandomSearchOracle(max_trials=max_trials, **common), _RandomSearch
    return cls(
        oracle,
        hypermodel,
        directory=os.fspath(directory),
        project_name=PROJECT_NAME,
        overwrite=overwrite,
        distribution_strategy=hypermodel.strategy,
    )


# ---------------------------------------------------------------------------
# Results


def _role() -> str:
    """``"chief"``, ``"worker"`` or ``"standalone"`` from KerasTuner's env vars."""
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return "standalone"
    for var in ("KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID"):
        if not os.environ.get(var):
            raise ValueError(
                f"KERASTUNER_ORACLE_IP is set, so {var} must be set too (distributed search)."
            )
    return "chief" if "chief" in os.environ["KERASTUNER_TUNER_ID"] else "worker"


def _read_json(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def _last_line(message: str | None) -> str:
    lines = [line.strip() for line in (message or "").splitlines() if line.strip()]
    if not lines:
        return ""
    line = lines[-1]
    prefix = f"{PrunedTrialError.__module__}.{PrunedTrialError.__name__}: "
    return line[len(prefix) :] if line.startswith(prefix) else line


def collect_results(tuner: keras_tuner.Tuner, hypermodel: DenseNetHyperModel) -> list[dict]:
    """One row per trial of a (chief's or standalone) tuner, best first.

    Completed trials come first, by validation accuracy (then fewer
    parameters); failed, pruned and unfinished ones follow by trial id.

    Args:
        tuner: A tuner `make_tuner` made (not a distributed worker's).
        hypermodel: Its hypermodel.

    Returns:
        Rows with ``rank``, ``trial_id``, ``status`` (``COMPLETED``,
        ``PRUNED``, ``FAILED``, ``RUNNING``, ...), ``val_accuracy``,
        ``trainable_params``, ``epochs``, ``time_s``, ``tuner_id``,
        ``note``, ``architecture`` and ``hyperparameters``.
    """
    rows = []
    for trial in tuner.oracle.trials.values():
        hp = trial.hyperparameters.copy()
        architecture = hypermodel.architecture(hp)
        config = hypermodel.trial_config(hp)
        info = _read_json(os.path.join(tuner.get_trial_dir(trial.trial_id), TRIAL_INFO)) or {}
        status = "PRUNED" if _is_pruned(trial) else str(trial.status)
        completed = status == "COMPLETED"
        epochs = info.get("epochs") if completed else None
        if completed and epochs is None:
            epochs = trial.hyperparameters.values.get("tuner/epochs", hypermodel.base.epochs)
        resolved = resolve_config(None, **config.architecture())
        rows.append(
            {
                "rank": None,
                "trial_id": trial.trial_id,
                "status": status,
                "val_accuracy": float(trial.score) if completed else None,
                "trainable_params": hypermodel.trainable_params(config),
                "epochs": epochs,
                "time_s": info.get("time_s"),
                "tuner_id": info.get("tuner_id"),
                "note": "" if completed else _last_line(trial.message),
                "architecture": {
                    **architecture,
                    "depth": config.depth,
                    "blocks": list(resolved["blocks"]),
                },
                "hyperparameters": dict(trial.hyperparameters.values),
            }
        )
    done = sorted(
        (r for r in rows if r["status"] == "COMPLETED"),
        key=lambda r: (-r["val_accuracy"], r["trainable_params"], r["trial_id"]),
    )
    for rank, row in enumerate(done, 1):
        row["rank"] = rank
    rest = sorted((r for r in rows if r["status"] != "COMPLETED"), key=lambda r: r["trial_id"])
    return done + rest


def write_results(rows: Sequence[Mapping[str, Any]], out: str | os.PathLike) -> tuple[str, str]:
    """Writes ``results.csv`` and ``results.json`` atomically.

    Args:
        rows: Rows from `collect_results`.
        out: The tuning directory.

    Returns:
        The paths of the CSV and JSON files.
    """
    out = os.fspath(out)
    json_path = os.path.join(out, "results.json")
    write_json(json_path, list(rows))
    csv_path = os.path.join(out, "results.csv")
    with _io.atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=_CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            flat = {k: row.get(k) for k in _CSV_COLUMNS}
            arch = row["architecture"]
            flat.update({k: arch.get(k) for k in _CSV_COLUMNS if k in arch})
            flat["blocks"] = "-".join(map(str, arch["blocks"]))
            writer.writerow({k: "" if v is None else v for k, v in flat.items()})
    return csv_path, json_path


def plot_results(
    rows: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    *,
    max_params: int | None = None,
    title: str = "",
) -> str:
    """Scatter of validation accuracy against trainable parameters.

    Completed trials are coloured by growth rate; the best is starred; the
    parameter budget, if any, is a dashed line and pruned trials are counted
    in the legend. Written atomically with matplotlib's Agg backend.

    Args:
        rows: Rows from `collect_results`.
        path: The PNG file.
        max_params: The parameter budget to draw, if any.
        title: Figure title.

    Returns:
        ``path``.
    """
    from keras_densenet.viz import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    done = [r for r in rows if r["status"] == "COMPLETED"]
    if done:
        growth = [r["architecture"]["growth_rate"] for r in done]
        points = ax.scatter(
            [r["trainable_params"] for r in done],
            [r["val_accuracy"] for r in done],
            c=growth,
            cmap="viridis",
            vmin=min(growth) - (min(growth) == max(growth)) * 2,  # one k: a readable bar
            vmax=max(growth) + (min(growth) == max(growth)) * 2,
            s=45,
            edgecolors="black",
            linewidths=0.5,
            label=f"completed trials ({len(done)})",
        )
        colorbar = fig.colorbar(points, ax=ax, label="growth rate k")
        colorbar.locator = plt.MaxNLocator(integer=True)
        colorbar.update_ticks()
        if len(done) <= 30:  # label points while that stays readable
            for r in done:
                ax.annotate(
                    r["trial_id"],
                    (r["trainable_params"], r["val_accuracy"]),
                    xytext=(4, 4),
                    textcoords="offset points",
                    fontsize=7,
                )
        best = done[0]
        ax.scatter(
            [best["trainable_params"]],
            [best["val_accuracy"]],
            marker="*",
            s=320,
            c="red",
            edgecolors="black",
            zorder=3,
            label=f"best: trial {best['trial_id']} ({best['val_accuracy']:.4f})",
        )
    pruned = [r for r in rows if r["status"] == "PRUNED"]
    if pruned:  # no accuracy: marked along the bottom edge at their size
        ax.scatter(
            [r["trainable_params"] for r in pruned],
            [0.03] * len(pruned),
            transform=ax.get_xaxis_transform(),
            marker="x",
            c="gray",
            label=f"pruned before building ({len(pruned)})",
        )
    if max_params is not None:
        ax.axvline(max_params, color="gray", linestyle="--", label=f"budget {max_params:,}")
    sizes = [r["trainable_params"] for r in (*done, *pruned)] + (
        [max_params] if max_params is not None else []
    )
    if sizes:  # the pruned marks do not widen the axis on their own
        ax.set_xscale("log")
        ax.set_xlim(min(sizes) / 1.6, max(sizes) * 1.6)
    if not done:
        ax.set_ylim(0.0, 1.0)
    failed = sum(r["status"] not in ("COMPLETED", "PRUNED") for r in rows)
    if failed:
        ax.plot([], [], " ", label=f"failed or unfinished: {failed}")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel("best validation accuracy")
    ax.grid(alpha=0.3, which="both")
    ax.margins(y=0.12)
    ax.legend(loc="best", fontsize=8, framealpha=0.8)
    ax.set_title(title or f"{len(rows)} trials")
    return _save(fig, path)


# ---------------------------------------------------------------------------
# The whole search


def _prepare_out(out: str, record: dict[str, Any], overwrite: bool) -> None:
    rundir.ensure_writable_dir(out)
    path = os.path.join(out, "tune_config.json")
    previous = None if overwrite else _read_json(path)
    has_project = os.path.exists(os.path.join(out, PROJECT_NAME, "oracle.json"))
    if previous is None and has_project and not overwrite:
        raise ValueError(
            f"`out` {out!r} holds a search without tune_config.json: pass overwrite=True "
            "(--overwrite) or choose another directory."
        )
    if previous is not None:
        # More trials may be asked for when resuming; anything else would mix
        # two different searches in one oracle.
        ignored = {"max_trials"}
        now = json.loads(json.dumps(record, default=str))
        changed = {
            k: (previous.get(k), v)
            for k, v in now.items()
            if k not in ignored and previous.get(k) != v
        }
        if changed:
            raise ValueError(
                f"`out` {out!r} holds a search with other options; resume it with the same "
                f"ones, or pass overwrite=True (--overwrite). Differences (was, now): {changed}."
            )
    write_json(path, record)


def tune(
    base: TrainConfig | Mapping[str, Any] | None = None,
    *,
    tuner: str = "hyperband",
    max_trials: int = 10,
    max_epochs: int = 20,
    factor: int = 3,
    ranges: Mapping[str, Any] | None = None,
    fixed: Mapping[str, Any] | None = None,
    max_params: int | None = None,
    out: str | os.PathLike = "tuning/default",
    overwrite: bool = False,
    callbacks: Sequence[keras.callbacks.Callback] | None = None,
    max_consecutive_failed_trials: int = 3,
) -> dict[str, Any]:
    """Searches DenseNet architectures and training settings with KerasTuner.

    Args:
        base: Training options (`TrainConfig` or dict) shared by all trials:
            dataset, batch size, precision, XLA, ``steps_per_epoch``, seed...
            Its ``epochs`` is replaced by ``max_epochs``.
        tuner: ``"hyperband"`` (default), ``"bayesian"`` or ``"random"``.
        max_trials: Most trials to run.
        max_epochs: Epochs per trial (Hyperband: the most for one model).
        factor: Hyperband's reduction factor.
        ranges: Search ranges (see `DenseNetHyperModel`).
        fixed: Values held fixed (see `DenseNetHyperModel`).
        max_params: Optional trainable-parameter budget; larger
            configurations are pruned before they are built.
        out: The tuning directory (see the module docstring).
        overwrite: Discard an existing search in ``out`` instead of resuming.
        callbacks: Extra Keras callbacks for every trial (deep-copyable).
        max_consecutive_failed_trials: Crashed trials in a row that stop the
            search (pruned ones not counted).

    Returns:
        ``{"role", "tuner", "trials", "completed", "pruned", "failed",
        "best", "best_config", "best_model", "results_csv", "results_json",
        "plot", "out", "wall_time_s"}``; a distributed worker returns only
        ``role``, ``tuner_id``, ``out`` and ``wall_time_s``.

    Raises:
        ValueError: For bad options, a dataset that cannot be found, a search
            space whose models do not fit the data, or an ``out`` holding a
            search with other options.
    """
    started = time.perf_counter()
    role = _role()
    out = os.fspath(out)
    if not out:
        raise ValueError("`out` must name a tuning directory.")
    if base is None:
        base = TrainConfig()
    elif not isinstance(base, TrainConfig):
        if not isinstance(base, Mapping):
            raise ValueError(f"`base` must be a TrainConfig, a dict or None, got {base!r}.")
        base = TrainConfig.from_dict(base)
    _check_search_args(tuner, max_trials, max_epochs, factor, max_consecutive_failed_trials)
    base = base.replace(epochs=max_epochs, out=os.path.join(out, "best_run"), resume=False)
    if base.distribute not in (None, "mirrored"):
        raise ValueError(
            f"`distribute` must be None or 'mirrored' for a search, got {base.distribute!r}; "
            "spread trials over machines with KerasTuner's chief/worker mode instead."
        )
    strategy = make_strategy(base)
    hypermodel = DenseNetHyperModel(
        base, ranges=ranges, fixed=fixed, max_params=max_params, strategy=strategy
    )
    # Fail before searching if the data is missing or the layout cannot fit it.
    info = hypermodel.data.info
    default_config = hypermodel.trial_config(keras_tuner.HyperParameters())
    resolve_config(None, **default_config.architecture(), input_shape=info.image_shape)

    record = {
        "tuner": tuner,
        "max_trials": max_trials,
        "max_epochs": max_epochs,
        "factor": factor,
        **hypermodel.describe(),
        "base": {k: v for k, v in hypermodel.base.to_dict().items() if k != "verbose"},
    }
    with contextlib.ExitStack() as stack:
        if role != "worker":  # the chief (or a lone process) owns the directory
            rundir.ensure_writable_dir(out)
            stack.enter_context(rundir.lock(out, "tuning directory"))
            _prepare_out(out, record, overwrite)
        return _search(
            hypermodel,
            role,
            started,
            callbacks,
            tuner=tuner,
            max_trials=max_trials,
            max_epochs=max_epochs,
            factor=factor,
            max_params=max_params,
            out=out,
            overwrite=overwrite,
            max_consecutive_failed_trials=max_consecutive_failed_trials,
        )


def _search(
    hypermodel: DenseNetHyperModel,
    role: str,
    started: float,
    callbacks: Sequence[keras.callbacks.Callback] | None,
    *,
    tuner: str,
    max_trials: int,
    max_epochs: int,
    factor: int,
    max_params: int | None,
    out: str,
    overwrite: bool,
    max_consecutive_failed_trials: int,
) -> dict[str, Any]:
    """Runs the search and, on the chief, writes results, plot and the best model."""
    base = hypermodel.base
    search = make_tuner(
        hypermodel,
        tuner,
        max_trials=max_trials,
        max_epochs=max_epochs,
        factor=factor,
        directory=out,
        overwrite=overwrite and role != "worker",
        seed=base.seed,
        max_consecutive_failed_trials=max_consecutive_failed_trials,
    )
    search.search(callbacks=list(callbacks or []), verbose=base.verbose)
    if role == "worker":
        return {
            "role": role,
            "tuner_id": search.tuner_id,
            "out": out,
            "wall_time_s": round(time.perf_counter() - started, 2),
        }

    rows = collect_results(search, hypermodel)
    csv_path, json_path = write_results(rows, out)
    plot_path = plot_results(
        rows,
        os.path.join(out, "accuracy_vs_params.png"),
        max_params=max_params,
        title=f"{tuner} search on {base.dataset}: {len(rows)} trials",
    )
    best = rows[0] if rows and rows[0]["status"] == "COMPLETED" else None
    best_config_path = best_model_path = None
    if best is not None:
        trial = search.oracle.get_trial(best["trial_id"])
        config = hypermodel.trial_config(trial.hyperparameters.copy())
        if not config.verbose:  # a quiet search should not give a silent training run
            config = config.replace(verbose=1)
        best_config_path = os.path.join(out, "best_config.json")
        write_json(best_config_path, config.to_dict())
        best_model_path = os.path.join(out, "best.keras")
        best_model = search.load_model(trial)
        if base.bn_recalibrate_steps:
            data = hypermodel.data
            recalibrate_batchnorm(best_model, data.recalibration, base.bn_recalibrate_steps)
        _io.save_model(best_model, best_model_path)
    return {
        "role": role,
        "tuner": tuner,
        "trials": len(rows),
        "completed": sum(r["status"] == "COMPLETED" for r in rows),
        "pruned": sum(r["status"] == "PRUNED" for r in rows),
        "failed": sum(r["status"] not in ("COMPLETED", "PRUNED") for r in rows),
        "best": best,
        "best_config": best_config_path,
        "best_model": best_model_path,
        "results_csv": csv_path,
        "results_json": json_path,
        "plot": plot_path,
        "out": out,
        "wall_time_s": round(time.perf_counter() - started, 2),
    }


def parse_assignments(items: Sequence[str] | None, what: str) -> dict[str, Any]:
    """Parses ``NAME=VALUE`` command-line items for ``fixed`` or ``ranges``.

    Values are ints, floats or ``true``/``false``; a comma-separated list
    becomes a tuple (a range ``8,48`` or ``8,48,4``, blocks ``6,12,24,16``).

    Args:
        items: The ``NAME=VALUE`` strings.
        what: The option name, for error messages (e.g. ``"--fix"``).

    Returns:
        Name -> parsed value.

    Raises:
        ValueError: For an item without ``=`` or a value that is not a number
            or boolean.
    """
    parsed: dict[str, Any] = {}
    for item in items or ():
        name, sep, text = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name or not text.strip():
            raise ValueError(f"{what} expects NAME=VALUE, e.g. growth_rate=12; got {item!r}.")
        values = tuple(_parse_scalar(v, item, what) for v in text.split(","))
        parsed[name] = values if len(values) > 1 or name == "blocks" else values[0]
    return parsed


def _parse_scalar(text: str, item: str, what: str) -> Any:
    text = text.strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    raise ValueError(f"{what} value {text!r} in {item!r} is not a number or true/false.")


__all__ = [
    "FIXED_ONLY",
    "OBJECTIVE",
    "SEARCH_SPACE",
    "TUNERS",
    "DenseNetHyperModel",
    "PrunedTrialError",
    "collect_results",
    "count_trainable_params",
    "make_tuner",
    "parse_assignments",
    "plot_results",
    "tune",
    "write_results",
]
