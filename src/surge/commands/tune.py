"""`surge tune`: the fastest serving configuration that keeps accuracy and meets a p99 SLO."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from surge.commands import console, exit_on_sigterm, points_note
from surge.errors import ConfigError, SurgeError
from surge.repository.config import MAX_QUEUE_DELAY_MS

if TYPE_CHECKING:
    from surge.tuning import Slo
    from surge.tuning.tune import TuningReport


Repo = Annotated[Path, typer.Argument(help="Model repository directory.")]
Model = Annotated[str, typer.Option(help="Model (or pipeline) to tune.")]
Step = Annotated[str | None, typer.Option(
    help="Tuning a pipeline: the model step to tune (optional when it has one). Its model's "
         "config.yaml gets the choice; trials serve and load the whole pipeline.")]
Data = Annotated[str, typer.Option(
    help="A registered dataset (`surge data list`, e.g. fashion-mnist), an .npz of inputs + "
         "labels (or image_ids with a COCO .json beside it), a COCO split directory, or "
         "'package.module:function'.")]
Task = Annotated[str, typer.Option(
    help="A registered task (classification, detection, embedding, ...) or "
         "'package.module:Class'.")]
SloP99 = Annotated[str, typer.Option(help="p99 latency objective, e.g. 50ms.")]
Rate = Annotated[str | None, typer.Option(help="Open-loop Poisson load, e.g. 200/s.")]
Concurrency = Annotated[int | None, typer.Option(
    help="Closed-loop clients (default 64 unless --rate).")]
RowsPerRequest = Annotated[int, typer.Option(
    min=1, help="Rows per request (a ranking request's candidates); max batch counts rows, so "
                "max batch sizes below it are not tried.")]
MaxDrop = Annotated[float | None, typer.Option(
    help="Largest drop of the metric from the original, in points (percent).")]
MinMetric = Annotated[float | None, typer.Option(help="Smallest acceptable metric (percent).")]
Metric = Annotated[str | None, typer.Option(
    help="Metric the accuracy budget applies to, one of the task's: e.g. accuracy or "
         "macro_f1 (classification), mAP50 (detection), cosine (embedding), ndcg@10 or auc "
         "(ranking), mae (regression, forecasting). Default: the first of the task's.")]
Budget = Annotated[str, typer.Option(help="Time budget for the whole tune, e.g. 10m.")]
Protocol = Annotated[str, typer.Option(help="Load protocol: http, http-json or grpc.")]
ShortRun = Annotated[str, typer.Option(help="Length of a short served run.")]
FullRun = Annotated[str, typer.Option(help="Length of a full served run.")]
Finalists = Annotated[int, typer.Option(min=1, help="Configurations given full runs.")]
FinalRounds = Annotated[int, typer.Option(
    min=1, help="Times the untuned and the chosen configuration are re-measured, alternately.")]
ShortRuns = Annotated[int, typer.Option(
    min=0, help="Configurations given short runs (0: straight to full runs).")]
EvalSamples = Annotated[int | None, typer.Option(
    min=1, help="Evaluate on the first N samples only.")]
MaxBatch = Annotated[str, typer.Option(help="Max batch sizes to try.")]
Delays = Annotated[str, typer.Option(help="Max queue delays to try (ms).")]
Settings = Annotated[str | None, typer.Option(
    help="INSTANCESxTHREADS settings to try, e.g. 1x2,2x1 (default: all that fit the cores).")]
ProfileTime = Annotated[str, typer.Option(
    help="In-process profiling time per batch size and setting.")]
Variants = Annotated[str | None, typer.Option(
    help="Variants to make when the model has none, as `surge optimize` names them "
         "(default: int8-dynamic,int8-static, plus prune-50 with a PyTorch module).")]
Write = Annotated[bool, typer.Option(help="Write the choice into config.yaml.")]


def tune(
    repo: Repo, model: Model, data: Data, task: Task = "classification",
    slo_p99: SloP99 = "50ms", rate: Rate = None, concurrency: Concurrency = None,
    rows_per_request: RowsPerRequest = 1,
    max_accuracy_drop: MaxDrop = 1.0, min_metric: MinMetric = None, metric: Metric = None,
    budget: Budget = "10m", protocol: Protocol = "http", short_run: ShortRun = "3s",
    full_run: FullRun = "8s", finalists: Finalists = 2, final_rounds: FinalRounds = 2,
    short_runs: ShortRuns = 6, eval_samples: EvalSamples = None,
    max_batch: MaxBatch = "1,4,8,16,32,64", delays: Delays = "0,1,2,5",
    settings: Settings = None, profile_time: ProfileTime = "0.25s", variants: Variants = None,
    write: Write = True, step: Step = None,
) -> None:
    """optimize (if no variants) -> evaluate -> profile -> select -> write config -> report."""
    from surge.api import tune as run_tune
    from surge.report import render_report
    from surge.repository import Repository
    from surge.tuning import AccuracyBudget, Effort, SearchSpace
    from surge.tuning.tune import TuneOptions

    _check_before_work(repo, model, protocol, write, variants)
    options = TuneOptions(
        data=data, task=task, slo=_slo(slo_p99, rate, concurrency, rows_per_request),
        accuracy=AccuracyBudget(max_accuracy_drop, min_metric, _metric(task, metric)),
        space=SearchSpace(_ints(max_batch, "--max-batch"), _floats(delays, "--delays"),
                          _settings(settings), variants=variants),
        effort=Effort(_seconds(budget, "--budget"), _seconds(profile_time, "--profile-time"),
                      _seconds(short_run, "--short-run"), _seconds(full_run, "--full-run"),
                      short_runs, finalists, final_rounds, eval_samples),
        protocol=protocol, write_config=write, step=step,
    )
    _check_report_folder(repo, model, step)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with exit_on_sigterm(), Progress(*columns, console=console, transient=True) as progress:
        report = run_tune(repo, model, options, progress,
                          on_stage=lambda s: progress.console.print(f"[bold]{s}[/bold]"))
    html = render_report(Repository(repo).model_dir(report.model))  # a pipeline: its step's model
    _print_summary(report)
    console.print(f"report: {html}")


def _check_before_work(repo: Path, model: str, protocol: str, write: bool,
                       variants: str | None) -> None:
    """What would otherwise fail only after the variants, profiles and load runs are done."""
    from surge.bench import PROTOCOLS
    from surge.optimize.names import parse_variants
    from surge.repository import Repository

    if protocol not in PROTOCOLS:
        raise ConfigError(f"--protocol {protocol!r}: use {', '.join(PROTOCOLS)}")
    if variants is not None:
        parse_variants(variants)  # named wrong: refused even when the model has variants
    if not write:
        return
    folder = Repository(repo).model_dir(model)
    config = folder / "config.yaml"
    if not os.access(config if config.exists() else folder, os.W_OK):
        raise ConfigError(f"cannot write the choice into {config} (not writable); fix the "
                          f"permissions or pass --no-write")


def _check_report_folder(repo: Path, model: str, step: str | None) -> None:
    """The report (JSON, page and plots) goes to the tuned model's `tuning/` folder once the
    work is done: refuse one it cannot be written to now."""
    from surge.report.render import HTML_FILE, PLOTS
    from surge.repository import Repository
    from surge.tuning.serving import check_tuning_folder
    from surge.tuning.target import resolve_target
    from surge.tuning.tune import REPORT_FILE

    try:
        repository = Repository(repo)
        tuned = resolve_target(repository, model, step).model
    except SurgeError:
        return  # the tune says what is wrong with the model, before any work as well
    check_tuning_folder(repository.model_dir(tuned), (REPORT_FILE, HTML_FILE, *PLOTS))


def _slo(slo_p99: str, rate: str | None, concurrency: int | None, rows: int = 1) -> Slo:
    from surge.tuning import Load, Slo, parse_duration_s, parse_rate

    if rate is not None and concurrency is not None:
        raise ConfigError("give --rate or --concurrency, not both")
    load = (Load(rate=parse_rate(rate), rows=rows) if rate
            else Load(concurrency=64 if concurrency is None else concurrency, rows=rows))
    return Slo(parse_duration_s(slo_p99, "--slo-p99", "ms") * 1000, load)


def _metric(task: str, metric: str | None) -> str:
    from surge.evaluate.harness import check_metric

    return check_metric(task, metric)


def _seconds(text: str, option: str) -> float:
    from surge.tuning import parse_duration_s

    return parse_duration_s(text, option)


def _ints(text: str, option: str) -> tuple[int, ...]:
    from surge.tuning.space import MAX_BATCH

    items = [v.strip() for v in text.split(",") if v.strip()]
    # ASCII digits only: int() also reads '1_0' as 10 and '٣' as 3
    values = tuple(int(v) for v in items) if all(_COUNT.fullmatch(v) for v in items) else ()
    if not values or min(values) < 1 or max(values) > MAX_BATCH:
        raise ConfigError(f"{option} {text!r}: expected integers from 1 to {MAX_BATCH} like "
                          f"1,8,32")
    return values


_COUNT = re.compile(r"[0-9]{1,6}")
_PLAIN_NUMBER = re.compile(r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


def _settings(text: str | None) -> tuple[tuple[int, int], ...] | None:
    if text is None:
        return None
    pairs = []
    for item in text.split(","):
        instances, _, threads = item.strip().partition("x")
        # ASCII digits only: str.isdigit() takes '²', which int() then refuses with a traceback
        if not (_COUNT.fullmatch(instances) and _COUNT.fullmatch(threads)
                and 0 < int(instances) <= 64 and 0 < int(threads) <= 256):
            raise ConfigError(f"--settings {text!r}: expected INSTANCESxTHREADS like 1x2,2x1 "
                              f"(at most 64 instances of 256 threads, as config.yaml allows)")
        pairs.append((int(instances), int(threads)))
    return tuple(pairs)


def _floats(text: str, option: str) -> tuple[float, ...]:
    items = [v.strip() for v in text.split(",") if v.strip()]
    # plain numbers only: float() also reads '1_0' as 10 and non-ASCII digits
    plain = all(_PLAIN_NUMBER.fullmatch(v) for v in items)
    values = tuple(float(v) for v in items) if plain else ()
    if not values or min(values) < 0 or not max(values) <= MAX_QUEUE_DELAY_MS:
        raise ConfigError(f"{option} {text!r}: expected non-negative numbers up to "
                          f"{MAX_QUEUE_DELAY_MS:g} like 0,1,2")
    return values


def _print_summary(report: object) -> None:
    from surge.tuning.tune import TuningReport

    assert isinstance(report, TuningReport)
    through = f" (step {report.step!r} of {report.pipeline})" if report.pipeline else ""
    table = Table(title=f"surge tune {report.model}{through}: p99 <= {report.slo_p99_ms:g} ms "
                        f"at {report.load}")
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
    if _no_variant_within_drop(report):
        note = points_note("--max-accuracy-drop {}", report.max_accuracy_drop)
        if note:
            console.print(note, highlight=False, soft_wrap=True)
    for name, run in (("untuned", report.baseline), ("tuned", report.tuned)):
        if run is not None:
            m = run.measured
            console.print(f"{name:8s} {run.candidate.key}: {m.throughput:,.0f} req/s, p99 "
                          f"{m.p99_ms:.1f} ms (predicted {run.predicted.p99_ms:.1f} ms)")
    if report.speedup is not None:
        console.print(f"speed-up (same run): [bold]{report.speedup:.2f}x[/bold]")
    if report.kept_untuned:
        console.print("kept the untuned configuration: the chosen one served slower back to back")
    if report.config_path:
        console.print(f"wrote {report.config_path}")
    console.print(f"tuned in {report.total_seconds:.0f} s")


def _no_variant_within_drop(report: TuningReport) -> bool:
    """Every variant but the original was scored and lost to the drop budget."""
    from surge.repository.config import ORIGINAL

    reference, budget = report.reference_metric, report.max_accuracy_drop
    others = [v for v in report.variants if v.variant != ORIGINAL]
    if reference is None or budget is None or not others or any(v.accepted for v in others):
        return False
    return any(v.metric is not None and reference - v.metric > budget for v in others)
