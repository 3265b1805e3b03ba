"""Map Surge errors to HTTP statuses and gRPC status codes."""

from __future__ import annotations

import math

import grpc

from surge.errors import (
    DeadlineExceededError,
    InputError,
    InvalidNameError,
    ModelNotReadyError,
    NotFoundError,
    QueueFullError,
    ServingError,
    SurgeError,
    clipped,
    http_status,
)
from surge.protocol.types import MAX_ERROR_CHARS

__all__ = ["LoadFailedError", "grpc_code", "http_error", "load_failure", "retry_after_header"]


def retry_after_header(error: Exception) -> str | None:
    """`Retry-After` seconds (whole, at least 1) for an admission rejection, or for a model not
    ready that knows when to ask again (loading, or a failed load's backoff)."""
    if isinstance(error, QueueFullError):
        return str(max(1, math.ceil(error.retry_after_s)))
    if isinstance(error, ModelNotReadyError) and error.retry_after_s is not None:
        return str(max(1, math.ceil(error.retry_after_s)))
    return None


def http_error(error: Exception) -> tuple[int, str]:
    """(status, message) for an error raised while serving a request."""
    if isinstance(error, SurgeError):
        return http_status(error), clipped(str(error), MAX_ERROR_CHARS)
    return 500, f"internal error: {type(error).__name__}"


_GRPC_BY_STATUS = {503: grpc.StatusCode.UNAVAILABLE, 400: grpc.StatusCode.INVALID_ARGUMENT}


def grpc_code(error: Exception) -> grpc.StatusCode:
    """The gRPC status code matching `http_error` (or the one an error names, as Triton
    answers it: NOT_FOUND for a shared-memory region no one registered)."""
    named = getattr(error, "grpc_status", None)
    if named is not None:
        return getattr(grpc.StatusCode, named)
    if isinstance(error, DeadlineExceededError):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if isinstance(error, ServingError):
        return _GRPC_BY_STATUS.get(error.status, grpc.StatusCode.INTERNAL)
    if isinstance(error, NotFoundError):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(error, InputError) or http_status(error) == 400:
        return grpc.StatusCode.INVALID_ARGUMENT
    return grpc.StatusCode.INTERNAL


class LoadFailedError(ServingError):
    """A repository load request whose model could not be loaded: HTTP 400 with the reason (as
    Triton answers), gRPC INVALID_ARGUMENT."""

    status = 400


def load_failure(error: SurgeError) -> SurgeError:
    """The error a repository load request answers with when loading raised `error`."""
    if isinstance(error, NotFoundError | InvalidNameError):
        return error
    return LoadFailedError(f"failed to load: {error}")
