"""`surge inspect`, `surge predict`, `surge models`, `surge evaluate`: one model, in process."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.markup import escape
from rich.table import Table

from surge.commands import console
from surge.errors import SurgeError


def inspect(
    path: Annotated[Path, typer.Argument(help="A model file (.onnx, .pt2, .keras) or repo/model dir.")],
) -> None:
    """Print a model's engine and signature."""
    from surge.inspection import describe_path

    engine, signature, source = describe_path(path)
    # paths and names are the files' text, not markup: "[red]x.onnx" printed as "x.onnx"
    console.print(f"[bold]{escape(source)}[/bold]  engine: {escape(engine)}  "
                  f"platform: {escape(signature.platform)}")
    batch = f"batched, max batch {signature.max_batch_size or 'unlimited'}" if signature.batched \
        else "not batched"
    console.print(f"dim 0: {batch}")
    table = _table("kind", "name", "datatype", "shape")
    for kind, specs in (("input", signature.inputs), ("output", signature.outputs)):
        for spec in specs:
            table.add_row(kind, escape(spec.name), escape(spec.datatype),
                          escape(str(list(spec.shape))))
    console.print(table)


def _table(*headers: str) -> Table:
    """A table whose long cells wrap: cut at the terminal's width, two long model names
    sharing a prefix printed alike and a reason lost its path."""
    table = Table()
    for header in headers:
        table.add_column(header, overflow="fold")
    return table


def predict(
    repo: Annotated[Path, typer.Argument(help="Model repository directory.")],
    model: Annotated[str, typer.Option(
        help="Model name (its config's variant, if it selects one), name@variant, or "
             "name@original (the version files).")],
    input: Annotated[list[str], typer.Option(  # noqa: A002
        "--input", help="file.npy for a one-input model, or NAME=file.npy (repeatable).")],
    version: Annotated[int | None, typer.Option(help="Version (default: newest served).")] = None,
    output: Annotated[Path | None, typer.Option(help="Save outputs to this .npz file.")] = None,
) -> None:
    """Run one inference locally and print (or save) the outputs."""
    from surge.inspection import predict_files
    from surge.repository import Repository

    if output is not None:
        output = _npz_path(output)
    loaded = Repository(repo).load(model, version)
    outputs = predict_files(loaded, input)
    if output is not None:
        np.savez(output, **outputs)  # type: ignore[arg-type]
        console.print(f"saved {escape(', '.join(outputs))} to {escape(str(output))}")
        return
    labels = loaded.config.labels
    for name, array in outputs.items():
        console.print(f"[bold]{escape(name)}[/bold] {array.dtype} {list(array.shape)}")
        if labels and array.ndim == 2 and array.shape[1] == len(labels):
            _print_labels(array, labels)
        else:
            console.print(np.array2string(array, threshold=64, precision=4))


def _print_labels(scores: np.ndarray, labels: list[str]) -> None:
    """Each row's best class; a row holding NaN has none (argmax takes the first NaN for the
    best: a label the scores do not support)."""
    for row, best in enumerate(scores.argmax(axis=1)):
        if np.isnan(scores[row].astype(np.float64)).any():  # any float kind, bf16 too
            console.print(f"  [{row}] no class: its scores hold NaN")
            continue
        console.print(f"  [{row}] {escape(labels[best])} (class {best}, "
                      f"score {scores[row, best]:.3f})")


def _npz_path(path: Path) -> Path:
    """The file --output names (np.savez adds .npz to any other name), checked before the
    model runs."""
    named = path  # a folder named without .npz would get DIR.npz written beside it
    path = path if path.suffix == ".npz" else path.with_name(path.name + ".npz")
    for where in (named, path):
        if where.is_dir():
            raise SurgeError(f"--output {str(where)!r} is a directory: name a file in it, "
                             f"e.g. {str(where / 'outputs.npz')!r}")
        if where.exists() and not where.is_file():  # a FIFO no one reads blocks the write
            raise SurgeError(f"--output {str(where)!r} is not a regular file (a pipe or a "
                             "device): name a new .npz file or an existing one to replace")
    if not path.parent.is_dir():
        raise SurgeError(f"--output {str(path)!r}: directory {str(path.parent)!r} does not exist")
    if not os.access(path if path.exists() else path.parent, os.W_OK):
        raise SurgeError(f"--output {str(path)!r} is not writable")
    return path


# what `check_name` allows, as `surge models` says it of the folders it leaves out
_NAME_PATTERN = "[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"


def models(repo: Annotated[Path, typer.Argument(help="Model repository directory.")]) -> None:
    """List models, their versions, variants and state."""
    from surge.repository import Repository

    repository = Repository(repo)
    table = _table("model", "versions", "served", "variants", "state", "reason")
    entries = repository.entries()
    for entry in entries:
        variants = [*entry.variants, *(f"{v} (broken)" for v, _ in entry.broken_variants)]
        table.add_row(  # names and reasons are the repository's text, not markup
            escape(entry.name), ",".join(map(str, entry.versions)) or "-",
            ",".join(map(str, entry.served)) or "-", escape(",".join(variants)) or "-",
            "[green]READY[/green]" if entry.state == "READY" else "[red]UNAVAILABLE[/red]",
            escape(entry.reason),
        )
    console.print(table)
    for entry in entries:  # why each marked variant is broken, one line each
        for variant, why in entry.broken_variants:
            console.print(escape(f"variant {entry.name}@{variant} is broken: {why}"),
                          highlight=False, soft_wrap=True)
    skipped = repository.not_model_names()
    if skipped:  # `surge inspect` refuses them by name: say why they are not listed
        shown_names = ", ".join(map(repr, skipped[:20])) + (
            f", ... ({len(skipped)} in all)" if skipped[20:] else "")
        console.print(escape(f"not models (names must match {_NAME_PATTERN}): {shown_names}"),
                      highlight=False, soft_wrap=True)
    broken = repository.broken_links()
    if broken:  # a model whose link points nowhere would otherwise vanish from the list
        console.print(escape("links to nothing (not models): " + ", ".join(map(repr, broken))),
                      highlight=False, soft_wrap=True)


def evaluate(
    repo: Annotated[Path, typer.Argument(help="Model repository directory.")],
    model: Annotated[str, typer.Option(
        help="Model name (its config's variant, if it selects one), name@variant, or "
             "name@original (the version files).")],
    data: Annotated[str, typer.Option(
        help="'fashion-mnist', an .npz of inputs + labels, or a detection .npz with a COCO "
             ".json beside it.")],
    task: Annotated[str, typer.Option(
        help="A registered task (classification, detection, embedding, ranking, ...: "
             "`surge data list`) or 'package.module:Class'.")] =
        "classification",
    metric: Annotated[str | None, typer.Option(
        help="Headline metric (default: the task's first).")] = None,
    samples: Annotated[int | None, typer.Option(min=1, help="The first N samples only.")] = None,
) -> None:
    """Score a model on a dataset and print its headline metric."""
    from surge.api import evaluate as run_evaluate
    from surge.tasks import get_task

    report = run_evaluate(repo, model, data, task, metric=metric, samples=samples)
    shown_metric = get_task(task).headline_text(report.metric, report.metric_name)
    console.print(f"{escape(report.model)} on {escape(report.dataset)} ({report.count} "
                  f"samples): {escape(report.metric_name)} {escape(shown_metric)} in "
                  f"{report.seconds:.1f} s")
