"""Tabular risk benchmark: the LightGBM model (`credit-gbm`, ONNX) beside the network
(`credit-mlp`, ONNX) on the HMDA test split: AUC, F1 and calibration; rows per second at
batch 1 and at the best batch, in process and served (64 clients); tuned vs untuned served.

Needs both models in one repository:

    python -m surge_examples.finance.trees out/finance
    surge train recipes/credit-mlp.yaml --nproc 2
    .venv/bin/python benchmarks/tabular.py --repo out/finance
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ranking import in_process, serve_and_bench
from rich.console import Console
from rich.table import Table

from surge.evaluate.harness import evaluate, load_dataset
from surge.repository import Repository

MODELS = ("credit-gbm", "credit-mlp")
BATCHES = (1, 8, 32, 128)
CLIENTS = 64
DATASET = "hmda-credit"


def measure(repo: Path, model: str, duration: float, tuned: dict[str, Any]) -> dict[str, Any]:
    loaded = Repository(repo).load(model)
    dataset = load_dataset(DATASET)
    details = evaluate(loaded, dataset, "tabular-classification").details
    speeds = {b: in_process(loaded.runner, {k: v[:b] for k, v in dataset.inputs.items()})
              for b in BATCHES}
    best = max(speeds, key=lambda b: speeds[b])
    untuned = serve_and_bench(repo, model, 1, CLIENTS, duration, DATASET,
                              {"instances": 1, "batching": {"enabled": False}})
    served = serve_and_bench(repo, model, 1, CLIENTS, duration, DATASET, tuned)
    return {"auc": details.auc, "f1": details.f1, "calibration": details.calibration,
            "rows_per_s_batch_1": speeds[1], "best_batch": best,
            "rows_per_s_best": speeds[best], "served_untuned": untuned.__dict__,
            "served_tuned": served.__dict__,
            "tuned_over_untuned": served.items_per_s / untuned.items_per_s}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path("out/finance"))
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--tuned-instances", type=int, default=2)
    parser.add_argument("--tuned-batch", type=int, default=64)
    parser.add_argument("--tuned-delay-ms", type=float, default=1.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    missing = [m for m in MODELS if not (args.repo / m).is_dir()]
    if missing:
        print(f"missing {missing} in {args.repo}: see this file's docstring")
        return 2
    tuned = {"instances": args.tuned_instances, "max_batch_size": args.tuned_batch,
             "batching": {"enabled": True, "max_queue_delay_ms": args.tuned_delay_ms}}
    results = {m: measure(args.repo, m, args.duration, tuned) for m in MODELS}
    table = Table(title=f"HMDA credit risk, test split; served at {CLIENTS} clients, 1 row each")
    for column in ("model", "AUC", "F1@0.5", "calibration", "rows/s b=1", "rows/s best (b)",
                   "served untuned rows/s", "served tuned rows/s (p99 ms)", "tuned/untuned"):
        table.add_column(column)
    for model, r in results.items():
        table.add_row(model, f"{100 * r['auc']:.2f}", f"{100 * r['f1']:.2f}",
                      f"{100 * r['calibration']:.2f}", f"{r['rows_per_s_batch_1']:,.0f}",
                      f"{r['rows_per_s_best']:,.0f} ({r['best_batch']})",
                      f"{r['served_untuned']['items_per_s']:,.0f}",
                      f"{r['served_tuned']['items_per_s']:,.0f} "
                      f"({r['served_tuned']['p99_ms']:.1f})", f"{r['tuned_over_untuned']:.2f}x")
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
