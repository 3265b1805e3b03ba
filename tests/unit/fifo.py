"""A FIFO given where a file is expected: the read would block forever, so the code under test
must refuse it without opening it. `bounded` runs the code in a thread and, should it block,
unblocks it (a writer opens and closes the FIFO) so that the test fails instead of hanging."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def make_fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def bounded(fifo: Path, call: Callable[[], T], timeout_s: float = 30.0) -> T:
    """`call()`'s result (or its exception); AssertionError if it was still blocked on `fifo`
    after `timeout_s`."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = call()
        except BaseException as exc:  # noqa: BLE001  (handed to the test's thread)
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout_s)
    blocked = thread.is_alive()
    if blocked:
        with contextlib.suppress(OSError):  # a reader is waiting: this open succeeds at once
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(timeout_s)
    assert not blocked, f"blocked reading the FIFO {fifo}"
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["result"]  # type: ignore[return-value]
