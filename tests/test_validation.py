"""The shared argument checks: exact bounds, exact messages, types told apart.

Pure Python, no model: every check is exercised at and just beyond each bound,
and each message is compared whole, since it is what a user reads.
"""

from __future__ import annotations

import math
import pathlib

import pytest

from keras_densenet._validation import (
    INT_MAX,
    Rule,
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_int_sequence,
    check_path,
    check_positive_int,
    check_rate,
    is_int,
    is_number,
)


def test_int_max_is_tensorflows_int32_maximum():
    assert INT_MAX == 2_147_483_647


def test_ints_and_numbers_exclude_bools():
    assert is_int(0) and is_int(-3) and not is_int(True) and not is_int(1.0)
    assert is_number(1) and is_number(1.5) and not is_number(False) and not is_number("1")


def test_check_int_bounds_and_messages():
    assert check_int("n", 1, 1, 5) == 1
    assert check_int("n", 5, 1, 5) == 5
    assert check_int("n", -2, -2, 0) == -2
    assert check_int("n", INT_MAX) == INT_MAX
    with pytest.raises(ValueError) as err:
        check_int("n", 6, 1, 5)
    assert str(err.value) == "`n` must be an integer in [1, 5], got 6."
    with pytest.raises(ValueError, match=r"^`n` must be an integer in \[1, 5\], got 0\.$"):
        check_int("n", 0, 1, 5)
    with pytest.raises(ValueError, match=r"in \[1, 2147483647\], got 0\."):
        check_int("n", 0)
    with pytest.raises(ValueError):
        check_int("n", INT_MAX + 1)
    for bad in (True, 2.0, "3", None):
        with pytest.raises(TypeError) as err:
            check_int("n", bad, 1, 5)
        assert str(err.value) == f"`n` must be an integer in [1, 5], got {bad!r}."


def test_check_positive_int():
    assert check_positive_int("k", 1) == 1
    assert check_positive_int("k", 7, 7) == 7
    with pytest.raises(ValueError, match=r"^`k` must be an integer in \[1, 7\], got 8\.$"):
        check_positive_int("k", 8, 7)
    with pytest.raises(ValueError, match=r"\[1, 2147483647\], got 0"):
        check_positive_int("k", 0)


@pytest.mark.parametrize(
    ("kwargs", "bounds"),
    [
        ({}, ""),
        ({"low": 0.0}, " >= 0"),
        ({"low": 0.0, "low_open": True}, " > 0"),
        ({"high": 2.5}, " <= 2.5"),
        ({"high": 2.5, "high_open": True}, " < 2.5"),
        ({"low": 0.0, "high": 1.0}, " in [0, 1]"),
        ({"low": 0.0, "high": 1.0, "low_open": True}, " in (0, 1]"),
        ({"low": 0.0, "high": 1.0, "high_open": True}, " in [0, 1)"),
        ({"low": -1.0, "high": 1.0, "low_open": True, "high_open": True}, " in (-1, 1)"),
    ],
)
def test_check_float_messages_spell_the_interval(kwargs, bounds):
    with pytest.raises(TypeError) as err:
        check_float("x", "a", **kwargs)
    assert str(err.value) == f"`x` must be a number{bounds}, got 'a'."
    with pytest.raises(ValueError) as err:
        check_float("x", math.nan, **kwargs)
    assert str(err.value) == f"`x` must be a finite number{bounds}, got nan."


def test_check_float_bounds():
    assert check_float("x", 0, 0.0, 1.0) == 0.0 and isinstance(check_float("x", 0), float)
    assert check_float("x", 1, 0.0, 1.0) == 1.0
    for value, kwargs in (
        (0.0, {"low_open": True}),
        (1.0, {"high_open": True}),
        (-1e-12, {}),
        (1.0 + 1e-12, {}),
        (math.inf, {}),
        (-math.inf, {}),
    ):
        with pytest.raises(ValueError):
            check_float("x", value, 0.0, 1.0, **kwargs)
    assert check_float("x", 1e-300, 0.0, 1.0, low_open=True) == 1e-300
    assert check_float("x", 0.999999, 0.0, 1.0, high_open=True) == 0.999999
    with pytest.raises(ValueError):
        check_float("x", math.inf)  # unbounded, but still finite
    with pytest.raises(TypeError):
        check_float("x", True)


def test_check_rate_is_half_open():
    assert check_rate("r", 0) == 0.0
    assert check_rate("r", 0.5) == 0.5
    with pytest.raises(ValueError) as err:
        check_rate("r", 1)
    assert str(err.value) == "`r` must be a finite number in [0, 1), got 1.0."
    with pytest.raises(ValueError):
        check_rate("r", -0.01)


def test_check_bool():
    assert check_bool("b", True) is True and check_bool("b", False) is False
    assert check_bool("b", None, allow_none=True) is None
    with pytest.raises(TypeError) as err:
        check_bool("b", None)
    assert str(err.value) == "`b` must be True or False, got None."
    with pytest.raises(TypeError) as err:
        check_bool("b", "false", allow_none=True)
    assert str(err.value) == "`b` must be True, False or None, got 'false'."
    with pytest.raises(TypeError):
        check_bool("b", 1)


def test_check_choice():
    assert check_choice("c", "avg", (None, "avg", "max")) == "avg"
    assert check_choice("c", None, (None, "avg")) is None
    with pytest.raises(ValueError) as err:
        check_choice("c", "mean", ["avg", "max"])
    assert str(err.value) == "`c` must be one of ('avg', 'max'), got 'mean'."
    with pytest.raises(ValueError):
        check_choice("c", True, (1, 0))  # True == 1, but a bool is no choice


def test_check_path(tmp_path):
    assert check_path("p", "runs/x") == "runs/x"
    assert check_path("p", tmp_path) == str(tmp_path)
    assert isinstance(check_path("p", pathlib.Path("a")), str)
    with pytest.raises(TypeError) as err:
        check_path("p", 5)
    assert str(err.value) == "`p` must be a path (a string), got 5."
    for bad in ("", "a\x00b"):
        with pytest.raises(ValueError) as err:
            check_path("p", bad)
        assert str(err.value) == f"`p` must be a non-empty path, got {bad!r}."
    with pytest.raises(ValueError):
        check_path("p", _BytesPath())


class _BytesPath:
    """An os.PathLike whose path is bytes: not a text path."""

    def __fspath__(self):
        return b"runs"


def test_check_int_sequence():
    assert check_int_sequence("b", [6, 12, 24, 16]) == (6, 12, 24, 16)
    assert check_int_sequence("b", (1,), high=1) == (1,)
    assert check_int_sequence("s", (3, 4), length=2) == (3, 4)
    with pytest.raises(ValueError) as err:
        check_int_sequence("s", (3, 4, 5), length=2)
    assert str(err.value) == "`s` must be 2 integers in [1, 2147483647], got (3, 4, 5)."
    with pytest.raises(ValueError) as err:
        check_int_sequence("b", [])
    assert (
        str(err.value) == "`b` must be a non-empty sequence of integers in [1, 2147483647], got []."
    )
    with pytest.raises(ValueError):
        check_int_sequence("b", [1, 0])
    with pytest.raises(ValueError, match=r"in \[1, 9\], got \[9, 10\]"):
        check_int_sequence("b", [9, 10], high=9)
    wanted = "`b` must be a non-empty sequence of integers in [1, 2147483647], got"
    for bad in ("6,12", b"\x06", 6, None, [6, "12"], [6, True], [6, 1.0]):
        with pytest.raises(TypeError) as err:
            check_int_sequence("b", bad)
        assert str(err.value) == f"{wanted} {bad!r}."


def test_rule_dispatches_to_each_check():
    assert Rule("int", "h", low=2, high=4).check("n", 4) == 4
    with pytest.raises(ValueError, match=r"\[2, 4\], got 5"):
        Rule("int", "h", low=2, high=4).check("n", 5)
    with pytest.raises(ValueError, match=r"\[2, 4\], got 1"):
        Rule("int", "h", low=2, high=4).check("n", 1)
    open_float = Rule("float", "h", low=0.0, high=1.0, low_open=True, high_open=True)
    assert open_float.check("x", 0.5) == 0.5
    for edge in (0.0, 1.0):
        with pytest.raises(ValueError, match=r"in \(0, 1\)"):
            open_float.check("x", edge)
    assert Rule("bool", "h").check("b", False) is False
    with pytest.raises(TypeError):
        Rule("bool", "h").check("b", "yes")
    assert Rule("choice", "h", choices=("a", "b")).check("c", "b") == "b"
    with pytest.raises(ValueError, match=r"\('a', 'b'\)"):
        Rule("choice", "h", choices=("a", "b")).check("c", "z")
    assert Rule("ints", "h", high=8, length=2).check("s", [8, 1]) == (8, 1)
    with pytest.raises(ValueError, match=r"2 integers in \[1, 8\]"):
        Rule("ints", "h", high=8, length=2).check("s", [9, 1])
    assert Rule("path", "h").check("p", pathlib.Path("r")) == "r"
    assert Rule("str", "h").check("s", "x") == "x"
    for bad in ("", 3):
        with pytest.raises(TypeError) as err:
            Rule("str", "h").check("s", bad)
        assert str(err.value) == f"`s` must be a non-empty string, got {bad!r}."
    assert Rule("int", "h", low=1, high=2, optional=True).check("n", None) is None
    with pytest.raises(TypeError):
        Rule("int", "h", low=1, high=2).check("n", None)


@pytest.mark.parametrize(
    ("rule", "value"),
    [
        (Rule("int", "h", low=1, high=2), 3),
        (Rule("float", "h", low=0.0, high=1.0), 2.0),
        (Rule("bool", "h"), "no"),
        (Rule("choice", "h", choices=("a",)), "b"),
        (Rule("ints", "h", high=2), [3]),
        (Rule("path", "h"), ""),
        (Rule("str", "h"), ""),
    ],
)
def test_rule_errors_name_the_option(rule, value):
    with pytest.raises((TypeError, ValueError)) as err:
        rule.check("learning_rate", value)
    assert str(err.value).startswith("`learning_rate` must be ")


def test_rule_defaults():
    rule = Rule("float", "help")
    assert (rule.low, rule.high, rule.low_open, rule.high_open) == (None, None, False, False)
    assert (rule.choices, rule.length, rule.optional, rule.group) == ((), None, False, "execution")


def test_numpy_scalars_are_numbers_and_numpy_bools_are_not():
    import numpy as np

    from keras_densenet import build_densenet
    from keras_densenet._validation import check_bool, check_choice, check_float, check_int

    assert check_int("n", np.int64(4)) == 4 and type(check_int("n", np.int32(4))) is int
    assert check_float("x", np.float32(0.5)) == 0.5
    assert (
        check_choice("c", np.int64(3), (1, 3)) == 3
        and type(check_choice("c", np.int64(3), (1, 3))) is int
    )
    assert check_bool("b", np.bool_(True)) is True
    for bad in (np.bool_(True), True):
        with pytest.raises(TypeError, match="`n`"):
            check_int("n", bad)
    model = build_densenet(
        blocks=(np.int64(1),), growth_rate=np.int64(4), input_shape=(8, 8, 1), num_classes=2
    )
    assert model.get_layer("conv2").growth_rate == 4
    with pytest.raises(TypeError, match="`memory_efficient`"):
        build_densenet(blocks=(1,), memory_efficient="false", input_shape=(8, 8, 1))
