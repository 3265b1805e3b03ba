"""`surge tune` end to end on the tiny 2x+1 model: optimize -> evaluate -> profile -> serve for
real -> select -> write config -> report, in seconds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tests.cli_runner import run_cli
from tests.unit.tiny_models import make_repo

from surge.repository import Repository


@pytest.fixture
def tiny_repo(tmp_path: Path) -> tuple[Path, Path]:
    repo = make_repo(tmp_path / "repo", config="name: tiny\nmax_batch_size: 8\n")
    x = np.random.default_rng(1).random((300, 4), dtype=np.float32)
    labels = x.argmax(axis=1)
    labels[:15] = (labels[:15] + 1) % 4  # 95% accurate by construction
    np.savez(tmp_path / "val.npz", x=x, labels=labels)
    return repo, tmp_path / "val.npz"


def test_tune_tiny_model_end_to_end(tiny_repo: tuple[Path, Path],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    repo, data = tiny_repo
    code, out, err = run_cli([
        "tune", str(repo), "--model", "tiny", "--data", str(data), "--task", "classification",
        "--slo-p99", "2s", "--concurrency", "4", "--max-accuracy-drop", "1.0", "--budget", "2m",
        "--variants", "int8-dynamic", "--max-batch", "1,8", "--delays", "0,1",
        "--settings", "1x1,2x1", "--profile-time", "0.05s", "--full-run", "0.5s",
        "--short-runs", "0", "--finalists", "1", "--final-rounds", "1",
    ], capsys)
    assert code == 0, err
    assert "speed-up (same run)" in out

    model_dir = repo / "tiny"
    report = json.loads((model_dir / "tuning" / "report.json").read_text())
    # the optimizer ran because the model had no variants, and its variant was evaluated
    assert report["optimized"] == ["int8-dynamic"]
    metrics = {v["variant"]: v["metric"] for v in report["variants"]}
    assert metrics["original"] == pytest.approx(95.0)
    assert metrics["int8-dynamic"] == pytest.approx(95.0, abs=1.0)
    # real runs: the baseline, the finalist's full run, then baseline and choice re-measured
    rungs = [r["rung"] for r in report["served"]]
    assert rungs == ["baseline", "full run", "final", "final"]
    assert all(r["measured"]["throughput"] > 0 and not r["error"] for r in report["served"])
    assert all(r["client_cpu_share"] > 0 for r in report["served"])  # the load generator's CPU
    assert report["tuned"]["predicted"]["p99_ms"] is not None
    assert report["speedup"] == pytest.approx(
        report["tuned"]["measured"]["throughput"] / report["baseline"]["measured"]["throughput"])

    # the choice is in config.yaml (the untuned one if the choice lost back to back), and the
    # repository serves exactly that
    chosen = report["baseline" if report["kept_untuned"] else "tuned"]["candidate"]
    config = Repository(repo).config("tiny")
    assert (config.max_batch_size, config.instances, config.threads, config.slo_p99_ms) == (
        chosen["max_batch_size"], chosen["instances"], chosen["threads"], 2000.0)
    if config.ladder:  # a faster variant within the budget: the ladder starts at the original
        assert config.variant is None
        assert config.ladder[0] == "original"
        assert set(config.ladder_accuracy) == set(config.ladder)
        assert config.max_accuracy_drop == report["max_accuracy_drop"]
    else:
        assert config.variant == (None if chosen["variant"] == "original" else chosen["variant"])
    selection = report["selection"]
    assert sum(c["status"] == "chosen" for c in selection["candidates"]) == 1
    assert all(c["reason"] for c in selection["candidates"])

    # surge report re-renders the HTML and plots from the saved JSON
    for name in ("report.html", "pareto.png", "latency.png", "p99_predicted_vs_measured.png"):
        (model_dir / "tuning" / name).unlink()
    code, out, _ = run_cli(["report", str(repo), "--model", "tiny"], capsys)
    assert code == 0
    page = (model_dir / "tuning" / "report.html").read_text()
    assert "Every configuration considered" in page
    assert (model_dir / "tuning" / "pareto.png").read_bytes()[:4] == b"\x89PNG"


def test_report_without_a_tune_is_a_one_line_error(tiny_repo: tuple[Path, Path],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["report", str(tiny_repo[0]), "--model", "tiny"], capsys)
    assert code == 2
    assert "no tuning report" in err
    assert "run `surge tune` first" in err


@pytest.mark.parametrize(("args", "message"), [
    (["--slo-p99", "fast"], "--slo-p99 'fast'"),
    (["--rate", "lots"], "--rate 'lots'"),
    (["--rate", "10/s", "--concurrency", "4"], "not both"),
    (["--max-batch", "0,8"], "--max-batch '0,8'"),
    (["--settings", "2by1"], "--settings '2by1'"),
    (["--task", "segmentation"], "unknown task 'segmentation'"),
    (["--metric", "mAP50"], "metric 'mAP50' is not one of accuracy, macro_f1"),
])
def test_tune_bad_options_name_the_value(tiny_repo: tuple[Path, Path], args: list[str],
                                         message: str, capsys: pytest.CaptureFixture[str]) -> None:
    repo, data = tiny_repo
    code, _, err = run_cli(["tune", str(repo), "--model", "tiny", "--data", str(data), *args],
                           capsys)
    assert code == 2
    assert message in err
