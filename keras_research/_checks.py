"""Argument checks shared by every public entry point of keras_research.

One function per kind of argument, each raising a `ValueError` that names the
argument, the value received and what is accepted (the house style of
`keras/src/layers/core/dense.py`).
"""

import math
import numbers


def _is_real_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_non_negative(name, value):
    """Checks that `value` is a finite real number >= 0."""
    if not _is_real_number(value) or not math.isfinite(value) or value < 0:
        raise ValueError(
            f"`{name}` must be a finite number >= 0. Received: {name}={value!r}"
        )


def check_positive(name, value):
    """Checks that `value` is a finite real number > 0."""
    if not _is_real_number(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"`{name}` must be a finite number > 0. Received: {name}={value!r}"
        )


def check_unit_interval(name, value):
    """Checks that `value` is a real number in [0, 1)."""
    if not _is_real_number(value) or not 0.0 <= value < 1.0:
        raise ValueError(
            f"`{name}` must be a number in [0, 1). Received: {name}={value!r}"
        )


def check_bool(name, value):
    """Checks that `value` is a Python bool."""
    if not isinstance(value, bool):
        raise ValueError(
            f"`{name}` must be a bool (True or False). "
            f"Received: {name}={value!r}"
        )


def is_integer(value):
    """Whether `value` is an integer (Python or NumPy), excluding bools."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_positive_int(name, value):
    """Checks that `value` is an integer > 0 (`int` or `np.integer`).

    Returns:
        The value as a Python `int`.
    """
    if not is_integer(value) or value <= 0:
        raise ValueError(
            f"`{name}` must be a positive integer. Received: {name}={value!r}"
        )
    return int(value)
