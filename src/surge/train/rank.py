"""What each torchrun process runs: `python -m surge.train.rank CONFIG [--resume]`.

CONFIG is the resolved recipe `surge train` wrote (overrides applied, already validated).
"""

from __future__ import annotations

import argparse
import sys

from rich.console import Console

from surge.errors import SurgeError
from surge.train.config import load_train_config
from surge.train.recipe import run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="surge.train.rank")
    parser.add_argument("config")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    try:
        run(load_train_config(args.config), resume=args.resume)
    except SurgeError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
