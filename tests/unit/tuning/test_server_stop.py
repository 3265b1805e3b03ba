"""A trial's server is stopped even when the tune is interrupted again while it drains."""

from __future__ import annotations

import subprocess
import sys

import pytest

from surge.tuning import serving

# Ignores SIGTERM, as a server still draining does not stop on it at once.
DRAINING = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(120)")


@pytest.mark.parametrize("interruption", [KeyboardInterrupt(), SystemExit(143)])
def test_a_second_interrupt_while_the_server_drains_kills_it(
        interruption: BaseException) -> None:
    """A second Ctrl-C or SIGTERM during the 15 s drain left the server running, orphaned,
    serving from a staged repository the tune then removed."""
    process = subprocess.Popen([sys.executable, "-c", DRAINING], stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        process.stdout.readline()  # its SIGTERM handler is set
        wait = process.wait
        waits: list[float | None] = []

        def interrupted(timeout: float | None = None) -> int:
            waits.append(timeout)
            if len(waits) == 1:
                raise interruption  # arrives while it drains
            return wait(timeout)

        process.wait = interrupted  # type: ignore[method-assign]
        with pytest.raises(type(interruption)):
            serving._stop(process)
        assert process.poll() is not None
    finally:
        if process.poll() is None:
            process.kill()
        wait()
        if process.stdout is not None:
            process.stdout.close()
