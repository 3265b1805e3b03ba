"""`surge tune` and `surge optimize` options: an accuracy-drop budget under a tenth of a point
that no variant is within says its unit (points, not a fraction) and what to write for the drop
likely meant, without refusing the value; --settings of digits int() cannot read is refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import surge.api
from surge.commands.tune import _print_summary
from surge.optimize.pipeline import Outcome
from surge.optimize.variant import CheckResult, Variant
from surge.tuning.search import SelectionReport
from surge.tuning.tune import TuningReport
from surge.tuning.variants import VariantResult
from tests.cli_runner import run_cli
from tests.unit.tiny_models import make_repo

POINTS = "which is in accuracy points (0.01 = one hundredth of a point; 1 = one point)"


def _tune_report(max_drop: float, int8_metric: float) -> TuningReport:
    report = TuningReport("m", "classification", "d", 50.0, "16", 16, None, max_drop, None,
                          reference_metric=91.0)
    for name, metric in (("original", 91.0), ("int8", int8_metric)):
        accepted = 91.0 - metric <= max_drop
        report.variants.append(VariantResult(name, "accuracy", metric, accepted, "why"))
    report.selection = SelectionReport(50.0, "16", "s", None, [], 1.0, "chose original")
    return report


def test_tune_says_the_unit_of_a_budget_no_variant_was_within(
        capsys: pytest.CaptureFixture[str]) -> None:
    _print_summary(_tune_report(0.01, 90.5))
    out = " ".join(capsys.readouterr().out.split())
    assert (f"note: no variant is within --max-accuracy-drop 0.01, {POINTS}: to allow a drop "
            "of 1 point, write --max-accuracy-drop 1") in out


@pytest.mark.parametrize(("max_drop", "int8_metric"), [
    (0.01, 90.995),  # the variant is within it
    (0.5, 90.0),  # a budget of points as meant
    (0.0, 90.0),  # no drop at all: the same in either unit
])
def test_tune_says_nothing_more_otherwise(
        capsys: pytest.CaptureFixture[str], max_drop: float, int8_metric: float) -> None:
    _print_summary(_tune_report(max_drop, int8_metric))
    assert "accuracy points" not in capsys.readouterr().out


def _outcome(failures: tuple[str, ...]) -> Outcome:
    check = CheckResult(100, 0.1, 0.01, accuracy=0.905, reference_accuracy=0.91,
                        failures=failures)
    variant = Variant("int8-dynamic", Path("model.onnx"), "onnxruntime", "quantize", {}, check)
    return Outcome("int8-dynamic", variant, False, None)


@pytest.mark.parametrize(("tolerance", "failures", "said"), [
    ("accuracy_drop=0.05", ("accuracy drop 0.50 points > 0.05",), True),
    ("accuracy_drop=0.5", ("accuracy drop 0.60 points > 0.5",), False),
    ("accuracy_drop=0.05,max_abs=0.001", ("max abs error 0.1 > 0.001",), False),
])
def test_optimize_says_the_unit_of_a_budget_no_variant_was_within(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        tolerance: str, failures: tuple[str, ...], said: bool) -> None:
    make_repo(tmp_path)
    outcomes = [_outcome(failures)]

    def made(*args: Any, **kwargs: Any) -> list[Outcome]:
        return outcomes

    monkeypatch.setattr(surge.api, "optimize", made)
    code, out, _ = run_cli(["optimize", str(tmp_path), "--model", "tiny", "--variants",
                            "int8-dynamic", "--tolerance", tolerance], capsys)
    assert code == 0
    out = " ".join(out.split())
    note = (f"note: no variant is within --tolerance accuracy_drop=0.05, {POINTS}: to allow a "
            "drop of 5 points, write --tolerance accuracy_drop=5")
    assert (note in out) is said


@pytest.mark.parametrize("settings", ["\u00b2x1", "1x\u0662", "1x2,\u00b9x1"])
def test_settings_of_digits_that_are_no_numbers_are_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], settings: str) -> None:
    """'²' passed str.isdigit(), then int() raised a traceback."""
    make_repo(tmp_path)
    code, _, err = run_cli(["tune", str(tmp_path), "--model", "tiny", "--data", "d.npz",
                            "--slo-p99", "50ms", "--settings", settings], capsys)
    assert code == 2
    assert err.startswith(f"error: --settings {settings!r}: expected INSTANCESxTHREADS")
