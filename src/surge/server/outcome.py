"""What both front ends do around one engine call: the call on the request's variant route
and sequence (`infer_routed`), and the outcome label a finished request is counted under in
the request metrics."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from surge.engine.metrics import SurgeMetrics, duration_outcome
from surge.engine.route import VariantRoute, answered_version, request_route
from surge.engine.sequences import SequenceFlags, request_sequence
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
    from surge.protocol.types import InferRequest
    from surge.server.observe import RequestRecord

Outputs = dict[str, np.ndarray]

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
    """Counts finished requests of one front end (`protocol`: http or grpc) in the engine's
    request metrics, by model and outcome.

    The labelled children are cached: a labels() lookup per request costs more than the
    observation itself (the protocol is fixed per observer, so it adds no lookup). Only models
    the engine serves get a label (and a cache entry) of their own; every other name a client
    sends, whatever the outcome, is counted under UNKNOWN_MODEL, so that neither the metrics nor
    this cache grow with client input.
    """

    def __init__(self, metrics: SurgeMetrics, served: Callable[[str], bool],
                 protocol: str) -> None:
        self._metrics = metrics
        self._served = served
        self._protocol = protocol
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
            children = (self._metrics.requests.labels(model, outcome, self._protocol),
                        self._metrics.request_duration.labels(model, duration_outcome(outcome)))
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


def sequence_flags(request: InferRequest) -> SequenceFlags | None:
    """The request's sequence parameters for a sequence model (None: it sent none)."""
    if request.sequence_id or request.sequence_start or request.sequence_end:
        return SequenceFlags(request.sequence_id, request.sequence_start, request.sequence_end)
    return None


async def infer_routed(
    engine: InferenceEngine, name: str, version: int | None, request: InferRequest,
    record: RequestRecord | None,
    watch: Callable[[Awaitable[Outputs]], Awaitable[Outputs]] | None = None,
) -> tuple[Outputs, int, str | None]:
    """`engine.infer` of a decoded request under its variant pin (awaited through `watch`, e.g.
    one that cancels it when the client goes); returns the outputs, the version that computed
    them and the variant that served them (None for a model without a ladder), and records
    both in `record`."""
    route = VariantRoute(request.variant, request.full_accuracy)
    token = request_route.set(route)
    sequence = request_sequence.set(sequence_flags(request))
    try:
        work = engine.infer(name, version, request.inputs, outputs=request.output_names,
                            priority=request.priority, timeout_us=request.timeout_us,
                            request_id=request.request_id)
        outputs = await (watch(work) if watch is not None else work)
    finally:
        request_route.reset(token)
        request_sequence.reset(sequence)
    answered = answered_version(route, engine, name, version)
    if record is not None:
        record.computed = time.perf_counter()
        record.version, record.variant = answered, route.served
    return outputs, answered, route.served
