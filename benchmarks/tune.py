"""`surge tune` on the default model against its targets, measured in one run.

Copies the example `fashion` model (weights + config, no variants) into a scratch repository,
runs the whole tune (optimize -> evaluate -> profile -> select) for a p99 SLO at a closed-loop
concurrency, and reports: the tune's wall time, the untuned fp32 configuration (max batch 1,
one instance) and the tuned one re-measured back to back by the load generator, their ratio,
predicted vs measured p99, and the accuracy kept.

    .venv/bin/python benchmarks/tune.py --slo-p99 50 --concurrency 64 --budget 600
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from surge.report import render_report
from surge.tuning import AccuracyBudget, Effort, Load, Slo
from surge.tuning.serving import measure_served
from surge.tuning.space import Candidate
from surge.tuning.tune import (
    FINAL,
    FULL_RUN,
    SHORT_RUN,
    ServedRun,
    TuneOptions,
    TuningReport,
    baseline_candidate,
    compare_back_to_back,
    tune,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
EXAMPLE_FASHION = ROOT / "examples" / "repository" / "fashion"


def _scratch_copy(model_dir: Path, root: Path) -> Path:
    """The model's versions and config only: the tune makes its own variants."""
    target = root / model_dir.name
    target.mkdir(parents=True)
    shutil.copy2(model_dir / "config.yaml", target / "config.yaml")
    for version in (p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()):
        shutil.copytree(version, target / version.name)
    return root


def _closest_if_none_met(report: TuningReport, model_dir: Path, options: TuneOptions
                         ) -> dict[str, Any] | None:
    """When no configuration met the SLO, the tune writes nothing; for the record, measure the
    one that came closest against the untuned one, alternately, as the tune would have."""
    if report.chosen is not None:
        return None
    served = [r for r in report.served if r.rung in (SHORT_RUN, FULL_RUN) and not r.error]
    if not served:
        return None
    closest = min(served, key=lambda r: r.measured.p99_ms).candidate

    def serve(candidate: Candidate, rung: str) -> ServedRun:
        result = measure_served(model_dir, candidate, options.slo.load, options.effort.full_run_s,
                                rung=rung)
        return ServedRun(candidate, rung, result.measurement, result.measurement,
                         result.startup_s)

    untuned, best, ratio = compare_back_to_back(serve, baseline_candidate(), closest,
                                                options.effort.final_rounds)
    out: dict[str, Any] = {"ratio": ratio}
    for name, run in (("untuned", untuned), ("closest", best)):
        m = run.measured
        out[name] = {"key": run.candidate.key, "throughput": m.throughput, "p50_ms": m.p50_ms,
                     "p99_ms": m.p99_ms, "errors": m.errors}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=EXAMPLE_FASHION)
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--slo-p99", type=float, default=50.0, help="ms")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--budget", type=float, default=600.0, help="seconds")
    parser.add_argument("--max-accuracy-drop", type=float, default=1.0)
    parser.add_argument("--full-run", type=float, default=8.0, help="seconds")
    parser.add_argument("--output", type=Path, default=RESULTS / "tune_fashion.json")
    args = parser.parse_args()

    console = Console()
    options = TuneOptions(
        data=args.data, task="classification",
        slo=Slo(args.slo_p99, Load(concurrency=args.concurrency)),
        accuracy=AccuracyBudget(max_drop=args.max_accuracy_drop),
        effort=Effort(budget_s=args.budget, full_run_s=args.full_run),
    )
    with tempfile.TemporaryDirectory(prefix="surge-bench-tune-") as tmp:
        repo = _scratch_copy(args.model_dir, Path(tmp))
        started = time.monotonic()
        report = tune(repo, args.model_dir.name, options,
                      on_stage=lambda s: console.print(f"[bold]{s}[/bold]"))
        wall = time.monotonic() - started
        closest = _closest_if_none_met(report, repo / args.model_dir.name, options)
        render_report(repo / args.model_dir.name)
        html_src = repo / args.model_dir.name / "tuning"
        kept = args.output.with_suffix("")  # the HTML report and plots, beside the JSON
        if kept.exists():
            shutil.rmtree(kept)
        shutil.copytree(html_src, kept)

    table = Table(title=f"surge tune {args.model_dir.name}: p99 <= {args.slo_p99:g} ms at "
                        f"{args.concurrency} clients")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("tune wall time", f"{wall:.0f} s (target < 600 s)")
    for stage, seconds in report.stage_seconds.items():
        table.add_row(f"  {stage}", f"{seconds:.0f} s")
    table.add_row("variants made", ", ".join(report.optimized) or "-")
    for v in report.variants:
        table.add_row(f"  {v.variant} metric", "-" if v.metric is None else f"{v.metric:.2f}%")
    assert report.selection is not None
    table.add_row("selection", report.selection.message)
    for name, run in (("untuned fp32 (b1, 1 instance)", report.baseline),
                      ("tuned", report.tuned)):
        if run is not None:
            m = run.measured
            table.add_row(f"{name}: {run.candidate.key}",
                          f"{m.throughput:,.0f} req/s, p99 {m.p99_ms:.1f} ms "
                          f"(predicted {run.predicted.p99_ms:.1f} ms)")
    for run in (r for r in report.served if r.rung == FINAL):
        table.add_row(f"  final run {run.candidate.key}",
                      f"{run.measured.throughput:,.0f} req/s, p99 {run.measured.p99_ms:.1f} ms")
    table.add_row("tuned / untuned median req/s (same run)",
                  "-" if report.speedup is None else f"{report.speedup:.2f}x (target >= 2x)")
    if closest:
        for name, m in (("untuned", closest["untuned"]), ("closest, misses the SLO",
                                                           closest["closest"])):
            table.add_row(f"{name}: {m['key']}",
                          f"{m['throughput']:,.0f} req/s, p99 {m['p99_ms']:.1f} ms")
        table.add_row("closest / untuned median req/s (same run)", f"{closest['ratio']:.2f}x")
    console.print(table)

    result = {"wall_s": wall, "slo_p99_ms": args.slo_p99, "concurrency": args.concurrency,
              "speedup": report.speedup, "closest_if_none_met": closest,
              "report": report.to_dict()}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1))
    console.print(f"saved {args.output} and the HTML report under {args.output.with_suffix('')}")


if __name__ == "__main__":
    main()
