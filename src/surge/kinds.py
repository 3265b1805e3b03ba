"""What a value handed to Surge from Python is, for the checks of its options and arguments:
a number that is not a bool (`True` would read as 1). numpy's integers and floats count."""

from __future__ import annotations

from numbers import Integral, Real


def is_number(value: object) -> bool:
    """An int or a float (numpy's too), not a bool."""
    return isinstance(value, Real) and not isinstance(value, bool)


def is_integer(value: object) -> bool:
    """An int (numpy's too), not a bool."""
    return isinstance(value, Integral) and not isinstance(value, bool)


__all__ = ["is_integer", "is_number"]
