"""The outcome label a finished request is counted under in the request metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from surge.engine.metrics import SurgeMetrics
from surge.errors import (
    DeadlineExceededError,
    InputError,
    InvalidNameError,
    ModelNotReadyError,
    NotFoundError,
    QueueFullError,
    SurgeError,
    WorkerCrashedError,
)

if TYPE_CHECKING:
    from surge.engine import InferenceEngine

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


# The label of every request naming a model the engine does not serve ('_' starts no valid name).
UNKNOWN_MODEL = "_unknown"


class RequestObserver:
    """Counts finished requests in the engine's request metrics, by model and outcome.

    The labelled children are cached: a labels() lookup per request costs more than the
    observation itself. Only models the engine serves get a label (and a cache entry) of their
    own; every other name a client sends, whatever the outcome, is counted under UNKNOWN_MODEL,
    so that neither the metrics nor this cache grow with client input.
    """

    def __init__(self, metrics: SurgeMetrics, served: Callable[[str], bool]) -> None:
        self._metrics = metrics
        self._served = served
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}

    def observe(self, model: str, outcome: str, seconds: float) -> None:
        children = self._children.get((model, outcome))
        if children is None:
            children = self._children_for(model, outcome)
        children[0].inc()
        children[1].observe(seconds)

    def _children_for(self, model: str, outcome: str) -> tuple[Any, Any]:
        if outcome == "not_found" or not self._served(model):
            model = UNKNOWN_MODEL
        children = self._children.get((model, outcome))
        if children is None:
            children = (self._metrics.requests.labels(model, outcome),
                        self._metrics.request_duration.labels(model))
            self._children[(model, outcome)] = children
        return children


def served_by(engine: InferenceEngine) -> Callable[[str], bool]:
    """Whether `engine` serves a model of that name (loaded, ready or draining)."""

    def served(name: str) -> bool:
        try:
            engine.model(name)
        except SurgeError:
            return False
        return True

    return served
