"""`surge bench`: load a running V2 server and print throughput and latency percentiles."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

from surge.commands import TERMINATED_EXIT, console, exit_on_sigterm
from surge.errors import SurgeError

_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|m)?\s*$")
_RATE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(/s)?\s*$")
MIN_DURATION_S = 0.01


def parse_duration(text: str) -> float:
    """'20s', '500ms', '2m' or '20' (seconds) -> seconds."""
    match = _DURATION.match(text)
    if not match or not 0 < float(match.group(1)) < math.inf:
        raise SurgeError(f"--duration {text!r} is not a positive duration like 20s, 500ms, 2m")
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[match.group(2)]
    seconds = float(match.group(1)) * scale
    if seconds < MIN_DURATION_S:  # 1 us sent no request at all: a table of 0.0 req/s
        raise SurgeError(f"--duration {text!r} is shorter than {MIN_DURATION_S * 1e3:g} ms, "
                         "too short to measure a load level; give e.g. 500ms or 20s")
    return seconds


DEFAULT_LEVELS = "1,16,64,256"


def parse_rate(text: str | None) -> float | None:
    """'200/s' or '200' -> 200.0 requests per second."""
    if text is None:
        return None
    match = _RATE.match(text)
    if not match or float(match.group(1)) <= 0:
        raise SurgeError(f"--rate {text!r} is not a positive rate like 200/s")
    from surge.bench.loadgen import MAX_RATE

    if float(match.group(1)) > MAX_RATE:
        raise SurgeError(f"--rate {text!r} is more than the {MAX_RATE:,.0f}/s one load "
                         "generator can send")
    return float(match.group(1))


def check_json_out(path: Path) -> None:
    """Refuse a --json path the report could not be written to, before the run."""
    parent = path.parent
    if path.is_dir():
        raise SurgeError(f"--json {str(path)!r} is a directory, not a file")
    if not parent.is_dir():
        raise SurgeError(f"--json {str(path)!r}: directory {str(parent)!r} does not exist")
    writable = os.access(path, os.W_OK) if path.exists() else os.access(parent, os.W_OK)
    if not writable:
        raise SurgeError(f"--json {str(path)!r} is not writable")


def parse_load(concurrency: str | None, rate: str | None, poisson: bool
               ) -> tuple[list[int], float | None]:
    """The closed-loop levels, or one open loop at --rate (as `surge tune`, not both)."""
    if rate is not None and concurrency is not None:
        raise SurgeError(f"give --rate or --concurrency, not both (--rate {rate!r}, "
                         f"--concurrency {concurrency!r})")
    if poisson and rate is None:
        raise SurgeError("--poisson needs --rate (it shapes the open loop's arrivals)")
    arrivals = parse_rate(rate)
    return ([1] if arrivals else parse_levels(concurrency or DEFAULT_LEVELS)), arrivals


def parse_levels(text: str) -> list[int]:
    parts = [part.strip() for part in text.split(",") if part.strip()]
    # ASCII digits only: int() also reads '1_6' as 16 and '٣' as 3
    if not all(re.fullmatch(r"[0-9]{1,12}", part) for part in parts):
        raise SurgeError(f"--concurrency {text!r} must be integers like 1,16,64")
    levels = [int(part) for part in parts]
    from surge.bench.loadgen import MAX_CONCURRENCY

    if not levels or min(levels) < 1:
        raise SurgeError(f"--concurrency {text!r} must list positive integers")
    if max(levels) > MAX_CONCURRENCY:
        raise SurgeError(f"--concurrency {text!r}: at most {MAX_CONCURRENCY:,} clients, as one "
                         "load generator can run")
    return levels


def _errors(errors: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(errors.items())) or "-"


def _print_table(report: Any, model: str, protocol: str, arrivals: float | None,
                 batch_size: int) -> None:
    mode = f"open loop {arrivals:g}/s" if arrivals else "closed loop"
    table = Table(title=f"{model} over {protocol} ({mode}, batch {batch_size})")
    for column in ("c", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "ok",
                   "errors", "client CPU"):
        table.add_column(column, justify="right")
    for run in report.runs:
        table.add_row(
            str(run.concurrency), f"{run.throughput:,.1f}", f"{run.p50_ms:.2f}",
            f"{run.p90_ms:.2f}", f"{run.p99_ms:.2f}", f"{run.max_ms:.2f}", str(run.ok),
            _errors(run.errors), f"{run.client_cpu_share:.0%} core",
        )
    console.print(table)
    late = sum(run.sent_late for run in report.runs)
    if arrivals and late:
        console.print(f"{late:,} requests were sent over 1 ms behind their schedule (this "
                      "client fell behind); their latency counts from the schedule")


def _finite(value: Any) -> Any:
    """NaN and infinity are not JSON: a figure with no value (no answer came back) is null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _write_json(path: Path, report: Any) -> None:
    """Whole or not at all: a stop or a full disk mid-write left half a report, which a later
    reader took for the whole."""
    from surge.configfile import write_text_atomically

    text = json.dumps(_finite(report.to_dict()), indent=2, allow_nan=False)
    try:
        write_text_atomically(path, text)
    except OSError as exc:  # checked before the run; the report still reaches stdout
        print(text)
        raise SurgeError(f"--json {str(path)!r}: cannot write the report ({exc}); "
                         "printed it above") from None
    console.print(f"wrote {path}")


def bench(
    url: Annotated[str, typer.Argument(help="Server URL: http://host:8000 (or host:8001 for grpc).")],
    model: Annotated[str, typer.Option(help="Model to load.")],
    concurrency: Annotated[str | None, typer.Option(
        help=f"Closed-loop levels (default {DEFAULT_LEVELS}); not with --rate.")] = None,
    duration: Annotated[str, typer.Option(help="Measured time per level (20s, 500ms); answers "
                                          "are awaited as long again (5-30 s).")] = "20s",
    rate: Annotated[str | None, typer.Option(
        help="Open loop: arrivals per second (200/s), instead of --concurrency.")] = None,
    poisson: Annotated[bool, typer.Option(help="Open loop: Poisson (else uniform) arrivals.")] =
        False,
    protocol: Annotated[str, typer.Option(help="http (binary), http-json or grpc.")] = "http",
    batch_size: Annotated[int, typer.Option(min=1, help="Items per request.")] = 1,
    api_key: Annotated[str | None, typer.Option(envvar="SURGE_API_KEY",
                                                help="Bearer token.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] =
        None,
    data: Annotated[str | None, typer.Option(
        help="Registered dataset whose evaluation rows make the request payloads "
             "(e.g. fashion-mnist); default: random inputs.")] = None,
    files: Annotated[Path | None, typer.Option(
        help="A folder whose files (by name, each request the next) are the rows of the "
             "model's BYTES inputs: images or texts for a model that decodes them.")] = None,
    metrics_url: Annotated[str | None, typer.Option(
        "--metrics-url", help="The server's metrics endpoint (http://host:8002/metrics): "
        "print a line per second of requests/s, p99, goodput, shed and variant mix from it."
    )] = None,
) -> None:
    """Closed loop at each concurrency (or open loop at --rate): throughput, latency, errors."""
    from surge.bench import PROTOCOLS, run_bench
    from surge.bench.checks import check_api_key
    from surge.bench.live import LiveWatch, check_metrics
    from surge.bench.payload import read_files

    if protocol not in PROTOCOLS:  # the URL and model name: run_bench checks them first
        raise SurgeError(f"--protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    levels, arrivals = parse_load(concurrency, rate, poisson)
    seconds = parse_duration(duration)
    if json_out is not None:
        check_json_out(json_out)
    rows = read_files(files) if files is not None else []
    check_api_key(api_key)  # before --metrics-url is read with it
    headers = {"authorization": f"Bearer {api_key}"} if api_key else None
    if metrics_url:
        check_metrics(metrics_url, headers)  # read once: a bad one is refused, not warned about
    live = (LiveWatch(metrics_url, model, console.print, headers=headers)
            if metrics_url else nullcontext())
    done: list[Any] = []

    def measure() -> Any:
        with live:
            return _run(lambda progress: run_bench(
                url, model, levels, seconds, protocol, arrivals, poisson=poisson,
                batch_size=batch_size, api_key=api_key, progress=progress, dataset=data,
                files=rows, strict_dataset=True, on_run=done.append))
    report = _measured(measure, done, model, protocol, arrivals, batch_size)
    _print_table(report, model, protocol, arrivals, batch_size)
    if json_out is not None:
        _write_json(json_out, report)


def _run(start: Callable[[Callable[..., None]], Any]) -> Any:
    """`start(progress)` under a progress bar per load level."""
    with Progress(TextColumn("{task.description}"), BarColumn(),
                  TextColumn("{task.fields[sent]} sent, {task.fields[errors]} errors"),
                  TimeRemainingColumn(), console=console, transient=True) as bar:
        tasks: dict[int, TaskID] = {}

        def progress(level: int, done: float, sent: int, errors: int, _d: float) -> None:
            if level not in tasks:
                tasks[level] = bar.add_task(f"c={level}", total=1.0, sent=0, errors=0)
            bar.update(tasks[level], completed=done, sent=sent, errors=errors)

        return start(progress)


def _measured(measure: Callable[[], Any], done: list[Any], model: str, protocol: str,
              arrivals: float | None, batch_size: int) -> Any:
    """`measure()`; Ctrl-C, SIGTERM or an error mid-run (a later level's server stopped
    answering) prints the levels measured before it first: they still count."""
    try:
        with exit_on_sigterm():  # as Ctrl-C: a SIGTERM'd bench printed nothing it had measured
            return measure()
    except KeyboardInterrupt:
        _print_measured(done, model, protocol, arrivals, batch_size, "interrupted")
        raise
    except SystemExit as exc:
        if exc.code == TERMINATED_EXIT:
            _print_measured(done, model, protocol, arrivals, batch_size, "terminated")
        raise
    except SurgeError:
        _print_measured(done, model, protocol, arrivals, batch_size, "stopped")
        raise


def _print_measured(done: list[Any], model: str, protocol: str, arrivals: float | None,
                    batch_size: int, why: str) -> None:
    """Ctrl-C or an error mid-run: the levels measured to the end, and that the rest were not
    (an error before any level was measured is said alone)."""
    from surge.bench import BenchReport

    if done:
        _print_table(BenchReport("", model, protocol, batch_size, done), model, protocol,
                     arrivals, batch_size)
    if done or why != "stopped":
        console.print(f"{why}: {len(done)} load level(s) measured to the end"
                      + ("" if done else "; nothing to report"))
