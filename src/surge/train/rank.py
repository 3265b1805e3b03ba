"""What each torchrun process runs: `python -m surge.train.rank CONFIG [--resume]`.

CONFIG is the resolved recipe `surge train` wrote (overrides applied, already validated).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import NoReturn

from rich.console import Console

from surge.errors import SurgeError
from surge.train.config import load_train_config
from surge.train.recipe import DivergedError, run
from surge.train.supervision import diverged_file, mark_diverged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="surge.train.rank")
    parser.add_argument("config")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    marker = diverged_file()
    if marker is not None and marker.exists():
        return 2  # torchrun restarted us after this run diverged: it would diverge again
    try:
        run(load_train_config(args.config), resume=args.resume)
    except DivergedError as exc:
        if marker is None:
            _say(exc)
        else:  # `surge train` stops torchrun and says it once, for every rank
            mark_diverged(marker, int(os.environ.get("RANK", "0")), str(exc))
        return 2
    except SurgeError as exc:
        _say(exc)
        return 2
    except KeyboardInterrupt:
        return 130  # Ctrl-C reaches every rank: `surge train` stops, no traceback per rank
    return 0


def _say(exc: SurgeError) -> None:
    Console(stderr=True).print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)


def leave(code: int) -> NoReturn:
    """Exit without the interpreter's finalization. There, objects of torch's gloo transport
    still held by its C++ threads were destroyed as the interpreter came down, and a rank that
    had finished its run aborted now and then under load ("terminate called without an active
    exception", SIGABRT), which torchrun counts as a failed run. The process group is
    destroyed by then and every file the rank wrote is closed; only the output streams and
    logging need flushing. It also saves the about 0.9 s finalization takes after torch."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


if __name__ == "__main__":
    leave(main())
