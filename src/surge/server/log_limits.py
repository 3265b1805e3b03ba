"""At most one line a while for each kind of warning that a client's bad request causes.

uvicorn logs "Invalid HTTP request received." for every request it cannot parse, so a client
sending garbage in a loop wrote a line to stderr for each connection, without bound. A
`RepeatedWarnings` filter on each logger of PROTOCOL_WARNINGS lets the first record of a kind
through, drops the others for INTERVAL_S, then logs one line counting what it dropped. Every
other record passes: startup, bind failures, model load errors, tracebacks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from surge.server.grpc_h2 import CLOSED_ON_ERROR

INTERVAL_S = 10.0
SUMMARY = "%s (%s more in the last %s s)"

# Logger -> the messages (their start, as logged: before the arguments) a request causes.
PROTOCOL_WARNINGS: dict[str, tuple[str, ...]] = {
    "uvicorn.error": ("Invalid HTTP request received.", "Unsupported upgrade request.",
                      "No supported WebSocket library detected.", "Exceeded concurrency limit."),
    "surge.server.grpc_h2": (CLOSED_ON_ERROR,),  # at debug level
}


@dataclass
class _Window:
    """One kind's interval: when its last line went out, and what was dropped since."""

    kind: str
    start: float
    logger: str
    level: int
    dropped: int = 0


class RepeatedWarnings(logging.Filter):
    """Passes the first record of each kind (a message starting with one of `kinds`), drops
    the others for `interval_s`, then logs how many were dropped: when the interval ends (on
    the running event loop) or, without a loop, before the next record of the kind."""

    def __init__(self, kinds: Iterable[str], interval_s: float = INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.kinds = tuple(kinds)
        self.interval_s = interval_s
        self.clock = clock
        self.windows: dict[str, _Window] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        kind = self._kind(record)
        if kind is None:
            return True
        now = self.clock()
        window = self.windows.get(kind)
        if window is not None and now - window.start < self.interval_s:
            window.dropped += 1
            if window.dropped == 1:
                self._summarize_later(window)
            return False
        if window is not None:
            self._summarize(window)
        self.windows[kind] = _Window(kind, now, record.name, record.levelno)
        return True

    def _kind(self, record: logging.LogRecord) -> str | None:
        message = record.msg
        if isinstance(message, str):
            for kind in self.kinds:
                if message.startswith(kind):
                    return kind
        return None

    def _summarize_later(self, window: _Window) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # the next record of the kind brings the count
        delay = window.start + self.interval_s - self.clock()
        loop.call_later(max(0.0, delay), self._summarize, window)

    def _summarize(self, window: _Window) -> None:
        if window.dropped:
            dropped, window.dropped = window.dropped, 0
            seconds = self.clock() - window.start
            logging.getLogger(window.logger).log(
                window.level, SUMMARY, window.kind.replace("%s", "..."), f"{dropped:,}",
                f"{seconds:.0f}" if seconds >= 1 else f"{seconds:.1f}")


def limit_protocol_warnings(interval_s: float = INTERVAL_S) -> None:
    """A RepeatedWarnings filter on each logger of PROTOCOL_WARNINGS (once per logger)."""
    for name, kinds in PROTOCOL_WARNINGS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, RepeatedWarnings) for f in logger.filters):
            logger.addFilter(RepeatedWarnings(kinds, interval_s))
