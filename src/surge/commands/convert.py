"""`surge convert`: turn a TensorFlow or Caffe model into a checked ONNX file beside it."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.table import Table

from surge.commands import console
from surge.errors import NotFoundError


def convert(
    repo: Annotated[Path, typer.Argument(help="Model repository directory.")],
    model: Annotated[str, typer.Option(help="Model whose version directory holds a "
                                            "model.savedmodel/, model.h5 or Caffe model.")],
    version: Annotated[int | None, typer.Option(help="Version (default: newest served).")] = None,
    data: Annotated[Path | None, typer.Option(
        help="Real inputs for the parity check: .npy (one-input model) or .npz (one array per "
             "input), in addition to random ones.")] = None,
    force: Annotated[bool, typer.Option(help="Convert again even if the cached one is current.")] = False,
) -> None:
    """Convert once to VERSION/converted/model.onnx and record its error against the original
    framework in VERSION/converted/conversion.yaml (Surge also converts on first load)."""
    from surge.convert import SOURCE_NAMES, find_source
    from surge.convert import convert as convert_source
    from surge.repository import Repository

    repository = Repository(repo)
    number = repository.resolve_version(model, version)
    directory = repository.model_dir(model) / str(number)
    source = find_source(directory)
    if source is None:
        raise NotFoundError(f"{directory}: nothing to convert (expected {', '.join(SOURCE_NAMES)})")
    if data is not None and not data.is_file():
        what = "a directory, not a .npy or .npz file" if data.is_dir() else "no such file"
        raise NotFoundError(f"--data {data}: {what}")
    with _terminate_as_exit():
        conversion = convert_source(source, real=data, force=force)
    state = "cached, unchanged source" if conversion.cached else "converted"
    console.print(f"{source.path} -> {conversion.model} ({state}; {conversion.converter})")
    table = Table("inputs", "rows", "max abs error", "mean abs error",
                  title=f"against {conversion.reference}")
    for parity in conversion.parity:
        table.add_row(parity.inputs, str(parity.rows), f"{parity.max_abs:.3g}", f"{parity.mean_abs:.3g}")
    console.print(table)


@contextlib.contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C: the converter's processes are killed and its unfinished
    work directory removed, instead of both left behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit_on_signal(signum: int, _frame: object) -> NoReturn:
    raise SystemExit(128 + signum)
