"""The outcome label a finished request is counted under in the request metrics."""

from __future__ import annotations

from typing import Any

from surge.errors import (
    DeadlineExceededError,
    InputError,
    InvalidNameError,
    ModelNotReadyError,
    NotFoundError,
    QueueFullError,
    WorkerCrashedError,
)

_OUTCOMES: tuple[tuple[type[Exception] | tuple[type[Exception], ...], str], ...] = (
    (QueueFullError, "rejected"),
    (DeadlineExceededError, "expired"),
    (WorkerCrashedError, "worker_crashed"),
    (ModelNotReadyError, "not_ready"),
    (NotFoundError, "not_found"),
    ((InputError, InvalidNameError), "bad_request"),
)


def outcome_of(error: BaseException) -> str:
    """`rejected`, `expired`, `bad_request`, ... for an error; `error` for anything else."""
    for kinds, label in _OUTCOMES:
        if isinstance(error, kinds):
            return label
    return "error"


class RequestObserver:
    """Counts finished requests in the engine's request metrics, by model and outcome.

    The labelled children are cached: a labels() lookup per request costs more than the
    observation itself. Unknown model names share one label so that clients cannot grow the
    metric without bound.
    """

    def __init__(self, metrics: Any) -> None:
        self._metrics = metrics
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}

    def observe(self, model: str, outcome: str, seconds: float) -> None:
        if outcome == "not_found":
            model = "_unknown"
        children = self._children.get((model, outcome))
        if children is None:
            children = (self._metrics.requests.labels(model, outcome),
                        self._metrics.request_duration.labels(model))
            self._children[(model, outcome)] = children
        children[0].inc()
        children[1].observe(seconds)
