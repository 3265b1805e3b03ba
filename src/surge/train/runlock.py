"""One `surge train` at a time in a run's folders (`checkpoint.dir`, `log_dir`).

Two runs sharing them overwrite each other's checkpoints, `best.safetensors`, `latest.json`
and resolved config: each may export or resume the other's weights under its own metrics,
and neither says so. `surge train` holds an advisory lock (flock) on a file in each folder for
the whole run; the kernel drops it when the process ends, so a crashed run leaves no stale
lock. Runs across machines share these folders by design and are not locked.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO

from surge.errors import ConfigError, shown
from surge.train.config import TrainConfig

LOCK_FILE = ".surge-train.lock"


@contextmanager
def run_lock(config: TrainConfig) -> Iterator[None]:
    """Hold the run's folders for the block; ConfigError when another run holds one."""
    with ExitStack() as stack:
        for key, folder in run_folders(config):
            stack.enter_context(_locked(key, folder))
        yield


def run_folders(config: TrainConfig) -> list[tuple[str, Path]]:
    """(recipe key, folder) for each distinct folder the run writes its state into."""
    folders: dict[Path, str] = {}
    for key, value in (("checkpoint.dir", config.checkpoint.dir), ("log_dir", config.log_dir)):
        folders.setdefault(Path(value).resolve(), key)
    return [(key, folder) for folder, key in folders.items()]


@contextmanager
def _locked(key: str, folder: Path) -> Iterator[None]:
    with _lock_file(key, folder) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"{key} {shown(str(folder))} is in use by another surge train (pid "
                f"{_holder(handle)}): wait for it to end, or give this run its own "
                "checkpoint.dir and log_dir") from None
        except OSError:  # a filesystem without flock: run unlocked, as before
            yield
            return
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield


def _lock_file(key: str, folder: Path) -> IO[str]:
    """The lock file in `folder`, made with the folder: the first write of the run, refused in
    one line where it cannot be made (a read-only path) instead of a traceback."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return open(folder / LOCK_FILE, "a+")  # the caller's `with` closes it
    except OSError as exc:
        raise ConfigError(f"{key} {shown(str(folder))} cannot be written ({exc.strerror or exc}"
                          f"): give the run a folder it can write") from None


def _holder(handle: IO[str]) -> str:
    handle.seek(0)
    return handle.read().strip() or "unknown"

