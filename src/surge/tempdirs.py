"""Temporary directories named after the process that owns them (`<prefix><pid>-<random>`), so
that those of a process killed outright (SIGKILL, the OOM killer: no cleanup ran) are found and
removed by the next one that makes a directory of the same kind."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path


def owned_dir(prefix: str) -> str:
    """A new directory in the temp dir, named with this process's id."""
    return tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-")


@contextlib.contextmanager
def owned_tempdir(prefix: str) -> Iterator[str]:
    """`owned_dir`, removed on exit; the orphans of its kind are removed first."""
    remove_orphaned((prefix,))
    path = owned_dir(prefix)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def remove_orphaned(prefixes: Iterable[str], root: Path | str | None = None) -> list[Path]:
    """The directories of these kinds that processes of this user left behind and that are
    gone now (found by the process id in their names): removed. Returns them."""
    removed = []
    for prefix in prefixes:
        for path in Path(root or tempfile.gettempdir()).glob(prefix + "*"):
            owner = path.name[len(prefix):].partition("-")[0]
            with contextlib.suppress(OSError):
                if owner.isdigit() and path.stat().st_uid == os.getuid() and not process_alive(
                        int(owner)):
                    shutil.rmtree(path)
                    removed.append(path)
    return removed


def process_alive(pid: int) -> bool:
    """Whether process `pid` exists (another user's counts); 0 and negatives name none."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True
