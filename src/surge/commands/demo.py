"""`surge demo`: Surge's main job on the embedded default model."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.table import Table

from surge.cli import app, console

EXAMPLE_REPOSITORY = Path(__file__).resolve().parents[3] / "examples" / "repository"


def _percentile_ms(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples) * 1000.0, q))


@app.command()
def demo(
    repo: Annotated[Path, typer.Option(help="Model repository.")] = EXAMPLE_REPOSITORY,
    model: Annotated[str, typer.Option(help="Model to run.")] = "fashion",
    batch_size: Annotated[int, typer.Option(min=1, help="Batch size for the accuracy pass.")] = 256,
) -> None:
    """Load the default model, classify the Fashion-MNIST test set, print accuracy and latency."""
    from surge.data.fashion_mnist import load_fashion_mnist, to_model_input
    from surge.repository import Repository

    loaded = Repository(repo).load(model)
    images, labels = load_fashion_mnist("test")
    inputs = to_model_input(images)
    name = loaded.signature.inputs[0].name
    output = loaded.signature.outputs[0].name
    loaded.runner.warmup()

    started = time.perf_counter()
    predictions = np.concatenate([
        loaded.runner.run({name: inputs[i:i + batch_size]})[output].argmax(axis=1)
        for i in range(0, len(inputs), batch_size)
    ])
    elapsed = time.perf_counter() - started
    accuracy = float((predictions == labels).mean())

    single: list[float] = []
    for i in range(300):
        t0 = time.perf_counter()
        loaded.runner.run({name: inputs[i:i + 1]})
        single.append(time.perf_counter() - t0)

    table = Table(title=f"{model} ({loaded.path.relative_to(Path(repo).resolve())})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("test images", f"{len(labels)}")
    table.add_row("test accuracy", f"{accuracy:.2%}")
    table.add_row(f"throughput (batch {batch_size})", f"{len(labels) / elapsed:,.0f} images/s")
    table.add_row("latency batch 1 p50", f"{_percentile_ms(single, 50):.3f} ms")
    table.add_row("latency batch 1 p99", f"{_percentile_ms(single, 99):.3f} ms")
    console.print(table)
