"""Render a saved tuning report (`REPO/NAME/tuning/report.json`) as PNG plots and one HTML page.

The JSON is the data; this module only draws it, so a report can be re-rendered at any time.
"""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path
from typing import Any

from surge.configfile import write_text_atomically
from surge.errors import ConfigError, NotFoundError
from surge.tuning.serving import TUNING_DIR, check_tuning_folder
from surge.tuning.tune import REPORT_FILE, SCHEMA_VERSION

HTML_FILE = "report.html"
MAX_REPORT_BYTES = 64 << 20  # as a load trace; a tune's report is well under 1 MB
# What one plot draws: a tune serves tens of configurations and keeps a few variants; a
# hand-edited report of thousands took tens of seconds per plot, to draw bars no one can read.
MAX_DRAWN = 100


def load_report(model_dir: Path) -> dict[str, Any]:
    path = model_dir / TUNING_DIR / REPORT_FILE
    if not path.is_file():
        raise NotFoundError(f"no tuning report at {path}: run `surge tune` first")
    _check_size(path)
    try:  # NaN and Infinity are not JSON: `surge tune` writes null for them, and so reads them
        data = json.loads(path.read_text(), parse_constant=lambda _: None)
    except (OSError, ValueError, RecursionError) as exc:
        raise ConfigError(f"{path}: not a report of `surge tune` ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not a report of `surge tune` (not a JSON object)")
    version = data.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise ConfigError(f"{path}: schema_version {version!r}; this surge reads "
                          f"{SCHEMA_VERSION}: run `surge tune` again")
    if "model" in data and data["model"] != model_dir.name:
        raise ConfigError(f"{path}: the tuning report of model {data['model']!r}, not of "
                          f"{model_dir.name!r}: run `surge tune` on {model_dir.name!r}")
    slo = data.get("slo_p99_ms", 1.0)  # missing: a KeyError, named when the page is drawn
    if isinstance(slo, bool) or not isinstance(slo, int | float) or not 0 < slo < math.inf:
        raise ConfigError(f"{path}: not a report of `surge tune` (slo_p99_ms {slo!r} is not "
                          "a positive number of ms)")
    return data


def _check_size(path: Path) -> None:
    """Refuse a report larger than MAX_REPORT_BYTES before reading it: it was read whole."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if size > MAX_REPORT_BYTES:
        raise ConfigError(f"{path}: {size:,} bytes, more than the {MAX_REPORT_BYTES >> 20} MiB "
                          "a tuning report may have (a tune writes well under 1 MB): run "
                          "`surge tune` again, or cut the hand-edited report down")


PLOTS = ("pareto.png", "latency.png", "p99_predicted_vs_measured.png")


def _key(c: dict[str, Any]) -> str:
    return (f"{c['variant']} b{c['max_batch_size']} d{c['max_queue_delay_ms']:g}ms "
            f"{c['instances']}x{c['threads']}t")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, dpi: int = 110) -> None:
    """Write the PNG whole or not at all (a rename), as the page: a stop mid-write leaves the
    previous plot, never half of one; then free the figure."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        fig.savefig(partial, dpi=dpi, format="png")
        os.replace(partial, path)
    finally:
        _pyplot().close(fig)
        partial.unlink(missing_ok=True)


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points (throughput, accuracy) not beaten on both by another, by rising throughput."""
    front = [p for p in points
             if not any(q != p and q[0] >= p[0] and q[1] >= p[1] for q in points)]
    return sorted(set(front))


def plot_pareto(report: dict[str, Any], path: Path) -> Path:
    """Accuracy vs best in-process throughput of every variant; the chosen one starred."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    chosen = (report.get("chosen") or {}).get("variant")
    points = []
    for v in report["variants"][:MAX_DRAWN]:
        if v["metric"] is None or v["inprocess_best"] is None:
            continue
        x, y = v["inprocess_best"], v["metric"]
        points.append((x, y))
        ax.scatter([x], [y], s=50, color="tab:blue" if v["accepted"] else "tab:gray", zorder=3)
        ax.annotate(v["variant"], (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        if v["variant"] == chosen:
            ax.scatter([x], [y], s=300, marker="*", color="tab:red", zorder=4, label="chosen")
    front = pareto_front(points)
    if front:
        ax.plot(*zip(*front, strict=True), "--", color="tab:blue", alpha=0.6, label="Pareto front")
    if report.get("reference_metric") is not None and report.get("max_accuracy_drop") is not None:
        ax.axhline(report["reference_metric"] - report["max_accuracy_drop"], color="tab:orange",
                   linestyle=":", label="accuracy budget")
    ax.set_xlabel("best in-process throughput (samples/s)")
    ax.set_ylabel(next((v["metric_name"] for v in report["variants"] if v["metric_name"]),
                       "metric") + " (%)")
    ax.set_title(f"{report['model']}: accuracy vs throughput")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def plot_latency(report: dict[str, Any], path: Path) -> Path:
    """p50/p90/p99 of every configuration served for real, with the SLO line."""
    plt = _pyplot()
    runs = report["served"][:MAX_DRAWN]
    fig, ax = plt.subplots(figsize=(max(7, 0.6 * len(runs) + 2), 4.5))
    labels = [f"{_key(r['candidate'])}\n({r['rung']})" for r in runs]
    for offset, name in ((-0.25, "p50_ms"), (0.0, "p90_ms"), (0.25, "p99_ms")):
        values = [r["measured"].get(name) or 0.0 for r in runs]
        ax.bar([i + offset for i in range(len(runs))], values, width=0.25, label=name[:3])
    ax.axhline(report["slo_p99_ms"], color="tab:red", linestyle="--", label="p99 SLO")
    ax.set_xticks(range(len(runs)), labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.set_title(f"latency per configuration at {report['load']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def plot_prediction(report: dict[str, Any], path: Path) -> Path:
    """Predicted vs measured p99 for every served configuration."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    pairs = [(r["predicted"]["p99_ms"], r["measured"]["p99_ms"])
             for r in report["served"][:MAX_DRAWN]
             if r["predicted"]["p99_ms"] is not None and r["measured"]["p99_ms"] is not None]
    if pairs:
        xs, ys = zip(*pairs, strict=True)
        ax.scatter(xs, ys, color="tab:blue")
        top = max(max(xs), max(ys)) * 1.1
        ax.plot([0, top], [0, top], ":", color="gray", label="predicted = measured")
    ax.axhline(report["slo_p99_ms"], color="tab:red", linestyle="--", label="p99 SLO")
    ax.set_xlabel("predicted p99 (ms)")
    ax.set_ylabel("measured p99 (ms)")
    ax.set_title("queueing model vs measurement")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return html.escape(str(value))


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _summary(report: dict[str, Any]) -> str:
    chosen = report.get("chosen")
    selection = report.get("selection") or {}
    rows: list[list[Any]] = [
        ["SLO", f"p99 <= {report['slo_p99_ms']:g} ms at {report['load']}"],
        ["accuracy budget", f"max drop {report['max_accuracy_drop']}, min {report['min_metric']}"],
        ["reference metric", _fmt(report.get("reference_metric"), 2)],
        ["chosen", _key(chosen) if chosen else "none"],
        ["selection", selection.get("message", "")],
        ["strategy", selection.get("strategy", "")],
        ["speed-up vs untuned (same run, median req/s)", _fmt(report.get("speedup"), 2)],
        ["config written", (report.get("config_path") or "no")
         + (" (the untuned one: the choice served slower back to back)"
            if report.get("kept_untuned") else "")],
        ["tune time (s)", report.get("total_seconds")],
    ]
    costs = report.get("serving_costs")
    if costs:
        rows.append(["fitted serving costs",
                     f"{_fmt(costs['batch_overhead_ms'], 2)} ms per batch + "
                     f"{_fmt(costs['request_overhead_ms'], 3)} ms per request, p99 x "
                     f"{_fmt(costs['p99_scale'], 2)}"])
    for which in ("baseline", "tuned"):
        run = report.get(which)
        if run:
            m, p = run["measured"], run["predicted"]
            rows.append([f"{which}: {_key(run['candidate'])}",
                         f"{_fmt(m['throughput'])} req/s, p99 {_fmt(m['p99_ms'])} ms measured "
                         f"(predicted {_fmt(p['p99_ms'])} ms)"])
    return _table(["", ""], rows)


def _candidate_rows(report: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for r in (report.get("selection") or {}).get("candidates", []):
        last = r["measurements"][-1] if r["measurements"] else {}
        rows.append([_key(r["candidate"]), _fmt(r["accuracy"], 2), last.get("rung"),
                     last.get("throughput"), last.get("p99_ms"), r["status"], r["reason"]])
    # the chosen first, then the measured ones, then the rest
    rows.sort(key=lambda row: (row[5] != "chosen", row[2] is None, row[2] != "full run"))
    return rows


def render_report(model_dir: Path, trace: Path | None = None,
                  notes: list[str] | None = None) -> Path:
    """Write the PNG plots and `tuning/report.html`; returns the HTML path. `trace` is the JSON
    of `benchmarks/surge_load.py`, whose load-trace plot and summary the page then shows.
    What the plots leave out is said on the page and appended to `notes`."""
    from surge.report.trace import TRACE_PNG, load_trace, plot_trace, trace_section

    report = load_report(model_dir)
    trace_data = load_trace(trace) if trace is not None else None
    out = model_dir / TUNING_DIR
    check_tuning_folder(model_dir, (HTML_FILE, *PLOTS, *((TRACE_PNG,) if trace else ())))
    try:
        note = drawn_note(report, out / REPORT_FILE)
        page = _page(report, out).replace(_NOTE_SLOT, f"<p>{html.escape(note)}</p>\n"
                                          if note else "")
    except _MALFORMED as exc:
        raise ConfigError(f"{out / REPORT_FILE}: not a report of `surge tune` "
                          f"({type(exc).__name__}: {exc})") from None
    except OSError as exc:
        raise ConfigError(f"cannot write the plots into {out} ({exc})") from None
    if trace_data is not None:
        try:
            page = page.replace(_TRACE_SLOT, trace_section(trace_data, TRACE_PNG))
            plot_trace(trace_data, out / TRACE_PNG)
        except _MALFORMED as exc:
            raise ConfigError(f"{trace}: not a load-trace JSON ({type(exc).__name__}: "
                              f"{exc})") from None
    path = out / HTML_FILE
    try:
        write_text_atomically(path, page.replace(_TRACE_SLOT, ""))
    except OSError as exc:
        raise ConfigError(f"cannot write {path} ({exc})") from None
    if note and notes is not None:
        notes.append(note)
    return path


def drawn_note(report: dict[str, Any], path: Path) -> str:
    """What the plots leave out of `report` (read from `path`), or "" when they draw it all."""
    counts = {"served configurations": len(report["served"]),
              "variants": len(report["variants"])}
    over = [f"{count:,} {what}" for what, count in counts.items() if count > MAX_DRAWN]
    if not over:
        return ""
    return (f"{path} holds {' and '.join(over)}: the plots draw the first {MAX_DRAWN} of "
            "each, the tables list them all")


# What a report or trace of the wrong shape raises while it is read
_MALFORMED = (KeyError, TypeError, AttributeError, ValueError, IndexError)
_TRACE_SLOT = "<!-- trace -->"
_NOTE_SLOT = "<!-- note -->"


def _page(report: dict[str, Any], out: Path) -> str:
    """The plots of `report` written to `out`, and the page that shows them."""
    pareto, latency, prediction = PLOTS
    plot_pareto(report, out / pareto)
    plot_latency(report, out / latency)
    plot_prediction(report, out / prediction)
    served = [[_key(r["candidate"]), r["rung"], r["measured"]["throughput"],
               r["measured"]["p50_ms"], r["measured"]["p99_ms"], r["predicted"]["p99_ms"],
               r["measured"]["errors"], _fmt(r.get("client_cpu_share"), 2), r["startup_s"],
               r["error"]]
              for r in report["served"]]
    variants = [[v["variant"], _fmt(v["metric"], 2), v["inprocess_best"], v["accepted"],
                 v["reason"]] for v in report["variants"]]
    return _PAGE.format(
        title=html.escape(f"surge tune: {report['model']}"),
        summary=_summary(report),
        variants=_table(["variant", "metric (%)", "in-process samples/s", "accepted", "why"],
                        variants),
        served=_table(["configuration", "rung", "req/s", "p50 ms", "p99 ms", "predicted p99 ms",
                       "errors", "load generator cores", "startup s", "error"], served),
        candidates=_table(["configuration", "accuracy", "last rung", "req/s", "p99 ms", "status",
                           "why"], _candidate_rows(report)),
        trace=_TRACE_SLOT, note=_NOTE_SLOT,
    )


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1200px; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 13px; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; }}
th {{ background: #f0f0f0; }}
img {{ max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }}
</style></head><body>
<h1>{title}</h1>
{note}{summary}
<h2>Variants</h2>
<img src="pareto.png" alt="accuracy vs throughput">
{variants}
<h2>Configurations served for real</h2>
<img src="latency.png" alt="latency percentiles per configuration">
<img src="p99_predicted_vs_measured.png" alt="predicted vs measured p99">
{served}
<h2>Every configuration considered</h2>
{candidates}
{trace}
</body></html>
"""
