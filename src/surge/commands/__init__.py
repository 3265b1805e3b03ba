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



# Below this, a drop in accuracy points reads like a fraction (0.01 meant as 1%): said, not refused
POINTS_NOTE_BELOW = 0.1


def points_note(option: str, drop: float | None) -> str | None:
    """What to say when no variant was within an accuracy-drop budget of `drop` points: a
    budget under a tenth of a point was likely meant as a fraction. `option` is how the user
    gives it, `{}` standing for the value (e.g. "--max-accuracy-drop {}")."""
    if drop is None or not 0 < drop < POINTS_NOTE_BELOW:
        return None
    meant = f"{100 * drop:g}"
    return (f"note: no variant is within {option.format(f'{drop:g}')}, which is in accuracy "
            f"points (0.01 = one hundredth of a point; 1 = one point): to allow a drop of "
            f"{meant} point{'' if meant == '1' else 's'}, write {option.format(meant)}")
