"""The search space of DenseNet architectures, checked before any trial runs.

`SearchSpace` holds the ranges and fixed values of a search: growth rate k,
compression theta, layers per block of the paper's 3-block CIFAR layout
(so only valid depths ``6n + 4`` with bottlenecks and ``3n + 4`` without are
drawn), bottleneck on/off, dropout and the learning rate. Every range and
fixed value is checked with the model builder's own rules when the space is
made, so a bad value fails at once with one message, not in every trial.
Nothing here imports Keras, TensorFlow or KerasTuner: ``hp`` is any object
with KerasTuner's ``HyperParameters`` methods.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from keras_densenet._validation import check_float, check_int, check_int_sequence
from keras_densenet.architecture import MAX_BLOCK_LAYERS, MAX_WIDTH, blocks_from_depth
from keras_densenet.training.config import ARCHITECTURE_OPTIONS

#: The tuners `keras_densenet.tuning.tune` can run.
TUNERS = ("hyperband", "bayesian", "random")
#: The tuner's objective: the best validation accuracy of a trial's epochs
#: (multi-label data: the validation macro AUROC, `MULTI_LABEL_OBJECTIVE`).
OBJECTIVE = "val_accuracy"
MULTI_LABEL_OBJECTIVE = "val_auroc"

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
#: The `TrainConfig` fields a search sets: the network's (its preset aside) and the rate.
ARCH_FIELDS = (*(f for f in ARCHITECTURE_OPTIONS if f != "preset"), "learning_rate")
#: A smoke run that finishes in a couple of minutes on a laptop CPU: small
#: models (k 4..12, 1..2 layers per block), 20 steps per epoch.
QUICK = MappingProxyType(
    {
        "ranges": MappingProxyType({"growth_rate": (4, 12, 4), "layers_per_block": (1, 2)}),
        "max_trials": 3,
        "max_epochs": 2,
        # Hyperband with 2 epochs and factor 3 has one bracket of 2 trials; factor 2 runs
        # the 3: two 1-epoch trials, then the better one continued to 2 epochs.
        "factor": 2,
        "steps_per_epoch": 20,
    }
)
_INT_NAMES = ("growth_rate", "layers_per_block")
_INT_HIGH = {"growth_rate": MAX_WIDTH, "layers_per_block": MAX_BLOCK_LAYERS}


def check_value(name: str, value: Any, where: str | None = None) -> Any:
    """Validates one value of a search dimension; returns it normalized.

    Args:
        name: The dimension (a key of `SEARCH_SPACE`).
        value: The value.
        where: How to name it in the message, e.g. ``ranges['growth_rate'][0]``.

    Returns:
        The value (floats as float).

    Raises:
        TypeError: For a value of the wrong type.
        ValueError: For a value out of the dimension's bounds.
    """
    label = where or name
    if name in _INT_NAMES:
        return check_int(label, value, 1, _INT_HIGH[name])
    if name == "bottleneck":
        if not isinstance(value, bool):
            raise TypeError(f"`{label}` must be True or False, got {value!r}.")
        return value
    if name == "compression":
        return check_float(label, value, 0.0, 1.0, low_open=True)
    if name == "dropout_rate":
        return check_float(label, value, 0.0, 1.0, high_open=True)
    if name == "learning_rate":
        return check_float(label, value, 0.0, math.inf, low_open=True)
    return check_float(label, value)


def check_range(name: str, spec: Any) -> dict[str, Any]:
    """Turns a user's range for one dimension into a full space entry.

    Args:
        name: The dimension.
        spec: ``(low, high)``, ``(low, high, step)`` for ints, or for
            ``bottleneck`` True, False or a sequence of them.

    Returns:
        The entry (``range``/``choices``, ``step``, ``default``...).

    Raises:
        TypeError: For values of the wrong type.
        ValueError: For a bad shape, bounds or step.
    """
    entry = dict(SEARCH_SPACE[name])
    if name == "bottleneck":
        if isinstance(spec, bool):
            spec = (spec,)
        if isinstance(spec, (str, bytes)) or not isinstance(spec, Sequence) or not spec:
            raise ValueError(
                f"`ranges['bottleneck']` must be True, False or a non-empty sequence of them, "
                f"got {spec!r}."
            )
        choices = tuple(dict.fromkeys(check_value(name, v, "ranges['bottleneck']") for v in spec))
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
    low = check_value(name, spec[0], f"ranges[{name!r}][0]")
    high = check_value(name, spec[1], f"ranges[{name!r}][1]")
    if low > high:
        raise ValueError(
            f"`ranges[{name!r}]` has low > high ({low!r} > {high!r}): give (low, high)."
        )
    entry["range"] = (low, high)
    if len(spec) == 3:
        entry["step"] = check_int(f"ranges[{name!r}][2]", spec[2], 1, _INT_HIGH[name])
    default = min(max(entry["default"], low), high)
    if steps_allowed:  # snap to the grid low, low + step, ...
        step = entry["step"]
        default = min(low + round((default - low) / step) * step, low + (high - low) // step * step)
    entry["default"] = default
    return entry


def _check_mapping(name: str, value: Any) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"`{name}` must be a dict of search-space names or None, got {value!r}.")
    return value


class SearchSpace:
    """Ranges and fixed values of a search, checked; draws configurations from ``hp``.

    Args:
        base: Architecture choices of the base training options (a mapping of
            `ARCH_FIELDS` to values or None); those set are held fixed.
        ranges: Name -> ``(low, high)`` (ints may add a step) or, for
            ``bottleneck``, the allowed values. Missing names keep
            `SEARCH_SPACE`'s ranges.
        fixed: Name -> value held for every trial; names of `SEARCH_SPACE`
            plus ``depth`` and ``blocks``.

    Raises:
        TypeError: For a value of the wrong type.
        ValueError: For an unknown name, a bad range (low > high, out of
            bounds, wrong shape), a bad fixed value, a name both ranged and
            fixed, or a ``depth`` invalid for an allowed bottleneck setting.
    """

    def __init__(
        self,
        base: Mapping[str, Any] | None = None,
        ranges: Mapping[str, Any] | None = None,
        fixed: Mapping[str, Any] | None = None,
    ) -> None:
        ranges = _check_mapping("ranges", ranges)
        fixed = dict(_check_mapping("fixed", fixed))
        for what, names, allowed in (
            ("ranges", ranges, tuple(SEARCH_SPACE)),
            ("fixed", fixed, (*SEARCH_SPACE, *FIXED_ONLY)),
        ):
            unknown = sorted(set(names) - set(allowed))
            if unknown:
                raise ValueError(
                    f"Unknown search-space names in `{what}`: {unknown}; known: {list(allowed)}."
                )
        both = sorted(set(ranges) & set(fixed))
        if both:
            raise ValueError(f"{both} given in both `ranges` and `fixed`: give each in one.")
        for field in ARCH_FIELDS:  # the base config's own choices are held fixed
            value = (base or {}).get(field)
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
        space = {name: check_range(name, ranges[name]) for name in ranges}
        for name in SEARCH_SPACE:
            space.setdefault(name, dict(SEARCH_SPACE[name]))
        self.space = space
        self.fixed = self._check_fixed(fixed)

    def _check_fixed(self, fixed: dict[str, Any]) -> dict[str, Any]:
        checked = {
            name: check_value(name, value, f"fixed[{name!r}]")
            for name, value in fixed.items()
            if name in SEARCH_SPACE
        }
        layouts = [n for n in ("layers_per_block", *FIXED_ONLY) if n in fixed]
        if len(layouts) > 1:
            raise ValueError(
                f"`fixed` may hold only one of layers_per_block, depth and blocks, got {layouts}."
            )
        if "blocks" in fixed:
            checked["blocks"] = check_int_sequence(
                "fixed['blocks']", fixed["blocks"], high=MAX_BLOCK_LAYERS
            )
        if "depth" in fixed:
            bottlenecks = (
                (checked["bottleneck"],)
                if "bottleneck" in checked
                else self.space["bottleneck"]["choices"]
            )
            for bottleneck in bottlenecks:  # the model builder's own depth rule
                try:
                    blocks_from_depth(fixed["depth"], bottleneck)
                except ValueError as err:
                    raise ValueError(
                        f"`fixed['depth']`: {err} Fix `bottleneck` too, or pick a depth valid "
                        "with and without bottleneck (4 + 6n)."
                    ) from None
            checked["depth"] = fixed["depth"]
        return checked

    def dimension(self, hp: Any, name: str) -> Any:
        """Draws (or reads) one dimension's value from ``hp``."""
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
        bottleneck = self.dimension(hp, "bottleneck")
        layout: dict[str, Any]
        if "blocks" in self.fixed:
            text = hp.Fixed("blocks", ",".join(map(str, self.fixed["blocks"])))
            layout = {"blocks": tuple(int(b) for b in text.split(","))}
        elif "depth" in self.fixed:
            layout = {"depth": hp.Fixed("depth", self.fixed["depth"])}
        elif "depth" in hp:  # fixed by the caller with hp.Fixed("depth", ...)
            layout = {"depth": hp.get("depth")}
        else:
            layers = self.dimension(hp, "layers_per_block")
            layout = {"depth": (6 if bottleneck else 3) * layers + 4}
        return {
            **layout,
            "growth_rate": self.dimension(hp, "growth_rate"),
            "compression": self.dimension(hp, "compression"),
            "bottleneck": bottleneck,
            "dropout_rate": self.dimension(hp, "dropout_rate"),
            "learning_rate": self.dimension(hp, "learning_rate"),
        }

    def describe(self) -> dict[str, Any]:
        """The space as JSON-ready data (ranges, choices and fixed values)."""
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
        return space


def search_role() -> str:
    """This process's part in a search, from KerasTuner's environment variables.

    Returns:
        ``"chief"`` or ``"worker"`` of a distributed search, else ``"standalone"``.

    Raises:
        ValueError: If ``KERASTUNER_ORACLE_IP`` is set without the port or tuner id.
    """
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return "standalone"
    for var in ("KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID"):
        if not os.environ.get(var):
            raise ValueError(
                f"KERASTUNER_ORACLE_IP is set, so {var} must be set too (distributed search)."
            )
    return "chief" if "chief" in os.environ["KERASTUNER_TUNER_ID"] else "worker"


__all__ = [
    "ARCH_FIELDS",
    "FIXED_ONLY",
    "MULTI_LABEL_OBJECTIVE",
    "OBJECTIVE",
    "QUICK",
    "SEARCH_SPACE",
    "TUNERS",
    "SearchSpace",
    "check_range",
    "check_value",
    "search_role",
]
