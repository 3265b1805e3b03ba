"""Map Surge errors to HTTP statuses and gRPC status codes."""

from __future__ import annotations

import math

import grpc

from surge.errors import (
    DeadlineExceededError,
    InputError,
    NotFoundError,
    QueueFullError,
    ServingError,
    SurgeError,
    http_status,
)

__all__ = ["grpc_code", "http_error", "retry_after_header"]


def retry_after_header(error: Exception) -> str | None:
    """`Retry-After` seconds (whole, at least 1) for an admission rejection."""
    if isinstance(error, QueueFullError):
        return str(max(1, math.ceil(error.retry_after_s)))
    return None


def http_error(error: Exception) -> tuple[int, str]:
    """(status, message) for an error raised while serving a request."""
    if isinstance(error, SurgeError):
        return http_status(error), str(error)
    return 500, f"internal error: {type(error).__name__}"


def grpc_code(error: Exception) -> grpc.StatusCode:
    """The gRPC status code matching `http_error`."""
    if isinstance(error, DeadlineExceededError):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if isinstance(error, ServingError):
        return grpc.StatusCode.UNAVAILABLE if error.status == 503 else grpc.StatusCode.INTERNAL
    if isinstance(error, NotFoundError):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(error, InputError) or http_status(error) == 400:
        return grpc.StatusCode.INVALID_ARGUMENT
    return grpc.StatusCode.INTERNAL
