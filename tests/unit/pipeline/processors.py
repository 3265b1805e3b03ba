"""Processors for the pipeline tests, named as `tests.unit.pipeline.processors:<function>`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from surge.errors import InputError


def row_sum(inputs: dict[str, np.ndarray], params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """total [N, 1] = scale * the sum of each row of y; negative values are bad input."""
    y = inputs["y"]
    if (y < 0).any():
        raise InputError("input 'y' holds a negative value")
    return {"total": (y.sum(axis=1, keepdims=True) * params.get("scale", 1)).astype(np.float32),
            "flavour": np.array([str(params.get("flavour", "")).encode()] * len(y), dtype=object)}


def broken(inputs: dict[str, np.ndarray], params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    raise RuntimeError("the processor has a bug")


def one_row(inputs: dict[str, np.ndarray], params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {"total": np.zeros((1, 1), np.float32)}


def thread_name(inputs: dict[str, np.ndarray], params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """where [N] = the name of the thread the processor ran on."""
    import threading

    rows = len(next(iter(inputs.values())))
    return {"where": np.array([threading.current_thread().name.encode()] * rows, dtype=object)}
