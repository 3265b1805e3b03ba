"""The checks of `run_bench`'s arguments, made before anything is sent: the Python API gets
the same refusals `surge bench` gives for its options."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from surge.errors import SurgeError
from surge.kinds import is_integer, is_number

MAX_RATE = 1_000_000.0  # arrivals per second: far past what one Python client can send
# Closed-loop clients, a coroutine and a connection each: far more than one Python process
# drives (100 million took 2.4 GB in 15 s without sending a request).
MAX_CONCURRENCY = 10_000


def bench_levels(concurrency: int | Sequence[int]) -> list[int]:
    """One level or several, each a whole number of clients from 1 to MAX_CONCURRENCY."""
    levels = [concurrency] if not isinstance(concurrency, Sequence | set) else list(concurrency)
    if isinstance(concurrency, str) or not levels or not all(
            is_integer(level) and 1 <= level <= MAX_CONCURRENCY for level in levels):
        raise SurgeError(f"concurrency {concurrency!r}: give integers from 1 to "
                         f"{MAX_CONCURRENCY:,}, e.g. 16 or (1, 16, 64)")
    return levels


def check_load(duration_s: Any, rate: Any, batch_size: Any, warmup_s: Any) -> None:
    """How long, how fast and how large: finite and positive (no warm-up is 0)."""
    if not is_number(duration_s) or not 0 < duration_s < math.inf:
        raise SurgeError(f"duration {duration_s!r}: give a positive, finite number of seconds")
    if rate is not None and (not is_number(rate) or not 0 < rate <= MAX_RATE):
        raise SurgeError(f"rate {rate!r}: give requests per second, positive and at most "
                         f"{MAX_RATE:g}")
    if not is_integer(batch_size) or batch_size < 1:
        raise SurgeError(f"--batch-size {batch_size!r}: give a positive number of items per "
                         "request")
    if not is_number(warmup_s) or not 0 <= warmup_s < math.inf:
        raise SurgeError(f"warmup_s {warmup_s!r}: give a finite number of seconds >= 0")


def check_target(url: Any, model: Any) -> None:
    """A URL and a model name given as strings (their contents are checked by loadgen)."""
    if not isinstance(url, str):
        raise SurgeError(f"URL {url!r}: give the server's address as a string, e.g. "
                         "http://127.0.0.1:8000")
    if not isinstance(model, str):
        raise SurgeError(f"--model {model!r}: give the model's name as a string")


def check_api_key(api_key: Any) -> None:
    """A key a request header can carry: printable ASCII. A control character failed as
    "cannot reach" the server (HTTP) or as the server's INTERNAL error (gRPC)."""
    if api_key is None:
        return
    if not isinstance(api_key, str):
        raise SurgeError("--api-key: give the key as a string")
    bad = next((i for i, c in enumerate(api_key) if not " " <= c <= "~"), None)
    if bad is not None:
        raise SurgeError(f"--api-key holds {api_key[bad]!r} at position {bad + 1}, which a "
                         "request header cannot carry; give the key as issued")
