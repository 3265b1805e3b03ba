"""The data files a command is given (`--input`, `--calib`, `--trace`, a recipe): regular files
only, arrays without pickles, and every failure one line naming the file.

A FIFO or a device passes `exists()` but blocks the first read forever, and an empty or
truncated `.npy` raises EOFError, which click turns into a bare "aborted": both are refused
here before anything reads them.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from zipfile import BadZipFile

import numpy as np

from surge.errors import ConfigError


def regular_file(path: Path | str, what: str) -> Path:
    """`path`, checked to be a regular file (symlinks followed); ConfigError naming `what`."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(f"{what} {str(path)!r} not found") from None
    except OSError as exc:
        raise ConfigError(f"{what} {str(path)!r} cannot be read ({exc.strerror})") from None
    if stat.S_ISDIR(mode):
        raise ConfigError(f"{what} {str(path)!r} is a directory")
    if not stat.S_ISREG(mode):
        raise ConfigError(f"{what} {str(path)!r} is not a regular file (a pipe or a device "
                          "would block the read)")
    return path


def file_stamp(*paths: Path) -> tuple[int, ...]:
    """What tells that files changed on disk: each one's modification time, size and inode (a
    file renamed over another, as editors and Kubernetes secrets replace one, is a new inode);
    -1s for one that cannot be read. Files followed while serving compare it."""
    stamps: list[int] = []
    for path in paths:
        try:
            status = os.stat(path)
        except OSError:
            stamps += [-1, -1, -1]
            continue
        stamps += [status.st_mtime_ns, status.st_size, status.st_ino]
    return tuple(stamps)


def load_npy(path: Path | str, what: str, npz_hint: str = "") -> np.ndarray:
    """One array from a `.npy` file; object arrays (pickles) are refused, never loaded.
    `npz_hint` is said when the file is an .npz archive instead."""
    path = regular_file(path, what)
    try:
        with path.open("rb") as file:
            loaded = np.load(file, allow_pickle=False)
            if not isinstance(loaded, np.ndarray):  # an .npz archive
                loaded.close()
                loaded = None
    except (ValueError, OSError, EOFError) as exc:
        raise ConfigError(f"{what} {str(path)!r} is not a plain .npy array "
                          f"({_reason(exc)})") from None
    except MemoryError:  # numpy allocates what the header claims before reading the data
        raise ConfigError(f"{what} {str(path)!r}: its header claims an array larger than this "
                          f"machine's memory ({path.stat().st_size} bytes in the file)") from None
    if loaded is None:
        raise ConfigError(f"{what} {str(path)!r} is an .npz archive, not one .npy array"
                          f"{npz_hint}")
    return loaded


def load_npz(path: Path | str, what: str) -> dict[str, np.ndarray]:
    """Every array of an `.npz` archive by name; object arrays (pickles) are refused."""
    path = regular_file(path, what)
    try:  # our own handle: np.load leaves its file open when the archive is corrupt
        with path.open("rb") as file:
            archive = np.load(file, allow_pickle=False)
            if isinstance(archive, np.ndarray):
                raise ValueError("a .npy array, not an .npz archive")
            with archive:
                return {key: archive[key] for key in archive.files}
    except (ValueError, OSError, EOFError, BadZipFile) as exc:
        raise ConfigError(f"{what} {str(path)!r} is not an .npz archive of plain arrays "
                          f"({_reason(exc)})") from None


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


def refuse_foreign_files(folder: Path, outputs: dict[str, frozenset[str] | None],
                         what: str = "OUT") -> None:
    """Refuse to write a command's outputs into `folder` when it holds anything they are not:
    a previous output of the same command is written over, other files would end up beside
    splits they do not belong to (and be read with them). `outputs` names each top-level file
    (None) or folder (the names it may hold)."""
    if not folder.is_dir():
        return
    try:
        foreign = sorted(_foreign(folder, outputs))
    except OSError as exc:
        raise ConfigError(f"{what} {str(folder)!r} cannot be read ({exc.strerror})") from None
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3
                                          else "")
        raise ConfigError(f"{what} {str(folder)!r} holds files this command does not write "
                          f"({shown}): name an empty or new folder, or move them away")


def _foreign(folder: Path, outputs: dict[str, frozenset[str] | None]) -> list[str]:
    found = []
    for entry in folder.iterdir():
        inside = outputs.get(entry.name, frozenset())
        if entry.name not in outputs or (inside is None) == entry.is_dir():
            found.append(entry.name)  # not an output, or a file where a folder goes
        elif inside is not None:
            found += [f"{entry.name}/{sub.name}" for sub in entry.iterdir()
                      if sub.name not in inside or sub.is_dir()]
    return found
