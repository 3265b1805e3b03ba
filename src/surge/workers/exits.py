"""How a worker process ended, in the words a failed load gives."""

from __future__ import annotations

import contextlib
import signal


def exited_loading(index: int, exitcode: int | None) -> str:
    """Why worker `index` never became ready when it said nothing itself: killed by the kernel
    when memory ran out, a crash in native code, a start that failed before the model."""
    how = f"exit code {exitcode}"
    if exitcode is not None and exitcode < 0:
        with contextlib.suppress(ValueError):
            how += f", {signal.Signals(-exitcode).name}"
    return (f"worker {index} exited while loading the model ({how}); the server's log shows "
            "what it printed")
