"""What each torchrun process runs: `python -m surge.train.rank CONFIG [--resume]`.

CONFIG is the resolved recipe `surge train` wrote (overrides applied, already validated).
"""

from __future__ import annotations

import argparse
import os
import sys

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


if __name__ == "__main__":
    sys.exit(main())
