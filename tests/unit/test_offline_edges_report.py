"""`surge report` on a hand-edited report.json: one past the size cap is refused before it is
read, and one of more served runs or variants than a plot draws is drawn in part, said so on
the page and by the command."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

import surge.report.render as render
from surge.errors import ConfigError
from surge.report import render_report
from tests.cli_runner import run_cli
from tests.unit.tuning.test_report_and_staging import _saved_report


def _report(tmp_path: Path, served: int = 2, variants: int = 3) -> Path:
    """A saved report whose served runs and variants are repeated up to the counts given."""
    _saved_report(tmp_path / "m")
    path = tmp_path / "m" / "tuning" / "report.json"
    data = json.loads(path.read_text())
    data["served"] = (data["served"] * served)[:served]
    data["variants"] = (data["variants"] * variants)[:variants]
    path.write_text(json.dumps(data))
    return path


def test_a_report_past_the_size_cap_is_refused_before_it_is_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _report(tmp_path)
    with path.open("r+b") as file:  # sparse: past the cap without writing 64 MiB
        file.truncate(render.MAX_REPORT_BYTES + 1)
    read: list[Path] = []
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: read.append(self) or "")
    with pytest.raises(ConfigError) as refused:
        render_report(tmp_path / "m")
    assert str(refused.value).startswith(
        f"{path}: {render.MAX_REPORT_BYTES + 1:,} bytes, more than the 64 MiB a tuning report "
        "may have")
    assert path not in read


def _drawn_bars(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Bars and points each plot drew, by file name, recorded as the figures are saved."""
    drawn: dict[str, int] = {}
    save = render.save_figure

    def counting(fig: Any, path: Path, *args: Any, **kwargs: Any) -> None:
        ax = fig.axes[0]
        drawn[path.name] = len(ax.patches) + sum(len(c.get_offsets()) for c in ax.collections)
        save(fig, path, *args, **kwargs)

    monkeypatch.setattr(render, "save_figure", counting)
    return drawn


def test_a_report_of_more_runs_than_a_plot_draws_is_drawn_in_part_and_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Thousands of served runs took tens of seconds to draw, as bars no one can read."""
    many = render.MAX_DRAWN + 1
    path = _report(tmp_path, served=many, variants=many)
    drawn = _drawn_bars(monkeypatch)
    code, out, err = run_cli(["report", str(tmp_path), "--model", "m"], capsys)
    assert (code, err) == (0, "")
    assert drawn["latency.png"] == 3 * render.MAX_DRAWN  # p50, p90 and p99 bars of each
    assert drawn["p99_predicted_vs_measured.png"] <= render.MAX_DRAWN
    note = (f"{path} holds {many:,} served configurations and {many:,} variants: the plots "
            f"draw the first {render.MAX_DRAWN} of each, the tables list them all")
    assert f"note: {note}" in " ".join(out.split())
    page = (tmp_path / "m" / "tuning" / "report.html").read_text()
    assert note in page
    assert page.count("<tr>") > 2 * many  # every run and variant in the tables


def test_a_report_the_plots_draw_whole_has_no_note(tmp_path: Path) -> None:
    _report(tmp_path)
    notes: list[str] = []
    page = render_report(tmp_path / "m", notes=notes).read_text()
    assert notes == []
    assert "the plots draw the first" not in page
    assert os.path.getsize(tmp_path / "m" / "tuning" / "latency.png") > 0
