"""Processors for the pipeline tests, named as `tests.unit.pipeline.processors:<function>`."""

from __future__ import annotations

import time
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


def burn(inputs: dict[str, np.ndarray], params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """row_sum after spinning for params cpu_ms of this thread's CPU and sleeping sleep_ms (wall
    time, no CPU); fails with bad input after that when params fail is set."""
    until = time.thread_time() + params.get("cpu_ms", 0) / 1e3
    while time.thread_time() < until:
        pass
    time.sleep(params.get("sleep_ms", 0) / 1e3)
    if params.get("fail"):
        raise InputError("input 'y' is refused after the work")
    return row_sum(inputs, params)
