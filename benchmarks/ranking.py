"""Ranking benchmark: candidates scored per second and p99 for the DLRM at 64 clients x 100
candidates (one request = one user's 100 candidates), in process and served, untuned and tuned
side by side; and the int8 (dynamic, static) and fp16 variants checked by the ranking metric
(NDCG@10, recall@10, AUC).

Trains the model first when the repository lacks it (a quick recipe: one process, 3 epochs of
100,000 impressions, a few minutes on 2 cores). "Untuned" is the configuration the recipe
exports (1 instance, batches of up to 256 candidates, 2 ms queue delay); "tuned" is what
`surge tune` wrote into the model's config.yaml, or the --tuned-* settings when it has not.

    .venv/bin/python benchmarks/ranking.py                 # writes benchmarks/results/ranking.json
    .venv/bin/python benchmarks/ranking.py --duration 5 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich.console import Console
from rich.table import Table

from surge.bench import run_bench
from surge.errors import SurgeError
from surge.evaluate.harness import evaluate, load_dataset
from surge.repository import Repository
from surge.tuning.serving import serving

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CANDIDATES = 100
CLIENTS = 64
DATASET = "simulated-clicks"
# The serving settings `surge tune` chooses and writes (surge.tuning.apply); everything else in
# config.yaml (signature, parameters) is the model's own and left alone.
SERVING_KEYS = ("variant", "max_batch_size", "batching", "instances", "threads", "slo_p99_ms")
# As `surge train recipes/dlrm.yaml` exports it: batching on by default, 256 candidates a batch.
UNTUNED = {"variant": None, "max_batch_size": 256, "instances": 1, "threads": 0,
           "slo_p99_ms": None, "batching": {"enabled": True, "max_queue_delay_ms": 2.0}}
# A third of the full recipe's steps: enough to time and to compare variants, not its best AUC.
QUICK_DLRM = ("parallelism=none", "epochs=3", "data.train_size=100000")
VARIANTS = ("int8-dynamic", "int8-static", "fp16")


@dataclass(frozen=True)
class Served:
    items_per_s: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int


def surge_command(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from surge.cli import main; main(sys.argv[1:])",
            *args]


def run_or_exit(command: list[str], what: str) -> None:
    print(f"{what}: {' '.join(command[3:] if command[1] == '-c' else command[1:])}", flush=True)
    done = subprocess.run(command, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{what} failed (exit {done.returncode})")


def train_if_missing(repo: Path, model: str, recipe: str, overrides: Sequence[str]) -> None:
    """Train `recipe` into `repo` unless `repo/model` is there already."""
    if (repo / model).is_dir():
        return
    runs = ROOT / "runs" / f"bench-{model}"
    run_or_exit(surge_command("train", str(ROOT / "recipes" / recipe), *overrides,
                              f"export.repo={repo}", f"log_dir={runs}",
                              f"checkpoint.dir={runs / 'checkpoints'}"), f"training {model}")


def serve_and_bench(repo: Path, model: str, rows: int, clients: int, duration: float,
                    dataset: str, config: dict[str, Any]) -> Served:
    """Copy `model` into a scratch repository with `config` merged into its config.yaml, serve
    it, and load it with `clients` closed-loop clients sending `rows` rows each request."""
    scratch = Path(tempfile.mkdtemp(prefix="surge-bench-"))
    shutil.copytree(repo / model, scratch / model)
    path = scratch / model / "config.yaml"
    merged = {**yaml.safe_load(path.read_text()), **config}
    path.write_text(yaml.safe_dump({k: v for k, v in merged.items() if v is not None}))
    try:
        with serving(scratch, model) as server:  # on ports the system chooses
            run = run_bench(server.url, model, clients, duration, batch_size=rows,
                            dataset=dataset).runs[0]
        return Served(run.throughput * rows, run.throughput, run.p50_ms, run.p99_ms,
                      sum(run.errors.values()))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def side_by_side(measure: Callable[[dict[str, Any]], Served], settings: dict[str, dict[str, Any]],
                 rounds: int) -> dict[str, list[Served]]:
    """Each setting measured `rounds` times, alternating, so that a change in the machine's
    other load falls on both rather than on whichever ran second."""
    runs: dict[str, list[Served]] = {label: [] for label in settings}
    for _ in range(rounds):
        for label, config in settings.items():
            runs[label].append(measure(config))
    return runs


def summary(runs: list[Served]) -> dict[str, Any]:
    """Mean throughput and p50 over the runs, the worst run's p99, and every run."""
    return {"items_per_s": float(np.mean([r.items_per_s for r in runs])),
            "requests_per_s": float(np.mean([r.requests_per_s for r in runs])),
            "p50_ms": float(np.mean([r.p50_ms for r in runs])),
            "p99_ms": max(r.p99_ms for r in runs), "errors": sum(r.errors for r in runs),
            "runs": [asdict(r) for r in runs]}


def compare_served(repo: Path, model: str, rows: int, duration: float, dataset: str,
                   settings: dict[str, dict[str, Any]], rounds: int) -> dict[str, Any]:
    """{"untuned": ..., "tuned": ..., "tuned_over_untuned": ratio of mean rows/s}."""
    runs = side_by_side(lambda config: serve_and_bench(repo, model, rows, CLIENTS, duration,
                                                       dataset, config), settings, rounds)
    out: dict[str, Any] = {label: summary(r) for label, r in runs.items()}
    out["tuned_over_untuned"] = out["tuned"]["items_per_s"] / out["untuned"]["items_per_s"]
    return out


def tuned_settings(model_dir: Path, fallback: dict[str, Any], from_config: bool = True
                   ) -> tuple[dict[str, Any], str]:
    """The serving settings `surge tune` wrote into config.yaml (it sets `slo_p99_ms`), else
    (or unless `from_config`) `fallback`; and which of the two it is."""
    config = yaml.safe_load((model_dir / "config.yaml").read_text())
    if not from_config:
        return fallback, "--tuned-* settings"
    if config.get("slo_p99_ms") is None:
        return fallback, "--tuned-* settings (no surge tune choice in config.yaml)"
    return {k: config.get(k) for k in SERVING_KEYS}, "surge tune's choice in config.yaml"


def in_process(runner: Any, inputs: dict[str, np.ndarray], seconds: float = 2.0) -> float:
    """Rows per second of `runner` on `inputs`, run back to back."""
    runner.run(inputs)
    rows, done, started = len(next(iter(inputs.values()))), 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        runner.run(inputs)
        done += rows
    return done / (time.perf_counter() - started)


def variant_checks(repo: Path, model: str) -> list[dict[str, Any]]:
    """NDCG@10, recall@10 and AUC (percent) of the model and of its int8 and fp16 variants
    on the 200 held-out users x 100 candidates; variants that miss the optimizer's own output
    tolerance are kept, since the ranking metric is what decides here."""
    from surge.api import optimize
    from surge.optimize.pipeline import OptimizeOptions

    try:
        outcomes = {o.name: o.error for o in optimize(repo, model, ",".join(VARIANTS),
                                                      OptimizeOptions(keep_failed=True))}
    except SurgeError as exc:  # reported with each variant, not fatal to the speed runs
        outcomes = dict.fromkeys(VARIANTS, f"optimize failed: {exc}")
    dataset = load_dataset(DATASET, "user")
    found, rows = Repository(repo), []
    for name in ("original", *VARIANTS):
        ref = model if name == "original" else f"{model}@{name}"
        row: dict[str, Any] = {"variant": name, "error": outcomes.get(name, "")}
        try:
            details = evaluate(found.load(ref), dataset, "ranking").details
        except Exception as exc:  # reported in the table, not fatal to the speed runs
            rows.append({**row, "error": row["error"] or str(exc)})
            continue
        rows.append({**row, "ndcg_at_10": 100 * details.ndcg_at_k,
                     "recall_at_10": 100 * details.recall_at_k, "auc": 100 * details.auc,
                     "size_bytes": sum(f.stat().st_size for f in _model_files(repo, model, name))})
    return rows


def _model_files(repo: Path, model: str, variant: str) -> list[Path]:
    folder = repo / model / ("1" if variant == "original" else f"variants/{variant}")
    return [f for f in folder.iterdir() if f.suffix in (".onnx", ".pt2", ".data")]


def print_results(results: dict[str, Any], model: str) -> None:
    table = Table(title=f"{model}: {CLIENTS} clients x {CANDIDATES} candidates, served over "
                        "HTTP (mean of runs, worst p99)")
    for column in ("setting", "candidates/s", "requests/s", "p50 ms", "p99 ms"):
        table.add_column(column)
    table.add_row(f"in process, batch {CANDIDATES}",
                  f"{results['in_process_candidates_per_s']:,.0f}", "", "", "")
    served = results["served"]
    for label in ("untuned", "tuned"):
        run = served[label]
        table.add_row(f"served, {label}", f"{run['items_per_s']:,.0f}",
                      f"{run['requests_per_s']:,.1f}", f"{run['p50_ms']:.1f}",
                      f"{run['p99_ms']:.1f}")
    console = Console()
    console.print(table)
    console.print(f"tuned ({results['tuned_source']}): {results['tuned_settings']}")
    console.print(f"tuned / untuned candidates/s: {served['tuned_over_untuned']:.2f}x")
    for row in results["variants"]:
        if "auc" in row:
            console.print(f"{row['variant']}: NDCG@10 {row['ndcg_at_10']:.2f}  recall@10 "
                          f"{row['recall_at_10']:.2f}  AUC {row['auc']:.2f}  "
                          f"{row['size_bytes'] / 1e3:.0f} kB {row['error']}")
        else:
            console.print(f"{row['variant']}: {row['error']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=ROOT / "out" / "recommendation")
    parser.add_argument("--model", default="dlrm")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per served run")
    parser.add_argument("--rounds", type=int, default=2, help="alternating served runs each")
    parser.add_argument("--tuned-instances", type=int, default=2)
    parser.add_argument("--tuned-batch", type=int, default=512)
    parser.add_argument("--tuned-delay-ms", type=float, default=1.0)
    parser.add_argument("--tuned-from", choices=("config", "flags"), default="config",
                        help="surge tune's choice in config.yaml, or the --tuned-* settings")
    parser.add_argument("--skip-variants", action="store_true")
    parser.add_argument("--json", type=Path, default=RESULTS / "ranking.json")
    args = parser.parse_args()
    repo = args.repo.resolve()
    train_if_missing(repo, args.model, "dlrm.yaml", QUICK_DLRM)
    tuned, source = tuned_settings(repo / args.model, {
        **UNTUNED, "instances": args.tuned_instances, "max_batch_size": args.tuned_batch,
        "batching": {"enabled": True, "max_queue_delay_ms": args.tuned_delay_ms}},
        args.tuned_from == "config")
    dataset = load_dataset(DATASET, "user")
    one_user = {k: v[:CANDIDATES] for k, v in dataset.inputs.items()}
    runner = Repository(repo).load(args.model).runner
    results: dict[str, Any] = {
        "machine": f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start",
        "duration_s": args.duration, "rounds": args.rounds,
        "in_process_candidates_per_s": in_process(runner, one_user),
        "tuned_settings": tuned, "tuned_source": source}
    results["served"] = compare_served(repo, args.model, CANDIDATES, args.duration, DATASET,
                                       {"untuned": UNTUNED, "tuned": tuned}, args.rounds)
    results["variants"] = [] if args.skip_variants else variant_checks(repo, args.model)
    print_results(results, args.model)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
