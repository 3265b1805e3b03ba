"""The values an input may hold, as a model's config declares them (`min`, `max`, `finite`).

A datatype says which values a tensor can carry; a model often means fewer: an id indexes a
table of N rows (ONNX Gather reads row N-1 for an id of -1, where the trained model would have
refused it), a price is a finite number. A declared range is checked on every request with one
min and one max over each tensor, before the request is queued: a request holding a value
outside it is refused (HTTP 400) alone, never the batch it would have joined.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from surge.datatypes import bf16_values, v2_to_numpy
from surge.errors import InputError

Bound = int | float


@dataclass(frozen=True)
class ValueRange:
    """At least `low` and at most `high` (None: no bound), inclusive; with `finite`, no NaN and
    no infinity. A NaN lies outside every range."""

    low: Bound | None = None
    high: Bound | None = None
    finite: bool = False

    def describe(self) -> str:
        """`values in [0, 1999]`, `values >= 0`, `finite values`, `finite values <= 1`."""
        if self.low is not None and self.high is not None:
            bounds = f" in [{_shown(self.low)}, {_shown(self.high)}]"
        elif self.low is not None:
            bounds = f" >= {_shown(self.low)}"
        elif self.high is not None:
            bounds = f" <= {_shown(self.high)}"
        else:
            bounds = ""
        return f"{'finite ' if self.finite else ''}values{bounds}"

    def check(self, name: str, array: np.ndarray) -> None:
        """Raise InputError naming input `name`, a value of `array` outside this range and the
        range, unless every value lies in it."""
        if not array.size:
            return
        bad = self.outside(array.min(), array.max())
        if bad is not None:
            raise InputError(f"input {name!r} holds {_shown(bad)}, but its config declares "
                             f"{self.describe()}")

    def outside(self, least: Bound, most: Bound) -> Bound | None:
        """A value outside the range among a tensor's `least` and `most` (a NaN anywhere makes
        both NaN), or None."""
        if least != least:  # NaN
            return least
        if self.finite and math.isinf(least):
            return least
        if self.finite and math.isinf(most):
            return most
        if self.low is not None and least < self.low:
            return least
        if self.high is not None and most > self.high:
            return most
        return None

    def clip(self, array: np.ndarray) -> np.ndarray:
        """`array` with its values moved into the range (example inputs that fit it)."""
        if self.low is None and self.high is None:
            return array
        return np.clip(array, self.low, self.high).astype(array.dtype)


def widened(array: np.ndarray, datatype: str) -> np.ndarray:
    """The values `array` holds: BF16 words as float32, anything else as it is."""
    if datatype == "BF16":
        return bf16_values(array)
    return array


def written_bound(bound: object) -> object:
    """A config's bound as written, or ValueError: a number (not `true`, not '0'), a float one
    finite."""
    if bound is not None and (isinstance(bound, bool) or not isinstance(bound, int | float)):
        raise ValueError("expected a number")
    if isinstance(bound, float) and not math.isfinite(bound):
        raise ValueError("expected a finite number")
    return bound


def range_problem(datatype: str, values: ValueRange) -> str | None:
    """Why `values` cannot be declared for an input of `datatype`, or None."""
    kind = v2_to_numpy(datatype).kind if datatype != "BF16" else "f"
    if kind not in "iuf":
        return f"{datatype} inputs take no min, max or finite"
    if kind != "f" and values.finite:
        return f"finite is for float inputs; {datatype} values are always finite"
    bounds = [(key, bound) for key, bound in (("min", values.low), ("max", values.high))
              if bound is not None]
    for key, bound in bounds:
        problem = _bound_problem(datatype, kind, key, bound)
        if problem:
            return problem
    if values.low is not None and values.high is not None and values.low > values.high:
        return f"min {_shown(values.low)} is above max {_shown(values.high)}"
    return None


def _bound_problem(datatype: str, kind: str, key: str, bound: Bound) -> str | None:
    """Why `bound` cannot be `key` of a `datatype` input: a fraction for an integer input, a
    value the datatype cannot hold."""
    if kind == "f":
        return None
    if not isinstance(bound, int):
        return f"{key} takes an integer for {datatype} inputs, got {_shown(bound)}"
    limits = np.iinfo(v2_to_numpy(datatype))
    if not int(limits.min) <= bound <= int(limits.max):
        return f"{key} {bound} is beyond what {datatype} holds ([{limits.min}, {limits.max}])"
    return None


def _shown(value: Bound) -> str:
    """A value as an error shows it: `-1`, `0.5`, `NaN`, `inf`."""
    if isinstance(value, int | np.integer):
        return str(int(value))
    return "NaN" if math.isnan(value) else str(value)  # numpy's shortest form for its dtype
