"""Errors Surge raises on purpose: each carries a one-line message naming the bad value."""

import os
import socket
from collections.abc import Callable


class SurgeError(Exception):
    """Base class: a user-facing error whose message is safe to print as one line."""


class ModelLoadError(SurgeError):
    """A model file or config could not be loaded; the message names the file and the problem."""


class ConfigError(SurgeError):
    """A configuration value is invalid; the message names the key and the value."""


class InvalidNameError(SurgeError):
    """A model, version or variant name is not allowed (for example it would leave the repository)."""


class InputError(SurgeError):
    """A request's tensors do not match the model's signature."""


class NotFoundError(SurgeError):
    """A model, version or variant does not exist."""


class ServingError(SurgeError):
    """An inference request could not be served; `status` is the HTTP status to answer with."""

    status = 500


class QueueFullError(ServingError):
    """Rejected at admission: the queue is full or the deadline cannot be met (HTTP 503)."""

    status = 503

    def __init__(self, message: str, retry_after_s: float | Callable[[], float] = 1.0,
                 reason: str = "queue_full") -> None:
        super().__init__(message)
        self._retry_after = retry_after_s
        self.reason = reason  # queue_full, or predicted_miss: the deadline cannot be met

    @property
    def retry_after_s(self) -> float:
        """Seconds a client should wait before retrying. The scheduler hands in how to compute
        it, computed when read: in a surge most refusals are never asked (an in-process
        caller), and the computation was a tenth of a refusal's cost."""
        if callable(self._retry_after):
            self._retry_after = self._retry_after()
        return self._retry_after

    def __reduce__(self) -> tuple[type, tuple[str, float, str]]:
        return (type(self), (str(self), self.retry_after_s, self.reason))  # the value, resolved


class DeadlineExceededError(ServingError):
    """The request's deadline passed before it was computed (HTTP 504)."""

    status = 504


class ModelNotReadyError(ServingError):
    """The model exists but is not loaded or not warm yet (HTTP 503); `retry_after_s`, when
    the server knows it (a load in progress, a failed load's backoff), is sent as Retry-After."""

    status = 503

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def __reduce__(self) -> tuple[type, tuple[str, float | None]]:
        return (type(self), (str(self), self.retry_after_s))


class WorkerCrashedError(ServingError):
    """The worker computing the request died; the request was not completed (HTTP 503)."""

    status = 503


def http_status(error: Exception) -> int:
    """The HTTP status for an error raised while serving a request."""
    if isinstance(error, ServingError):
        return error.status
    if isinstance(error, NotFoundError):
        return 404
    if isinstance(error, InputError | InvalidNameError | ConfigError):
        return 400
    return 500


# Messages may embed client input (a model name, a header, a config value): they show at most
# this much of it, so that an error body or a repository index never grows with the input.
MAX_SHOWN_CHARS = 200


def shown(value: object, limit: int = MAX_SHOWN_CHARS) -> str:
    """`repr(value)` cut to about `limit` characters, without building the whole repr first."""
    import reprlib

    short = reprlib.Repr()
    short.maxlevel = 3
    short.maxstring = short.maxother = short.maxlong = limit
    return clipped(short.repr(value), limit)


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of `error`'s message, at most `limit` characters: what a one-line error
    quotes of a library's exception (torch's and ONNX Runtime's span many lines)."""
    return (str(error).strip().splitlines() or [""])[0][:limit]


def clipped(text: str, limit: int = MAX_SHOWN_CHARS) -> str:
    """`text`, or its first `limit` characters and a marker naming how many were left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text) - limit} more characters]"


def cannot_listen(host: str, port: int, error: OSError) -> SurgeError:
    """A port the server cannot have, said once: the OS's reason without the address that
    Python and uvloop repeat inside it."""
    # getaddrinfo's errors carry their own text (their negative codes mean nothing to strerror)
    reason = (error.strerror if isinstance(error, socket.gaierror) else
              os.strerror(error.errno) if error.errno else str(error))
    return SurgeError(f"cannot listen on {host}:{port} ({reason})")
