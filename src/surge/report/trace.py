"""The load-trace plot (`benchmarks/surge_load.py`'s JSON): p99, goodput and the share of
answers computed by a cheaper variant, per 1-s window, one line per configuration and one
column per model. The benchmark writes it to the docs; `surge report --trace FILE` puts it
and a summary table in the tuning report."""

from __future__ import annotations

import html
import json
import math
import stat
from pathlib import Path
from typing import Any

from surge.errors import ConfigError

TRACE_PNG = "load_trace.png"
MAX_TRACE_BYTES = 64 << 20  # a 90 s trace of two models is well under 1 MB
# One plot column per model: past this the picture is unreadable, and drawing a column of a
# trace of thousands took minutes and gigabytes before it failed.
MAX_TRACE_MODELS = 16


def load_trace(path: Path) -> dict[str, Any]:
    """The benchmark's JSON; ConfigError when it is not one."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):  # a FIFO would block the read forever
            raise ValueError("not a regular file")
        if info.st_size > MAX_TRACE_BYTES:
            raise ValueError(f"larger than {MAX_TRACE_BYTES >> 20} MiB")
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as error:  # Recursion: nested past the parser
        raise ConfigError(f"{path}: not a load-trace JSON ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise ConfigError(f"{path}: not a load-trace JSON (no 'models' list)")
    _check_trace(path, data)
    return data


def _check_trace(path: Path, data: dict[str, Any]) -> None:
    """What the page prints as it is (the SLO in its heading) and how much there is to draw."""
    slo = data.get("slo_ms")
    if slo is not None and (isinstance(slo, bool) or not isinstance(slo, int | float)
                            or not 0 < slo < math.inf):
        raise ConfigError(f"{path}: not a load-trace JSON (slo_ms {str(slo)[:80]!r} is not a "
                          "positive number of ms)")
    if len(data["models"]) > MAX_TRACE_MODELS:
        raise ConfigError(f"{path}: {len(data['models']):,} models, one plot column each; "
                          f"the report draws at most {MAX_TRACE_MODELS}: keep those to show")


def _downgraded(window: dict[str, Any], top: str) -> float | None:
    """Share of the window's answers computed by a variant other than the top rung."""
    mix = window.get("variants") or {}
    total = sum(mix.values())
    return None if not total else 1.0 - mix.get(top, 0) / total


def plot_trace(data: dict[str, Any], path: Path) -> Path:
    """Write the trace PNG; returns its path."""
    from surge.report.render import _pyplot, save_figure

    plt = _pyplot()
    models = data["models"]
    fig, axes = plt.subplots(3, len(models), figsize=(6.5 * len(models), 8.5), sharex="col",
                             squeeze=False)
    slo = data.get("slo_ms")
    for column, model in enumerate(models):
        p99_ax, good_ax, mix_ax = axes[0][column], axes[1][column], axes[2][column]
        for run in model["runs"]:
            seconds = [w["second"] for w in run["windows"]]
            p99_ax.plot(seconds, [w["p99_ms"] for w in run["windows"]], label=run["config"])
            good_ax.plot(seconds, [w["goodput"] for w in run["windows"]], label=run["config"])
            mix_ax.plot(seconds, [_downgraded(w, model.get("top", "original"))
                                  for w in run["windows"]], label=run["config"])
        if slo:
            p99_ax.axhline(slo, color="grey", linestyle="--", linewidth=1)
        p99_ax.set_yscale("log")
        p99_ax.set_title(f"{model['name']}: capacity {model['capacity_per_s']:.0f}/s")
        p99_ax.set_ylabel("p99 ms (log)")
        good_ax.set_ylabel("goodput (answers within SLO)/s")
        mix_ax.set_ylabel("share answered by a cheaper variant")
        mix_ax.set_xlabel("second of the trace")
        mix_ax.set_ylim(-0.05, 1.05)
        p99_ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path, dpi=100)
    return path


def trace_section(data: dict[str, Any], image: str) -> str:
    """HTML: the plot and one row per model and configuration of the trace's summary."""
    rows = []
    for model in data["models"]:
        for run in model["runs"]:
            s = run.get("summary", {})
            cells = [model["name"], run["config"], s.get("surge_goodput_per_s"),
                     s.get("surge_windows_within_slo"), s.get("shed"),
                     s.get("mean_accuracy"), s.get("half_load_p50_ms")]
            rows.append("<tr>" + "".join(
                f"<td>{html.escape(_cell(c))}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in (
        "model", "configuration", "goodput in the surge /s", "surge windows within SLO",
        "shed", "mean accuracy of answers", "p50 at half load ms"))
    slo = html.escape(str(data.get("slo_ms")))  # a number or None since load_trace
    return (f'<h2>Load trace (SLO p99 {slo} ms)</h2>\n'
            f'<img src="{html.escape(image)}" alt="p99, goodput and variant mix over time">\n'
            f"<table><tr>{head}</tr>{''.join(rows)}</table>\n")


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"  # as the tuning tables show no value
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1 else f"{value:,.1f}"
    return str(value)
