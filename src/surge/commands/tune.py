"""`surge tune`: the fastest serving configuration that keeps accuracy and meets a p99 SLO."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from surge.cli import app, console
from surge.errors import ConfigError


@app.command()
def tune(
    repo: Annotated[Path, typer.Argument(help="Model repository directory.")],
    model: Annotated[str, typer.Option(help="Model to tune.")],
    data: Annotated[str, typer.Option(
        help="'fashion-mnist' (built-in test split), an .npz of inputs + labels, or a detection "
             ".npz with image_ids and a COCO .json beside it.")],
    task: Annotated[str, typer.Option(help="classification, detection or embedding.")] =
        "classification",
    slo_p99: Annotated[str, typer.Option(help="p99 latency objective, e.g. 50ms.")] = "50ms",
    rate: Annotated[str | None, typer.Option(help="Open-loop Poisson load, e.g. 200/s.")] = None,
    concurrency: Annotated[int | None, typer.Option(
        help="Closed-loop clients (default 64 unless --rate).")] = None,
    max_accuracy_drop: Annotated[float | None, typer.Option(
        help="Largest drop of the metric from the original, in points (percent).")] = 1.0,
    min_metric: Annotated[float | None, typer.Option(
        help="Smallest acceptable metric (percent).")] = None,
    metric: Annotated[str | None, typer.Option(
        help="Metric the accuracy budget applies to: accuracy or macro_f1 (classification), "
             "mAP, mAP50 or mAP75 (detection), cosine or min_cosine (embedding). Default: "
             "the first of the task's.")] = None,
    budget: Annotated[str, typer.Option(help="Time budget for the whole tune, e.g. 10m.")] =
        "10m",
    protocol: Annotated[str, typer.Option(help="Load protocol: http, http-json or grpc.")] =
        "http",
    short_run: Annotated[str, typer.Option(help="Length of a short served run.")] = "3s",
    full_run: Annotated[str, typer.Option(help="Length of a full served run.")] = "8s",
    finalists: Annotated[int, typer.Option(min=1, help="Configurations given full runs.")] = 2,
    final_rounds: Annotated[int, typer.Option(
        min=1, help="Times the untuned and the chosen configuration are re-measured, "
                    "alternately.")] = 2,
    short_runs: Annotated[int, typer.Option(
        min=0, help="Configurations given short runs (0: straight to full runs).")] = 6,
    eval_samples: Annotated[int | None, typer.Option(
        min=1, help="Evaluate on the first N samples only.")] = None,
    max_batch: Annotated[str, typer.Option(help="Max batch sizes to try.")] = "1,4,8,16,32,64",
    delays: Annotated[str, typer.Option(help="Max queue delays to try (ms).")] = "0,1,2,5",
    settings: Annotated[str | None, typer.Option(
        help="INSTANCESxTHREADS settings to try, e.g. 1x2,2x1 (default: all that fit the "
             "cores).")] = None,
    profile_time: Annotated[str, typer.Option(
        help="In-process profiling time per batch size and setting.")] = "0.25s",
    variants: Annotated[str | None, typer.Option(
        help="Variants to make when the model has none, as `surge optimize` names them "
             "(default: int8-dynamic,int8-static, plus prune-50 with a PyTorch module).")] = None,
    write: Annotated[bool, typer.Option(help="Write the choice into config.yaml.")] = True,
) -> None:
    """optimize (if no variants) -> evaluate -> profile -> select -> write config -> report."""
    from surge.evaluate.harness import check_metric
    from surge.report import render_report
    from surge.repository import Repository
    from surge.tuning import Load, Slo, parse_duration_s, parse_rate
    from surge.tuning.tune import TuneOptions
    from surge.tuning.tune import tune as run_tune

    if rate is not None and concurrency is not None:
        raise ConfigError("give --rate or --concurrency, not both")
    load = Load(rate=parse_rate(rate)) if rate else Load(concurrency=concurrency or 64)
    options = TuneOptions(
        data=data, task=task, slo=Slo(parse_duration_s(slo_p99, "--slo-p99", "ms") * 1000, load),
        max_accuracy_drop=max_accuracy_drop, min_metric=min_metric,
        metric=check_metric(task, metric),
        budget_s=parse_duration_s(budget, "--budget"), protocol=protocol,
        max_batch_sizes=_ints(max_batch, "--max-batch"), delays_ms=_floats(delays, "--delays"),
        short_run_s=parse_duration_s(short_run, "--short-run"),
        full_run_s=parse_duration_s(full_run, "--full-run"), short_runs=short_runs,
        finalists=finalists, final_rounds=final_rounds, eval_samples=eval_samples,
        variants=variants,
        settings=_settings(settings), profile_s=parse_duration_s(profile_time, "--profile-time"),
        write_config=write,
    )
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        report = run_tune(repo, model, options, progress,
                          on_stage=lambda s: progress.console.print(f"[bold]{s}[/bold]"))
    html = render_report(Repository(repo).model_dir(model))
    _print_summary(report)
    console.print(f"report: {html}")


def _ints(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise ConfigError(f"{option} {text!r}: expected positive integers like 1,8,32")
    return values


def _settings(text: str | None) -> tuple[tuple[int, int], ...] | None:
    if text is None:
        return None
    pairs = []
    for item in text.split(","):
        instances, _, threads = item.strip().partition("x")
        if not (instances.isdigit() and threads.isdigit() and int(instances) and int(threads)):
            raise ConfigError(f"--settings {text!r}: expected INSTANCESxTHREADS like 1x2,2x1")
        pairs.append((int(instances), int(threads)))
    return tuple(pairs)


def _floats(text: str, option: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 0:
        raise ConfigError(f"{option} {text!r}: expected non-negative numbers like 0,1,2")
    return values


def _print_summary(report: object) -> None:
    from surge.tuning.tune import TuningReport

    assert isinstance(report, TuningReport)
    table = Table(title=f"surge tune {report.model}: p99 <= {report.slo_p99_ms:g} ms at "
                        f"{report.load}")
    table.add_column("variant")
    table.add_column("metric", justify="right")
    table.add_column("in-process best/s", justify="right")
    table.add_column("verdict")
    for v in report.variants:
        table.add_row(v.variant, "-" if v.metric is None else f"{v.metric:.2f}",
                      "-" if v.inprocess_best is None else f"{v.inprocess_best:,.0f}", v.reason)
    console.print(table)
    assert report.selection is not None
    console.print(report.selection.message)
    for name, run in (("untuned", report.baseline), ("tuned", report.tuned)):
        if run is not None:
            m = run.measured
            console.print(f"{name:8s} {run.candidate.key}: {m.throughput:,.0f} req/s, p99 "
                          f"{m.p99_ms:.1f} ms (predicted {run.predicted.p99_ms:.1f} ms)")
    if report.speedup is not None:
        console.print(f"speed-up (same run): [bold]{report.speedup:.2f}x[/bold]")
    if report.config_path:
        console.print(f"wrote {report.config_path}")
    console.print(f"tuned in {report.total_seconds:.0f} s")
