"""How a worker process ended, in the words a failed load gives; a start that takes too long."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable

from surge.errors import ModelLoadError


def exited_loading(index: int, exitcode: int | None) -> str:
    """Why worker `index` never became ready when it said nothing itself: killed by the kernel
    when memory ran out, a crash in native code, a start that failed before the model."""
    how = f"exit code {exitcode}"
    if exitcode is not None and exitcode < 0:
        with contextlib.suppress(ValueError):
            how += f", {signal.Signals(-exitcode).name}"
    return (f"worker {index} exited while loading the model ({how}); the server's log shows "
            "what it printed")


async def started_within(start: Awaitable[None], stop: Callable[[float], Awaitable[None]],
                         timeout_s: float, what: str) -> None:
    """A pool's `start`, given `timeout_s` (config `load_timeout_s`): an instance whose load or
    warm-up hung (a warm-up sample the model never finishes, a model file on a stalled disk)
    failed nothing, and the model stayed LOADING for ever. Past it the pool is stopped, which
    kills the processes still loading."""
    try:
        await asyncio.wait_for(start, timeout_s)
    except TimeoutError:
        await stop(0.0)
        raise ModelLoadError(
            f"{what}: its instances did not load the model and run its warm-up samples within "
            f"{timeout_s:g} s (load_timeout_s); the server's log shows what they printed"
        ) from None
