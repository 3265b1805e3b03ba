"""The HTML/PNG report from a saved tuning report, and staging a candidate for a served run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from surge.errors import NotFoundError
from surge.report import pareto_front, render_report
from surge.repository import Repository
from surge.tuning.serving import stage_model
from surge.tuning.space import ORIGINAL, Candidate, Load
from tests.unit.tiny_models import make_repo


def test_pareto_front_keeps_only_unbeaten_points() -> None:
    points = [(100.0, 90.0), (200.0, 89.0), (150.0, 88.0), (300.0, 80.0), (50.0, 91.0)]
    # (150, 88) is beaten by (200, 89) on both axes
    assert pareto_front(points) == [(50.0, 91.0), (100.0, 90.0), (200.0, 89.0), (300.0, 80.0)]


def _candidate(variant: str, batch: int) -> dict:
    return {"variant": variant, "max_batch_size": batch, "max_queue_delay_ms": 1.0,
            "instances": 1, "threads": 2}


def _measured(throughput: float, p99: float | None) -> dict:
    return {"throughput": throughput, "p99_ms": p99, "p50_ms": 1.0, "p90_ms": 2.0, "errors": 0,
            "rung": "full run", "capacity": None}


def _saved_report(model_dir: Path) -> None:
    chosen = _candidate("int8", 32)
    loser = _candidate(ORIGINAL, 1)
    served = [{"candidate": loser, "rung": "baseline", "predicted": _measured(90.0, None),
               "measured": _measured(100.0, 80.0), "startup_s": 3.0, "error": ""},
              {"candidate": chosen, "rung": "final", "predicted": _measured(900.0, 20.0),
               "measured": _measured(800.0, 30.0), "startup_s": 3.0, "error": ""}]
    report = {
        "model": "m", "slo_p99_ms": 50.0, "load": "64 concurrent clients",
        "max_accuracy_drop": 1.0, "min_metric": None, "reference_metric": 91.0,
        "chosen": chosen, "speedup": 8.0, "config_path": None, "total_seconds": 12.0,
        "serving_costs": {"batch_overhead_ms": 2.5, "request_overhead_ms": 0.125,
                          "p99_scale": 1.5},
        "variants": [
            {"variant": ORIGINAL, "metric_name": "accuracy", "metric": 91.0, "accepted": True,
             "reason": "within the accuracy budget", "inprocess_best": 1000.0},
            {"variant": "int8", "metric_name": "accuracy", "metric": 90.5, "accepted": True,
             "reason": "within the accuracy budget", "inprocess_best": 3000.0},
            {"variant": "pruned<b>", "metric_name": "accuracy", "metric": 85.0,
             "accepted": False, "reason": "accuracy 85.00 is 6.00 points below",
             "inprocess_best": 4000.0},
        ],
        "served": served, "baseline": served[0], "tuned": served[1],
        "selection": {"message": "chose int8", "strategy": "successive halving", "candidates": [
            {"candidate": chosen, "accuracy": 90.5, "measurements": [_measured(800.0, 30.0)],
             "status": "chosen", "reason": "highest sustainable throughput"},
            {"candidate": loser, "accuracy": 91.0, "measurements": [],
             "status": "lost", "reason": "cut by successive halving after predicted"},
        ]},
    }
    (model_dir / "tuning").mkdir(parents=True)
    (model_dir / "tuning" / "report.json").write_text(json.dumps(report))


def test_render_report_writes_html_and_plots(tmp_path: Path) -> None:
    _saved_report(tmp_path / "m")
    page = render_report(tmp_path / "m").read_text()
    for png in ("pareto.png", "latency.png", "p99_predicted_vs_measured.png"):
        assert (tmp_path / "m" / "tuning" / png).read_bytes()[:4] == b"\x89PNG"
        assert f'src="{png}"' in page
    assert "cut by successive halving after predicted" in page
    assert "int8 b32 d1ms 1x2t" in page
    assert "pruned&lt;b&gt;" in page  # names are escaped, not injected
    assert "30.0 ms measured (predicted 20.0 ms)" in page
    assert "2.50 ms per batch + 0.125 ms per request, p99 x 1.50" in page


def test_render_report_needs_a_tune(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="run `surge tune` first"):
        render_report(tmp_path)


def test_stage_model_serves_the_candidate_and_leaves_the_original(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", config="name: tiny\nmax_batch_size: 8\n")
    model_dir = repo / "tiny"
    variant = model_dir / "variants" / "copy"
    variant.mkdir(parents=True)
    os.link(model_dir / "1" / "model.onnx", variant / "model.onnx")
    (variant / "variant.yaml").write_text("name: copy\n")
    (model_dir / "tuning").mkdir()  # earlier reports are not staged

    stage = stage_model(model_dir, Candidate("copy", 4, 1.5, 2, 1), 50.0, tmp_path / "stage")
    loaded = Repository(stage).load("tiny")
    assert loaded.variant == "copy"
    assert loaded.config.max_batch_size == 4
    assert (loaded.config.instances, loaded.config.threads) == (2, 1)
    assert not (stage / "tiny" / "tuning").exists()
    # hard links, not copies; the user's config is unchanged
    assert (stage / "tiny" / "1" / "model.onnx").stat().st_ino == \
        (model_dir / "1" / "model.onnx").stat().st_ino
    assert Repository(repo).config("tiny").max_batch_size == 8


def test_served_measurements_send_rows_of_the_dataset_the_config_names(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tuning measures the served model on its own data, not random inputs."""
    import contextlib

    import surge.bench
    from surge.tuning import serving as serving_module

    repo = make_repo(tmp_path / "repo",
                     config="name: tiny\nparameters: {task: classification, dataset: toy}\n")
    seen: dict[str, object] = {}

    def fake_bench(url: str, model: str, *args: object, **kwargs: object) -> object:
        seen.update(kwargs)
        raise RuntimeError("stop here")

    @contextlib.contextmanager
    def fake_serving(stage: Path, name: str):  # type: ignore[no-untyped-def]
        yield serving_module.RunningServer("http://127.0.0.1:1", None, 0.0)  # type: ignore[arg-type]

    monkeypatch.setattr(surge.bench, "run_bench", fake_bench)
    monkeypatch.setattr(serving_module, "serving", fake_serving)
    with pytest.raises(RuntimeError, match="stop here"):
        serving_module.measure_served(repo / "tiny", Candidate("original", 4, 1.0, 1, 1),
                                      Load(concurrency=2), 1.0)
    assert seen["dataset"] == "toy"
