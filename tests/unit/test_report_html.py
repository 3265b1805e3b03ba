"""`surge report` on hand-edited inputs and stops mid-write: no markup of a trace reaches the
page, no traceback, and a stop while the page or a plot is written leaves the previous one."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from surge.errors import ConfigError
from surge.report import render_report
from surge.report.trace import MAX_TRACE_MODELS
from tests.unit.tuning.test_report_and_staging import _saved_report
from tests.unit.tuning.test_trace_report import TRACE

SCRIPT = "<script>alert(1)</script></style><img src=x onerror=alert(1)>"


def _trace(tmp_path: Path, data: dict[str, Any] | str) -> Path:
    path = tmp_path / "trace.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


@pytest.mark.parametrize("slo", [SCRIPT, "50", True, -1, 0])
def test_a_trace_slo_that_is_no_positive_number_is_refused(tmp_path: Path, slo: Any) -> None:
    """The heading printed `slo_ms` as it was: a trace's markup ran in the page."""
    _saved_report(tmp_path / "m")
    data = {**TRACE, "slo_ms": slo}
    with pytest.raises(ConfigError, match="not a load-trace JSON .slo_ms .* is not a positive"):
        render_report(tmp_path / "m", _trace(tmp_path, data))
    assert not (tmp_path / "m" / "tuning" / "report.html").exists()


def test_a_trace_nested_past_the_parser_s_depth_is_refused(tmp_path: Path) -> None:
    """A RecursionError traceback."""
    _saved_report(tmp_path / "m")
    trace = _trace(tmp_path, "[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match="not a load-trace JSON"):
        render_report(tmp_path / "m", trace)


def test_a_trace_of_more_models_than_the_plot_draws_is_refused(tmp_path: Path) -> None:
    """A plot column a model: thousands took minutes and gigabytes to draw."""
    _saved_report(tmp_path / "m")
    data = {**TRACE, "models": TRACE["models"] * (MAX_TRACE_MODELS + 1)}
    with pytest.raises(ConfigError, match=f"{MAX_TRACE_MODELS + 1} models, one plot column "
                                          f"each; the report draws at most {MAX_TRACE_MODELS}"):
        render_report(tmp_path / "m", _trace(tmp_path, data))


def test_non_finite_trace_values_show_as_no_value(tmp_path: Path) -> None:
    """They showed as 'nan' and 'inf' where the tuning tables show '-'."""
    _saved_report(tmp_path / "m")
    data = copy.deepcopy(TRACE)
    runs = data["models"][0]["runs"]
    runs[0]["summary"]["surge_goodput_per_s"] = "@NAN@"
    runs[1]["summary"]["surge_goodput_per_s"] = "@INF@"
    text = json.dumps(data).replace('"@NAN@"', "NaN").replace('"@INF@"', "Infinity")
    page = render_report(tmp_path / "m", _trace(tmp_path, text)).read_text()
    assert "<td>nan</td>" not in page
    assert "<td>inf</td>" not in page
    assert "<td>untuned</td><td>-</td>" in page


class Stop(BaseException):
    """A stop (Ctrl-C, SIGTERM) in the middle of a write."""


def test_a_stop_while_the_page_is_written_leaves_the_previous_page(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _saved_report(tmp_path / "m")
    before = render_report(tmp_path / "m").read_text()
    written = Path.write_text

    def half_then_stop(path: Path, text: str, *args: Any, **kwargs: Any) -> int:
        written(path, text[:len(text) // 2])
        raise Stop

    monkeypatch.setattr(Path, "write_text", half_then_stop)
    with pytest.raises(Stop):
        render_report(tmp_path / "m")
    monkeypatch.undo()
    folder = tmp_path / "m" / "tuning"
    assert (folder / "report.html").read_text() == before
    assert not list(folder.glob(".*partial"))


def test_a_stop_while_a_plot_is_written_leaves_the_previous_plot(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib.figure import Figure

    _saved_report(tmp_path / "m")
    render_report(tmp_path / "m")
    folder = tmp_path / "m" / "tuning"
    before = (folder / "pareto.png").read_bytes()

    def half_then_stop(fig: Figure, path: Any, *args: Any, **kwargs: Any) -> None:
        Path(path).write_bytes(before[:len(before) // 2])
        raise Stop

    monkeypatch.setattr(Figure, "savefig", half_then_stop)
    with pytest.raises(Stop):
        render_report(tmp_path / "m")
    monkeypatch.undo()
    assert (folder / "pareto.png").read_bytes() == before
    assert not list(folder.glob(".*partial"))
