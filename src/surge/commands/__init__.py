"""CLI commands: plain functions, one module per area, registered by `surge.cli.build_app`.

They parse their options, call the Python API (`surge.api`) and print what it returns. None of
them imports `surge.cli`: the CLI depends on the commands, never the other way round.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from rich.console import Console

console = Console()

TERMINATED_EXIT = 128 + signal.SIGTERM  # the shell's code for a process ended by SIGTERM


@contextmanager
def exit_on_sigterm() -> Iterator[None]:
    """SIGTERM ends the command the way Ctrl-C does, by unwinding it: temporary folders are
    removed, child processes stopped, half-made outputs dropped. By default SIGTERM kills the
    process on the spot and leaves all of them behind (a tune's staged repositories, a train's
    torchrun and its ranks still training)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(TERMINATED_EXIT)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
