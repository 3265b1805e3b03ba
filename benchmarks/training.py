"""Training throughput (samples/s): 1 process vs 2-process DDP vs 2-stage pipeline, fp32 vs bf16.

Every configuration runs through `surge train` (torchrun for the 2-process ones) on the same
cores, one after another in one run. The single process runs once with every core as intra-op
threads and once with one thread; each of two processes gets half the cores. On a machine
shared with other jobs, OpenMP threads that spin-wait for a descheduled sibling make the
all-cores single process collapse, which the one-thread row shows. The figure is the last
epoch's samples/s as the recipe logs it (startup, validation and export excluded); ratios are
against the all-cores single fp32 process of the same model. Data are synthetic tensors of the
model's input shape, so the numbers measure the training step, not data loading.

    .venv/bin/python benchmarks/training.py                 # CPU (gloo), fp32 and bf16
    .venv/bin/python benchmarks/training.py --quick         # smaller epochs, for a smoke run

On a CUDA machine the same script trains on the GPU (NCCL) in fp32, bf16 and fp16; the
2-process rows need two GPUs (NCCL allows one rank per device) and are skipped otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

# name -> (builder, kwargs, input shape, training samples per epoch, batch size)
MODELS: dict[str, tuple[str, dict[str, Any], list[int], int, int]] = {
    "fashion_cnn": ("surge_examples.fashion.model:fashion_cnn", {}, [1, 28, 28], 3072, 128),
    "resnet18": ("surge.zoo.resnet:resnet18", {"classes": 10, "in_channels": 1, "width": 32},
                 [1, 32, 32], 1024, 64),
}
# (parallelism, processes, torch threads per process; 0 = cores / processes)
MODES = (("none", 1, 0), ("none", 1, 1), ("ddp", 2, 0), ("pipeline", 2, 0))


@dataclass
class Row:
    model: str
    parallelism: str
    processes: int
    threads: int
    precision: str
    device: str
    samples_per_s: float | None
    epoch_s: float | None
    wall_s: float
    ratio: float | None = None
    note: str = ""


def _recipe(model: str, parallelism: str, threads: int, precision: str, device: str,
            work: Path, scale: float) -> Path:
    builder, kwargs, shape, samples, batch = MODELS[model]
    config = {
        "model": {"builder": builder, "kwargs": kwargs, "input_shape": shape},
        "data": {"dataset": "synthetic", "train_size": max(batch * 4, int(samples * scale)),
                 "test_size": 256},
        "epochs": 2, "batch_size": batch, "parallelism": parallelism, "precision": precision,
        "device": device, "threads": threads, "pipeline": {"schedule": "1f1b", "microbatches": 4},
        "log_dir": str(work / "run"), "checkpoint": {"dir": str(work / "ckpt"), "interval": 100},
    }
    path = work / "recipe.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _surge() -> list[str]:
    return [sys.executable, "-c", "from surge.cli import main; main()"]


def run_one(model: str, parallelism: str, nproc: int, threads: int, precision: str,
            device: str, scale: float) -> Row:
    with tempfile.TemporaryDirectory(prefix="surge-train-bench-") as tmp:
        work = Path(tmp)
        recipe = _recipe(model, parallelism, threads, precision, device, work, scale)
        threads = threads or max(1, len(os.sched_getaffinity(0)) // nproc)
        started = time.perf_counter()
        done = subprocess.run([*_surge(), "train", str(recipe), "--nproc", str(nproc)],
                              capture_output=True, text=True, check=False)
        wall = time.perf_counter() - started
        metrics = work / "run" / "metrics.jsonl"
        if done.returncode != 0 or not metrics.exists():
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            return Row(model, parallelism, nproc, threads, precision, device, None, None, wall,
                       note=f"failed: {tail[:120]}")
        last = json.loads(metrics.read_text().splitlines()[-1])
        return Row(model, parallelism, nproc, threads, precision, device, last["samples_per_s"],
                   last["epoch_s"], wall)


def plan(device: str, gpus: int) -> list[tuple[str, str, int, int, str]]:
    precisions = ("fp32", "bf16", "fp16") if device == "cuda" else ("fp32", "bf16")
    return [(model, mode, nproc, threads, precision)
            for model in MODELS for mode, nproc, threads in MODES for precision in precisions
            if device == "cpu" or (nproc <= gpus and threads == 0)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="A quarter of the samples.")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--out", type=Path, default=None,
                        help="default: results/training.json (CPU) or training-cuda.json")
    args = parser.parse_args()
    device = args.device if args.device != "auto" else (
        "cuda" if torch.cuda.is_available() else "cpu")
    gpus = torch.cuda.device_count() if device == "cuda" else 0
    scale = 0.25 if args.quick else 1.0
    console = Console(width=130)
    rows: list[Row] = []
    load_before = os.getloadavg()[0]
    for model, mode, nproc, threads, precision in plan(device, gpus):
        if model not in args.models.split(","):
            continue
        row = run_one(model, mode, nproc, threads, precision, device, scale)
        console.print(f"{model} {mode} x{nproc} ({row.threads} threads) {precision}: "
                      f"{row.samples_per_s or 0:.0f} samples/s {row.note}")
        rows.append(row)
    for row in rows:
        base = next((r.samples_per_s for r in rows if r.model == row.model
                     and r.parallelism == "none" and r.precision == "fp32"
                     and r.threads == max(1, len(os.sched_getaffinity(0)))), None)
        if base and row.samples_per_s:
            row.ratio = row.samples_per_s / base
    table = Table("model", "parallelism", "procs", "threads", "precision", "samples/s",
                  "x 1-proc fp32",
                  "epoch s", "note", title=f"Training throughput ({device})")
    for row in rows:
        table.add_row(row.model, row.parallelism, str(row.processes), str(row.threads),
                      row.precision,
                      f"{row.samples_per_s:.0f}" if row.samples_per_s else "-",
                      f"{row.ratio:.2f}" if row.ratio else "-",
                      f"{row.epoch_s:.1f}" if row.epoch_s else "-", row.note)
    console.print(table)
    out = args.out or RESULTS / ("training.json" if device == "cpu" else "training-cuda.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "training", "device": device,
        "device_name": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor()
        or platform.machine(),
        "cores": len(os.sched_getaffinity(0)), "torch": torch.__version__,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average_before": load_before, "load_average_after": os.getloadavg()[0],
        "quick": args.quick, "rows": [asdict(r) for r in rows],
    }, indent=2) + "\n")
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
