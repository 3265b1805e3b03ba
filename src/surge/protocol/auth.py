"""API key checks shared by the HTTP and gRPC front ends."""

from __future__ import annotations

import hmac
from collections.abc import Iterable


def bearer(api_key: str) -> bytes:
    """The `Authorization` value that carries `api_key`."""
    return f"Bearer {api_key}".encode()


def authorized(values: Iterable[bytes], expected: bytes) -> bool:
    """Whether any of the request's `Authorization` values is `expected`.

    compare_digest takes the same time wherever the first differing byte is, so that response
    times do not reveal how much of a guessed key was right.
    """
    return any(hmac.compare_digest(value, expected) for value in values)
