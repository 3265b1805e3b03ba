"""SIGTERM while the load generator's event loop runs: the loop's main task is cancelled, so the
run unwinds as asyncio unwinds Ctrl-C, and the command's own SIGTERM handler runs once the loop
is closed.

A handler that raises (`surge.commands.exit_on_sigterm` raises SystemExit) must not run inside
the loop: Python runs it wherever the main thread is, a transport's `data_received` included,
where the exit is taken for the connection's own error ("Fatal error on transport", "Task
exception was never retrieved") or swallowed by the HTTP parser as a bad response.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Coroutine
from types import FrameType
from typing import Any, TypeVar

T = TypeVar("T")


class _Termination:
    """Turns SIGTERM into cancelling the loop's main task, and remembers that it came."""

    def __init__(self) -> None:
        self.received = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None

    async def main(self, work: Coroutine[Any, Any, T]) -> T:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        if self.received:  # came before the loop ran anything: do none of the work
            work.close()
            raise asyncio.CancelledError
        return await work

    def handle(self, signum: int, frame: FrameType | None) -> None:
        # Only schedules the cancel: raising here would raise in whatever callback runs now.
        self.received = True
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._cancel)

    def _cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()


def run_until_terminated(work: Coroutine[Any, Any, T]) -> T:
    """`uvloop.run(work)`; where SIGTERM has a Python handler (the command unwinds on it), a
    SIGTERM meanwhile cancels `work` and that handler is called after the loop is closed."""
    import uvloop

    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or not callable(previous):
        return uvloop.run(work)  # SIGTERM kills the process (or is ignored): nothing to unwind
    termination = _Termination()
    signal.signal(signal.SIGTERM, termination.handle)
    try:
        return uvloop.run(termination.main(work))
    finally:
        signal.signal(signal.SIGTERM, previous)
        if termination.received:  # SystemExit from it replaces the run's CancelledError
            previous(signal.SIGTERM, None)
