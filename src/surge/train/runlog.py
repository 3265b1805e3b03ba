"""Rank 0's view of a run: a progress bar, one console line and one JSONL record per epoch,
and a PNG of the loss curve."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

METRICS_FILE = "metrics.jsonl"
LOSS_PLOT = "loss.png"


class RunLog:
    """Writes what rank 0 reports; other ranks get a RunLog with `enabled=False` (silent)."""

    def __init__(self, log_dir: Path, enabled: bool, history: list[dict[str, Any]],
                 metric: tuple[str, str] = ("val_accuracy", "accuracy")) -> None:
        """Start the JSONL file over from `history`: the epochs the run resumes after (if any).

        Epochs a crashed attempt logged after its last checkpoint are dropped with it. `metric`
        is the validation metric's (record key, label), e.g. ("val_accuracy", "accuracy").
        """
        self.log_dir = Path(log_dir)
        self.enabled = enabled
        self.metric_key, self.metric_label = metric
        self.console = Console(stderr=False, highlight=False)
        if enabled:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            lines = "".join(json.dumps(record) + "\n" for record in history)
            (self.log_dir / METRICS_FILE).write_text(lines)

    def say(self, message: str) -> None:
        if self.enabled:
            self.console.print(message)

    def progress(self) -> Progress:
        return Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=self.console, disable=not self.enabled, transient=False,
        )

    def epoch(self, record: dict[str, Any], history: list[dict[str, Any]]) -> None:
        if not self.enabled:
            return
        self.console.print(
            f"epoch {record['epoch']}: loss {record['train_loss']:.4f}  "
            f"val loss {record['val_loss']:.4f}  val {self.metric_label} "
            f"{record[self.metric_key]:.4f}  "
            f"{record['samples_per_s']:.0f} samples/s  ({record['epoch_s']:.1f}s)"
        )
        with (self.log_dir / METRICS_FILE).open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        plot_loss(history, self.log_dir / LOSS_PLOT, self.metric_key, self.metric_label)


def plot_loss(history: list[dict[str, Any]], path: Path, key: str = "val_accuracy",
              name: str = "accuracy") -> Path:
    """Training and validation loss per epoch, with the validation metric on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train loss")
    axis.plot(epochs, [h["val_loss"] for h in history], marker="o", label="validation loss")
    axis.set_xlabel("epoch")
    axis.set_ylabel("loss")
    accuracy = axis.twinx()
    accuracy.plot(epochs, [h[key] for h in history], color="tab:green",
                  linestyle="--", marker=".", label=f"validation {name}")
    accuracy.set_ylabel(name)
    lines = axis.get_legend_handles_labels()
    more = accuracy.get_legend_handles_labels()
    axis.legend(lines[0] + more[0], lines[1] + more[1], loc="center right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
