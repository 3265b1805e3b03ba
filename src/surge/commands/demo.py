"""`surge demo`: Surge's main job on the embedded default model."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.table import Table

from surge.commands import console

EXAMPLE_REPOSITORY = Path(__file__).resolve().parents[3] / "examples" / "repository"


def _percentile_ms(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples) * 1000.0, q))


def demo(
    repo: Annotated[Path, typer.Option(help="Model repository.")] = EXAMPLE_REPOSITORY,
    model: Annotated[str, typer.Option(help="Model to run.")] = "fashion",
    data: Annotated[str | None, typer.Option(
        help="Dataset to score it on (default: the model config's parameters.dataset).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Batch size for the accuracy pass.")] = 256,
) -> None:
    """Load the default model, score it on its dataset's test split, print accuracy and latency."""
    from surge.errors import ConfigError
    from surge.evaluate.harness import evaluate, load_dataset
    from surge.repository import Repository
    from surge.tasks import get_task

    if data is not None and not data.strip():  # not read as "the model's own dataset"
        raise ConfigError(f"--data {data!r}: give a dataset name or file, or leave --data out "
                          "for the model's parameters.dataset")
    loaded = Repository(repo).load(model)
    parameters = loaded.config.parameters
    dataset_spec = data or parameters.get("dataset")
    if not dataset_spec:
        raise ConfigError(f"model {model!r} names no parameters.dataset: pass --data DATASET")
    name = loaded.signature.inputs[0].name
    dataset = load_dataset(dataset_spec, name)
    loaded.runner.warmup()
    report = evaluate(loaded, dataset, parameters.get("task", "classification"),
                      batch_size=batch_size)

    # Every input the model takes: a column model (credit-mlp) has one per feature.
    names = loaded.signature.input_names
    single: list[float] = []
    for i in range(min(300, len(dataset))):
        t0 = time.perf_counter()
        loaded.runner.run({n: dataset.inputs[n][i:i + 1] for n in names})
        single.append(time.perf_counter() - t0)

    table = Table(title=f"{model} ({loaded.path.relative_to(Path(repo).resolve())})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("test samples", f"{report.count}")
    shown = get_task(parameters.get("task", "classification")).headline_text(
        report.metric, report.metric_name)
    table.add_row(f"test {report.metric_name}", shown)
    # as evaluate runs it: a dataset smaller than one batch runs as one batch of its size
    batch = min(batch_size, loaded.signature.max_batch_size or batch_size, report.count)
    table.add_row(f"throughput (batch {batch})",
                  f"{report.count / report.seconds:,.0f} samples/s")
    table.add_row("latency batch 1 p50", f"{_percentile_ms(single, 50):.3f} ms")
    table.add_row("latency batch 1 p99", f"{_percentile_ms(single, 99):.3f} ms")
    console.print(table)
