"""Tabular risk benchmark: the LightGBM model (`credit-gbm`, ONNX) beside the network
(`credit-mlp`, ONNX) on the HMDA test split: AUC, F1 and calibration; rows per second at
batch 1 and at the best batch in process; served to 64 clients sending one row each, untuned
(1 instance, no batching: every row its own batch) and tuned (dynamic batching), side by side.

Trains whichever model the repository lacks (the trees in seconds; the network with the full
10-epoch recipe on one process). "Tuned" is what `surge tune` wrote into each model's
config.yaml, or the --tuned-* settings for a model it has not tuned.

    .venv/bin/python benchmarks/tabular.py                 # writes benchmarks/results/tabular.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from ranking import (
    CLIENTS,
    RESULTS,
    ROOT,
    compare_served,
    in_process,
    run_or_exit,
    train_if_missing,
    tuned_settings,
)
from rich.console import Console
from rich.table import Table

from surge.evaluate.harness import evaluate, load_dataset
from surge.repository import LoadedModel, Repository
from surge.runtimes import load_runner

MODELS = ("credit-gbm", "credit-mlp")
BATCHES = (1, 8, 32, 128)
DATASET = "hmda-credit"
# The tune's own baseline (surge.tuning.tune.baseline_candidate): one row per batch.
UNTUNED = {"variant": None, "max_batch_size": 256, "instances": 1, "threads": 0,
           "slo_p99_ms": None, "batching": {"enabled": False}}


def ensure_models(repo: Path) -> None:
    if not (repo / "credit-gbm").is_dir():
        run_or_exit([sys.executable, "-m", "surge_examples.finance.trees", str(repo)],
                    "training credit-gbm")
    train_if_missing(repo, "credit-mlp", "credit-mlp.yaml", ("parallelism=none",))


def in_process_speeds(runner: Any, inputs: dict[str, Any]) -> dict[int, float]:
    return {b: in_process(runner, {k: v[:b] for k, v in inputs.items()}) for b in BATCHES}


def original_and_served(repo: Path, model: str) -> tuple[LoadedModel, LoadedModel]:
    """The trained model and what its config serves (a tuned config may name a variant)."""
    found = Repository(repo)
    served = found.load(model)
    if served.variant is None:
        return served, served
    path = found.model_file(model, found.resolve_version(model, None))
    return replace(served, variant=None, path=path, runner=load_runner(path)), served


def quality_and_speed(loaded: LoadedModel, dataset: Any) -> dict[str, Any]:
    details = evaluate(loaded, dataset, "tabular-classification").details
    speeds = in_process_speeds(loaded.runner, dataset.inputs)
    best = max(speeds, key=lambda b: speeds[b])
    return {"auc": details.auc, "f1": details.f1, "calibration": details.calibration,
            "in_process_rows_per_s": speeds, "rows_per_s_batch_1": speeds[1],
            "best_batch": best, "rows_per_s_best": speeds[best]}


def measure(repo: Path, model: str, args: argparse.Namespace) -> dict[str, Any]:
    dataset = load_dataset(DATASET)
    original, served_model = original_and_served(repo, model)
    result = quality_and_speed(original, dataset)
    if served_model.variant is not None:
        result["served_variant"] = {"variant": served_model.variant,
                                    **quality_and_speed(served_model, dataset)}
    tuned, source = tuned_settings(repo / model, {
        **UNTUNED, "instances": args.tuned_instances, "max_batch_size": args.tuned_batch,
        "batching": {"enabled": True, "max_queue_delay_ms": args.tuned_delay_ms}})
    served = compare_served(repo, model, 1, args.duration, DATASET,
                            {"untuned": UNTUNED, "tuned": tuned}, args.rounds)
    return {**result, "tuned_settings": tuned, "tuned_source": source, "served": served}


def print_results(results: dict[str, Any]) -> None:
    table = Table(title=f"HMDA credit risk, test split; served to {CLIENTS} clients x 1 row "
                        "(mean of runs, worst p99)")
    for column in ("model", "AUC", "F1@0.5", "calibration", "rows/s b=1", "rows/s best (b)",
                   "served untuned rows/s (p99 ms)", "served tuned rows/s (p99 ms)",
                   "tuned/untuned"):
        table.add_column(column)
    for model, r in results["models"].items():
        untuned, tuned = r["served"]["untuned"], r["served"]["tuned"]
        table.add_row(model, f"{100 * r['auc']:.2f}", f"{100 * r['f1']:.2f}",
                      f"{100 * r['calibration']:.2f}", f"{r['rows_per_s_batch_1']:,.0f}",
                      f"{r['rows_per_s_best']:,.0f} ({r['best_batch']})",
                      f"{untuned['items_per_s']:,.0f} ({untuned['p99_ms']:.1f})",
                      f"{tuned['items_per_s']:,.0f} ({tuned['p99_ms']:.1f})",
                      f"{r['served']['tuned_over_untuned']:.2f}x")
    console = Console()
    console.print(table)
    for model, r in results["models"].items():
        console.print(f"{model} tuned ({r['tuned_source']}): {r['tuned_settings']}")
        if "served_variant" in r:
            v = r["served_variant"]
            console.print(f"  {v['variant']} in process: AUC {100 * v['auc']:.2f}, "
                          f"{v['rows_per_s_batch_1']:,.0f} rows/s at b=1, "
                          f"{v['rows_per_s_best']:,.0f} at b={v['best_batch']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=ROOT / "out" / "finance")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per served run")
    parser.add_argument("--rounds", type=int, default=2, help="alternating served runs each")
    parser.add_argument("--tuned-instances", type=int, default=2)
    parser.add_argument("--tuned-batch", type=int, default=64)
    parser.add_argument("--tuned-delay-ms", type=float, default=1.0)
    parser.add_argument("--json", type=Path, default=RESULTS / "tabular.json")
    args = parser.parse_args()
    repo = args.repo.resolve()
    ensure_models(repo)
    results = {"machine": f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at "
                          "start", "duration_s": args.duration, "rounds": args.rounds,
               "models": {m: measure(repo, m, args) for m in MODELS}}
    print_results(results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
