"""The outcome label a finished request is counted under in the request metrics."""

from __future__ import annotations

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
