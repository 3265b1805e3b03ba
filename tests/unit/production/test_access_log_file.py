"""The access log's file while serving: rotated or removed (the lines go to the path again),
and a full disk (one error in the server's log per failing spell, not one per request)."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from surge.server.access_log import AccessLog, AccessLogConfig


def _settled(log: AccessLog, records: int) -> None:
    """Wait until the writer has handled `records` records (written or dropped)."""
    deadline = time.monotonic() + 10
    while log.written + log.dropped < records:
        assert time.monotonic() < deadline, (log.written, log.dropped)
        time.sleep(0.01)


@pytest.mark.parametrize("how", ["rotated", "removed"])
def test_lines_follow_the_path(tmp_path: Path, how: str) -> None:
    path = tmp_path / "access.jsonl"
    log = AccessLog(AccessLogConfig(str(path)))
    log.write({"n": 1})
    _settled(log, 1)
    if how == "rotated":
        path.rename(tmp_path / "access.jsonl.1")
    else:
        path.unlink()
    log.write({"n": 2})
    log.close()
    # Before, the second line went to the renamed file, or to no file at all.
    assert path.read_bytes() == b'{"n":2}\n'
    if how == "rotated":
        assert (tmp_path / "access.jsonl.1").read_bytes() == b'{"n":1}\n'


class _Disk:
    """A file on a disk that fills up: `free` bytes are taken, then writes fail (ENOSPC)."""

    def __init__(self, free: int) -> None:
        self.free, self.data = free, b""

    def write(self, data: bytes) -> int:
        if self.free <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        taken = bytes(data[:self.free])
        self.free -= len(taken)
        self.data += taken
        return len(taken)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_full_disk_is_reported_once_and_counted(monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    disk = _Disk(free=12)  # the first line and a half
    monkeypatch.setattr(AccessLog, "_open", staticmethod(lambda path: disk))
    log = AccessLog(AccessLogConfig("access.jsonl"))
    with caplog.at_level(logging.WARNING, logger="surge.server.access_log"):
        for n in range(100):
            log.write({"n": n})
            _settled(log, n + 1)
        disk.free = 1000  # space freed
        log.write({"n": 100})
        log.close()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]  # was: one per record
    assert "No space left on device" in errors[0].getMessage()
    assert any("writing again" in r.getMessage() for r in caplog.records)
    assert log.dropped == 99
    assert log.written == 2
    # The torn line is ended before the next one: every line after it parses.
    assert disk.data.split(b"\n") == [b'{"n":0}', b'{"n"', b'{"n":100}', b""]


# Opening the log at a FIFO in a process of its own: before, open() waited for a reader for
# good (SIGTERM did not end it), and so did the server's start.
_OPEN_AT_FIFO = """
import sys
from surge.errors import SurgeError
from surge.server.access_log import AccessLog, AccessLogConfig
try:
    AccessLog(AccessLogConfig(sys.argv[1]))
except SurgeError as exc:
    print(exc)
"""


def test_a_fifo_no_one_reads_is_refused_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "access.fifo"
    os.mkfifo(fifo)
    try:
        result = subprocess.run([sys.executable, "-c", _OPEN_AT_FIFO, str(fifo)],
                                capture_output=True, text=True, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("opening the access log at a FIFO with no reader never returned")
    assert result.returncode == 0, result.stderr
    assert f"cannot open the access log {fifo}: it is a FIFO no process reads" in result.stdout


def test_a_fifo_with_a_reader_gets_the_lines(tmp_path: Path) -> None:
    fifo = tmp_path / "access.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        log = AccessLog(AccessLogConfig(str(fifo)))
        log.write({"n": 1})
        log.close()
        assert os.read(reader, 100) == b'{"n":1}\n'
    finally:
        os.close(reader)
