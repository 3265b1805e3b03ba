"""The access log: one JSON line per finished inference request, written off the event loop.

The front end hands each record (a small dict) to a queue; a thread turns it into JSON and
writes it, so a slow disk or a blocked pipe delays the log, never an answer. When the thread
falls `max_backlog` records behind, new records are dropped and counted rather than held.
Successes are sampled (`sample`); every failed request is logged.

The file is followed by name: removed or renamed away (log rotation), it is opened again at
the path before the next lines, which would otherwise go to a file no one can read. Lines that
cannot be written (a full disk) are dropped and counted; the server's log says so once when
writing starts to fail and once when it works again, not once per request.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import queue
import random
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
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
_BATCH = 1000  # records joined into one write


class AccessLog:
    """Queues records on the caller's thread; a writer thread appends them as JSON lines."""

    def __init__(self, config: AccessLogConfig, chance: Callable[[], float] = random.random) -> None:
        self.config = config
        self.dropped = 0  # records not written: the writer fell behind, or writes failed
        self.written = 0
        self._chance = chance
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._stream = self._open(config.path)
        self._identity = _identity(self._stream)
        self._failing = False  # the last write failed (logged once per failing spell)
        self._torn = False  # a failed write left part of a line in the file
        self._thread = threading.Thread(target=self._write_all, name="surge-access-log",
                                        daemon=True)
        self._thread.start()

    @staticmethod
    def _open(path: str) -> IO[bytes]:
        if path == "-":
            return sys.stdout.buffer
        try:
            return _append_to(path)
        except OSError as exc:
            from surge.errors import SurgeError

            if exc.errno == errno.ENXIO:
                raise SurgeError(f"cannot open the access log {path}: it is a FIFO no process "
                                 "reads; start its reader first") from None
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
        if self.dropped:
            log.warning("access log %s: %d records were not written", self.config.path,
                        self.dropped)

    def _write_all(self) -> None:
        while True:
            records = self._take()
            lines = [line for line in map(_encode, records) if line is not None]
            if lines:
                self._put(b"".join(lines), len(lines))
            if records[-1] is _STOP:
                self._stream.flush()
                return

    def _take(self) -> list[Any]:
        """The next record, and those already queued behind it (at most _BATCH)."""
        records = [self._queue.get()]
        while records[-1] is not _STOP and len(records) < _BATCH:
            try:
                records.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return records

    def _put(self, data: bytes, count: int) -> None:
        try:
            self._follow_path()
            self._write(b"\n" + data if self._torn else data)
        except OSError as exc:
            self.dropped += count
            if not self._failing:
                log.error("access log %s: cannot write (%s); lines are dropped until writing "
                          "works again", self.config.path, exc.strerror or exc)
            self._failing = True
            return
        self.written += count
        if self._failing:
            log.warning("access log %s: writing again (%d records dropped so far)",
                        self.config.path, self.dropped)
            self._failing = False

    def _write(self, data: bytes) -> None:
        written = 0  # a full disk can take part of a write before refusing the rest
        while written < len(data):
            try:
                count = self._stream.write(data[written:] if written else data)
            except OSError:
                self._torn = self._torn or written > 0
                raise
            written += len(data) - written if count is None else count
        self._torn = False
        self._stream.flush()

    def _follow_path(self) -> None:
        """Open the file again when its path no longer leads to it (removed, or renamed by
        log rotation); OSError when that fails (the next batch tries again)."""
        if self._identity is None:
            return
        try:
            on_disk = os.stat(self.config.path)
            if (on_disk.st_dev, on_disk.st_ino) == self._identity:
                return
        except FileNotFoundError:
            pass
        stream = _append_to(self.config.path)
        self._stream.close()
        self._stream, self._identity, self._torn = stream, _identity(stream), False
        log.warning("access log %s: the file was moved or removed; writing to a new one",
                    self.config.path)


def _append_to(path: str) -> IO[bytes]:
    # Opened without blocking: a FIFO with no reader otherwise held the server's start (and a
    # reopen, the writer) in open() for good, deaf to SIGTERM; now it fails at once with ENXIO.
    # Writes block again, on the writer thread, as for a file.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC,
                 0o666)
    os.set_blocking(fd, True)
    # Unbuffered, one write per batch: a failed write leaves no bytes behind to retry.
    return os.fdopen(fd, "ab", buffering=0)


def _identity(stream: IO[bytes]) -> tuple[int, int] | None:
    """(device, inode) of a file; None for standard output, which is not followed."""
    try:
        status = os.fstat(stream.fileno())
    except (AttributeError, OSError, io.UnsupportedOperation):  # not a file of its own
        return None
    return None if stream is sys.stdout.buffer else (status.st_dev, status.st_ino)


def _encode(record: Any) -> bytes | None:
    if record is _STOP:
        return None
    try:
        return orjson.dumps(record) + b"\n"
    except TypeError as exc:
        log.error("access log record not written: %s", exc)
        return None


__all__ = ["AccessLog", "AccessLogConfig"]
