"""Argument checks shared by the whole package.

Every check names the argument, shows the value it got and says what is
allowed, so a bad value fails with one clear line before any work starts.
Wrong types raise ``TypeError``, values out of range ``ValueError`` (the
command line turns both into exit code 2). Integers have an upper bound too:
a count that does not fit TensorFlow's int32 would otherwise fail deep inside
TensorFlow with a message that names no argument.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from collections.abc import Sequence
from typing import Any

#: The largest count any argument may hold (TensorFlow's int32 maximum).
INT_MAX = 2**31 - 1


def _is_numpy_bool(value: Any) -> bool:
    # numpy's boolean is no subclass of bool (and numpy is not imported here for it).
    kind = type(value)
    return kind.__module__ == "numpy" and kind.__name__ in ("bool", "bool_")


def _is_bool(value: Any) -> bool:
    """Python's and numpy's booleans."""
    return isinstance(value, bool) or _is_numpy_bool(value)


def is_int(value: Any) -> bool:
    """Whether ``value`` is an integer (Python's or numpy's) and not a bool."""
    return isinstance(value, numbers.Integral) and not _is_bool(value)


def is_number(value: Any) -> bool:
    """Whether ``value`` is a real number (Python's or numpy's) and not a bool."""
    return isinstance(value, numbers.Real) and not _is_bool(value)


def check_int(name: str, value: Any, low: int = 1, high: int = INT_MAX) -> int:
    """Checks an integer in ``[low, high]``.

    Args:
        name: The argument's name, for the message.
        value: The value to check.
        low: Smallest allowed value.
        high: Largest allowed value.

    Returns:
        ``value``.

    Raises:
        TypeError: If it is not an int (bools are refused).
        ValueError: If it is outside ``[low, high]``.
    """
    if not is_int(value):
        raise TypeError(f"`{name}` must be an integer in [{low}, {high}], got {value!r}.")
    if not low <= value <= high:
        raise ValueError(f"`{name}` must be an integer in [{low}, {high}], got {value!r}.")
    return int(value)  # numpy's integers as Python's (JSON, range, ...)


def check_positive_int(name: str, value: Any, high: int = INT_MAX) -> int:
    """Checks an integer in ``[1, high]``; see `check_int`."""
    return check_int(name, value, 1, high)


def check_float(
    name: str,
    value: Any,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Checks a finite number in a closed, open or half-open interval.

    Args:
        name: The argument's name, for the message.
        value: The value to check.
        low: Lower bound.
        high: Upper bound.
        low_open: Exclude ``low`` itself.
        high_open: Exclude ``high`` itself.

    Returns:
        ``value`` as a float.

    Raises:
        TypeError: If it is not a number (bools are refused).
        ValueError: If it is NaN, infinite or outside the interval.
    """
    if math.isinf(low) and math.isinf(high):
        bounds = ""
    elif math.isinf(high):
        bounds = f" {'>' if low_open else '>='} {low:g}"
    elif math.isinf(low):
        bounds = f" {'<' if high_open else '<='} {high:g}"
    else:
        bounds = f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if not is_number(value):
        raise TypeError(f"`{name}` must be a number{bounds}, got {value!r}.")
    value = float(value)
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    if not (math.isfinite(value) and above and below):
        raise ValueError(f"`{name}` must be a finite number{bounds}, got {value!r}.")
    return value


def check_rate(name: str, value: Any) -> float:
    """Checks a rate in ``[0, 1)`` (dropout, label smoothing, momentum)."""
    return check_float(name, value, 0.0, 1.0, high_open=True)


def check_bool(name: str, value: Any, allow_none: bool = False) -> bool | None:
    """Checks a bool (``None`` too with ``allow_none``).

    Raises:
        TypeError: For anything else, the string ``"false"`` included.
    """
    if isinstance(value, bool) or (allow_none and value is None):
        return value
    if _is_numpy_bool(value):
        return bool(value)
    allowed = "True, False or None" if allow_none else "True or False"
    raise TypeError(f"`{name}` must be {allowed}, got {value!r}.")


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """Checks that ``value`` is one of ``choices``.

    Raises:
        ValueError: Listing the allowed values.
    """
    if _is_bool(value) or value not in choices:
        raise ValueError(f"`{name}` must be one of {tuple(choices)}, got {value!r}.")
    return next(c for c in choices if c == value)  # the choice itself (np.int64(3) -> 3)


def check_path(name: str, value: Any) -> str:
    """Checks a non-empty path (a ``str`` or ``os.PathLike``) and returns it as str.

    Raises:
        TypeError: If it is not a string or path.
        ValueError: If it is empty or holds a NUL character.
    """
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"`{name}` must be a path (a string), got {value!r}.")
    text = os.fspath(value)
    if not isinstance(text, str) or not text or "\x00" in text:
        raise ValueError(f"`{name}` must be a non-empty path, got {value!r}.")
    return text


def check_int_sequence(
    name: str, value: Any, length: int | None = None, high: int = INT_MAX
) -> tuple[int, ...]:
    """Checks a non-empty sequence of integers in ``[1, high]``.

    Args:
        name: The argument's name, for the message.
        value: The value to check.
        length: Required length, if any.
        high: Largest allowed entry.

    Returns:
        The entries as a tuple.

    Raises:
        TypeError: If it is not a sequence of ints.
        ValueError: If it is empty, has the wrong length or an entry out of range.
    """
    what = f"{length} " if length else "a non-empty sequence of "
    wanted = f"`{name}` must be {what}integers in [1, {high}]"
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{wanted}, got {value!r}.")
    if not value or (length is not None and len(value) != length):
        raise ValueError(f"{wanted}, got {value!r}.")
    if not all(is_int(v) for v in value):
        raise TypeError(f"{wanted}, got {value!r}.")
    if not all(1 <= v <= high for v in value):
        raise ValueError(f"{wanted}, got {value!r}.")
    return tuple(int(v) for v in value)


@dataclasses.dataclass(frozen=True)
class Rule:
    """How one option is checked (and shown on the command line).

    Attributes:
        kind: ``"int"``, ``"float"``, ``"bool"``, ``"choice"``, ``"str"``,
            ``"path"`` or ``"ints"`` (a sequence of ints).
        help: One line for ``--help``.
        low: Smallest value (numbers).
        high: Largest value (numbers, ints' entries).
        low_open: Exclude ``low``.
        high_open: Exclude ``high``.
        choices: Allowed values (``"choice"``).
        length: Required length (``"ints"``).
        optional: ``None`` is allowed.
        group: Help section on the command line.
    """

    kind: str
    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[Any, ...] = ()
    length: int | None = None
    optional: bool = False
    group: str = "execution"

    def check(self, name: str, value: Any) -> Any:
        """Checks one value; returns it normalized (tuples for sequences).

        Raises:
            TypeError: For a value of the wrong type.
            ValueError: For a value out of range.
        """
        if value is None and self.optional:
            return None
        if self.kind == "int":
            return check_int(name, value, int(self.low), int(self.high))
        if self.kind == "float":
            return check_float(
                name, value, self.low, self.high, low_open=self.low_open, high_open=self.high_open
            )
        if self.kind == "bool":
            return check_bool(name, value)
        if self.kind == "choice":
            return check_choice(name, value, self.choices)
        if self.kind == "ints":
            return check_int_sequence(name, value, self.length, int(self.high))
        if self.kind == "path":
            return check_path(name, value)
        if not isinstance(value, str) or not value:
            raise TypeError(f"`{name}` must be a non-empty string, got {value!r}.")
        return value
