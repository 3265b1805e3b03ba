"""`surge optimize` says so in its exit code when nothing it was asked for could be made."""

from __future__ import annotations

from typing import Any

import pytest

import surge.api
from surge.optimize.pipeline import Outcome
from tests.cli_runner import run_cli


def _optimize_gives(monkeypatch: pytest.MonkeyPatch, *outcomes: Outcome) -> None:
    def fake(*args: Any, **kwargs: Any) -> list[Outcome]:
        return list(outcomes)

    monkeypatch.setattr(surge.api, "optimize", fake)


def test_no_variant_made_is_exit_2(monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    _optimize_gives(monkeypatch, Outcome("prune-50", None, False, None,
                                         "AttributeError: 'tuple' object has no attribute"))
    code, out, err = run_cli(["optimize", "repo", "--model", "fashion", "--variants",
                              "prune-50"], capsys)
    assert code == 2
    assert "no variant of fashion could be made (prune-50)" in err
    assert "variants of fashion" in out  # the table, with the reasons, came first


def test_some_variants_made_is_success_naming_the_others(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from surge.optimize.variant import Variant

    made = Variant.__new__(Variant)  # the table reads only what the fake leaves unset
    _optimize_gives(monkeypatch, Outcome("int8-dynamic", made, True, None),
                    Outcome("prune-50", None, False, None, "no torch model"))
    monkeypatch.setattr("surge.commands.optimize._outcome_table", lambda model, outcomes: "")
    code, out, _ = run_cli(["optimize", "repo", "--model", "fashion", "--variants",
                            "int8-dynamic,prune-50"], capsys)
    assert code == 0
    assert "could not be made: prune-50" in out
