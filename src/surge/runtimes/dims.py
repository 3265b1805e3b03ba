"""Dimension bounds an engine fixed when its model was exported, checked before it runs.

A `torch.export` program (`Dim("batch", max=4)`) or an OpenVINO model (`Dimension(1, 4)`) may
take a variable dimension only within bounds. The signature shows such a dimension as -1, so a
request outside them reached the engine and failed there (HTTP 500), and a batch the scheduler
joined from requests that each fit failed for all of them. Here a batch above the batch
dimension's bound is run in pieces that fit, and any other dimension outside its bounds is the
request's fault (InputError, HTTP 400), named with the bounds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from surge.errors import InputError

Outputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class DimBounds:
    """Inclusive bounds of each dimension of one input; `high` None: unbounded."""

    low: tuple[int, ...]
    high: tuple[int | None, ...]

    def problem(self, shape: tuple[int, ...], skip_batch: bool) -> str | None:
        """Why `shape` lies outside these bounds (the batch dimension left out), or None."""
        for axis, (size, low, high) in enumerate(zip(shape, self.low, self.high, strict=False)):
            if skip_batch and axis == 0:
                continue
            if size < low or (high is not None and size > high):
                return f"dimension {axis} is {size}, the model takes {_range(low, high)}"
        return None


def _range(low: int, high: int | None) -> str:
    return f"{low} to {high}" if high is not None else f"at least {low}"


def batch_limit(bounds: Mapping[str, DimBounds]) -> int | None:
    """The most rows every input's batch dimension takes (None: no bound)."""
    highs = [b.high[0] for b in bounds.values() if b.high and b.high[0] is not None]
    return min(highs) if highs else None


def check_bounds(bounds: Mapping[str, DimBounds], inputs: Mapping[str, np.ndarray],
                 batched: bool) -> None:
    """InputError naming the input whose dimensions lie outside the model's bounds; the rows
    of a batched model only below the least it takes (more are run in pieces)."""
    for name, array in inputs.items():
        known = bounds.get(name)
        if known is None:
            continue
        problem = known.problem(tuple(array.shape), skip_batch=batched)
        if problem is None and batched and array.ndim and array.shape[0] < known.low[0]:
            problem = f"it has {array.shape[0]} rows, the model takes at least {known.low[0]}"
        if problem is not None:
            raise InputError(f"input {name!r}: {problem}")


def run_in_pieces(run: Callable[[Mapping[str, np.ndarray]], Outputs],
                  inputs: Mapping[str, np.ndarray], limit: int | None) -> Outputs:
    """`run(inputs)`, in pieces of at most `limit` rows when the batch has more, joined."""
    rows = int(next(iter(inputs.values())).shape[0]) if inputs else 0
    if limit is None or rows <= limit:
        return run(inputs)
    count = -(-rows // limit)  # pieces of even size: none left below the least the model takes
    bounds = np.linspace(0, rows, count + 1).round().astype(int)
    pieces = [run({name: array[start:stop] for name, array in inputs.items()})
              for start, stop in zip(bounds[:-1], bounds[1:], strict=True)]
    return {name: np.concatenate([piece[name] for piece in pieces]) for name in pieces[0]}
