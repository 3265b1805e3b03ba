"""`surge optimize` says so in its exit code when nothing it was asked for could be made."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import surge.api
from surge.optimize.pipeline import Outcome
from tests.cli_runner import run_cli
from tests.unit.tiny_models import make_repo


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


def _calibration_files(folder: Path) -> dict[str, Path]:
    good = np.ones((4, 4), np.float32)
    files = {"empty.npy": b"", "corrupt.npy": b"\x93NUMPY garbage", "corrupt.npz": b"PK\x03\x04x"}
    for name, content in files.items():
        (folder / name).write_bytes(content)
    np.save(folder / "object.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.savez(folder / "object.npz", x=np.array([{"a": 1}], dtype=object))
    np.save(folder / "fp64.npy", good.astype(np.float64))
    np.save(folder / "rows0.npy", good[:0])
    np.save(folder / "nan.npy", np.where(good > 0, np.nan, good))
    np.save(folder / "good.npy", good)
    (folder / "dir.npy").mkdir()
    return {p.name: p for p in folder.iterdir()}


@pytest.mark.parametrize(("name", "message"), [
    ("empty.npy", "is not a plain .npy array (EOFError"),
    ("corrupt.npy", "is not a plain .npy array (ValueError"),
    ("object.npy", "Object arrays cannot be loaded"),
    ("corrupt.npz", "is not an .npz archive of plain arrays (BadZipFile"),
    ("object.npz", "Object arrays cannot be loaded"),
    ("dir.npy", "is a directory"),
    ("fp64.npy", "input 'x' expects FP32 [-1, 4], got FP64 [4, 4]"),
    ("rows0.npy", "input 'x' has no rows to calibrate with"),
    ("nan.npy", "input 'x' holds NaN or infinite values"),
])
def test_calibration_data_it_cannot_use_is_one_line_before_any_variant(
        tmp_path: Path, name: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Unreadable files raised tracebacks (an empty one a bare "aborted"), a directory was "not
    found", and FP64, empty or NaN rows failed int8-static only after the work, in its table."""
    from tests.unit.test_cli_inputs import one_line_error

    repo = make_repo(tmp_path / "repo")
    files = _calibration_files(tmp_path)
    line = one_line_error(["optimize", str(repo), "--model", "tiny", "--variants", "int8-static",
                           "--calib", str(files[name])], capsys)
    assert message in line
    assert sorted(p.name for p in (repo / "tiny").iterdir()) == ["1", "config.yaml"]


def test_calibration_from_a_fifo_is_refused_not_waited_on(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.unit.fifo import bounded, make_fifo

    repo = make_repo(tmp_path / "repo")
    fifo = make_fifo(tmp_path / "calib.npy")
    code, out, err = bounded(fifo, lambda: run_cli(
        ["optimize", str(repo), "--model", "tiny", "--variants", "int8-static", "--calib",
         str(fifo)], capsys))
    assert code == 2, out + err
    assert f"calibration data '{fifo}' is not a regular file" in err


def test_a_variant_is_replaced_whole_or_not_at_all(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The old variant folder was deleted, the new model moved in and only then its variant.yaml
    written: stopped in between, the model's variant was gone or a model file without its
    record. Now the record is written in the staging folder and the folders swap by rename."""
    import yaml

    from surge.optimize.names import parse_variants
    from surge.optimize.pipeline import optimize_model

    repo = make_repo(tmp_path / "repo")
    (outcome,) = optimize_model(repo, "tiny", parse_variants("int8-dynamic"))
    assert outcome.kept
    folder = repo / "tiny" / "variants" / "int8-dynamic"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert set(before) == {"model.onnx", "variant.yaml"}

    def stopped(*_a: Any, **_k: Any) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(yaml, "safe_dump", stopped)
    with pytest.raises(KeyboardInterrupt):
        optimize_model(repo, "tiny", parse_variants("int8-dynamic"))
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in folder.parent.iterdir()] == ["int8-dynamic"]  # no work folder left
    monkeypatch.undo()
    optimize_model(repo, "tiny", parse_variants("int8-dynamic"))
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx", "variant.yaml"]
    assert [p.name for p in folder.parent.iterdir()] == ["int8-dynamic"]


def test_the_table_shows_the_measures_the_checks_have() -> None:
    """A ranking model's check has NDCG and AUC, no top-1 or cosine: the table showed only
    dashes for it."""
    from rich.console import Console

    from surge.commands.optimize import _outcome_table
    from surge.optimize.variant import CheckResult, Variant

    check = CheckResult(samples=100, max_abs=0.01, mean_abs=0.001, ndcg=0.7412,
                        reference_ndcg=0.745, auc=0.6901, reference_auc=0.6912)
    made = Variant("int8-tables", Path("model.onnx"), "onnxruntime", "quantize/int8-tables",
                   {}, check, size_bytes=2_000_000)
    console = Console(width=200, record=True)
    console.print(_outcome_table("dlrm", [Outcome("int8-tables", made, True, None),
                                          Outcome("prune-50", None, False, None, "no torch")]))
    text = console.export_text()
    for shown in ("NDCG (original)", "0.7412 (0.7450)", "AUC (original)", "0.6901 (0.6912)"):
        assert shown in text
    for absent in ("top-1 agree", "cosine"):
        assert absent not in text
