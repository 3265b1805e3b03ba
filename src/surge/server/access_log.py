"""The access log: one JSON line per finished inference request, written off the event loop.

The front end hands each record (a small dict) to a queue; a thread turns it into JSON and
writes it, so a slow disk or a blocked pipe delays the log, never an answer. When the thread
falls `max_backlog` records behind, new records are dropped and counted rather than held.
Successes are sampled (`sample`); every failed request is logged.
"""

from __future__ import annotations

import logging
import queue
import random
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AccessLogConfig:
    """Where the access log goes and how much of it is kept."""

    path: str = "-"  # a file (appended to), or "-" for standard output
    sample: float = 1.0  # share of successful requests logged (failures always are)
    max_backlog: int = 10_000  # records waiting to be written before new ones are dropped

    def __post_init__(self) -> None:
        if not 0.0 <= self.sample <= 1.0:
            raise ValueError(f"access log sample must be in [0, 1], got {self.sample}")
        if self.max_backlog < 1:
            raise ValueError("max_backlog must be at least 1")


_STOP = object()


class AccessLog:
    """Queues records on the caller's thread; a writer thread appends them as JSON lines."""

    def __init__(self, config: AccessLogConfig, chance: Callable[[], float] = random.random) -> None:
        self.config = config
        self.dropped = 0  # records not written because the writer fell behind
        self.written = 0
        self._chance = chance
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._stream = self._open(config.path)
        self._thread = threading.Thread(target=self._write_all, name="surge-access-log",
                                        daemon=True)
        self._thread.start()

    @staticmethod
    def _open(path: str) -> IO[bytes]:
        if path == "-":
            return sys.stdout.buffer
        try:
            return Path(path).open("ab")
        except OSError as exc:
            from surge.errors import SurgeError

            raise SurgeError(f"cannot open the access log {path} ({exc.strerror})") from None

    def wanted(self, failed: bool) -> bool:
        """Whether a request with this outcome is logged (sampling decided here)."""
        return failed or self.config.sample >= 1.0 or self._chance() < self.config.sample

    def write(self, record: dict[str, Any]) -> None:
        if self._queue.qsize() >= self.config.max_backlog:
            self.dropped += 1
            return
        self._queue.put(record)

    def close(self) -> None:
        """Write what is queued, then stop the writer thread."""
        self._queue.put(_STOP)
        self._thread.join(timeout=10.0)
        if self._stream is not sys.stdout.buffer:
            self._stream.close()

    def _write_all(self) -> None:
        while True:
            record = self._queue.get()
            if record is _STOP:
                self._stream.flush()
                return
            try:
                self._stream.write(orjson.dumps(record) + b"\n")
                self.written += 1
                if self._queue.empty():
                    self._stream.flush()
            except (OSError, TypeError) as exc:
                log.error("access log record not written: %s", exc)


__all__ = ["AccessLog", "AccessLogConfig"]
