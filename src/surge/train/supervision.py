"""What `surge train`, its torchrun (`surge.train.agent`) and the ranks tell each other: the
exit codes torchrun ends with, and the file by which a diverged run stops.

torchrun restarts its workers after any failure (`--max-restarts`), and a run that diverged
would only diverge again from the same checkpoint. So the rank that sees the NaN writes the
file; `surge train` stops torchrun when it appears, and a rank started while it exists (a
restart that came first) exits at once. `surge train` removes it before a run starts, so an
earlier run's file stops nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

DIVERGED_ENV = "SURGE_DIVERGED_FILE"  # set by `surge train` for torchrun and its ranks
DIVERGED_FILE = "diverged.json"  # in log_dir
FAILED = 1  # a rank failed (torchrun's own code)
JOIN_TIMED_OUT = 3  # not every machine joined the rendezvous in time


def diverged_file() -> Path | None:
    """Where a diverged rank says so; None when no `surge train` watches this run."""
    value = os.environ.get(DIVERGED_ENV)
    return Path(value) if value else None


def mark_diverged(path: Path, rank: int, message: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # ranks may write at once
    partial.write_text(json.dumps({"rank": rank, "message": message}))
    os.replace(partial, path)  # whole or absent for the reader


def read_diverged(path: Path) -> tuple[int, str] | None:
    """(rank, message) of the divergence `path` records, or None."""
    try:
        record = json.loads(path.read_text())
        return int(record["rank"]), str(record["message"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
