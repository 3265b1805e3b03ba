"""The Python API: cheap to import, lazily exported from `surge`, and what the CLI calls."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import surge
import surge.api
from surge.errors import SurgeError
from tests.cli_runner import run_cli


def test_import_surge_loads_no_engine() -> None:
    code = ("import sys, surge; heavy = [m for m in ('torch', 'onnxruntime', 'surge.api', "
            "'surge.tuning', 'surge.server') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_exported_name_resolves() -> None:
    for name in surge.__all__:
        assert getattr(surge, name) is not None, name
    assert surge.TuneOptions.__module__ == "surge.tuning.tune"
    assert surge.tune is surge.api.tune
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        surge.nope  # noqa: B018


def test_verbs_are_functions_and_their_subpackages_stay_reachable() -> None:
    import surge.train.config
    import surge.train.launcher as launcher

    assert callable(surge.train)
    assert surge.train.config is sys.modules["surge.train.config"]
    assert launcher is sys.modules["surge.train.launcher"]
    assert surge.optimize.parse_variants is sys.modules["surge.optimize"].parse_variants
    assert "recipe" in (surge.train.__doc__ or "")
    import inspect

    assert list(inspect.signature(surge.evaluate).parameters)[:3] == ["repo", "model", "data"]


def test_a_verb_forwards_its_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[Any, ...]] = []
    monkeypatch.setattr(surge.api, "evaluate", lambda *a, **k: seen.append((a, k)) or "report")
    assert surge.evaluate("repo", "m", "d", samples=3) == "report"
    assert seen == [(("repo", "m", "d"), {"samples": 3})]


class StopError(SurgeError):
    """Ends a command once the API call was seen."""


def capture(monkeypatch: pytest.MonkeyPatch, name: str) -> list[tuple[Any, ...]]:
    calls: list[tuple[Any, ...]] = []

    def fake(*args: Any, **kwargs: Any) -> Any:
        calls.append((*args, kwargs))
        raise StopError("stopped after the API call")

    monkeypatch.setattr(surge.api, name, fake)
    return calls


def test_surge_serve_calls_the_api(monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    calls = capture(monkeypatch, "serve")
    code, _, _ = run_cli(["serve", "repo", "--http-port", "0", "--models", "a,b",
                          "--max-body-mb", "1"], capsys)
    assert code == 2
    repo, options, _started, _ = calls[0]
    assert repo == Path("repo")
    assert (options.http_port, options.models, options.max_body_bytes) == (0, ("a", "b"), 1 << 20)


def test_surge_tune_builds_the_split_options(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    calls = capture(monkeypatch, "tune")
    code, _, _ = run_cli(["tune", "repo", "--model", "m", "--data", "d", "--slo-p99", "20ms",
                          "--rate", "100/s", "--max-accuracy-drop", "0.5", "--budget", "2m",
                          "--settings", "1x2,2x1", "--max-batch", "1,8", "--delays", "0,2",
                          "--full-run", "5s", "--finalists", "3", "--eval-samples", "100",
                          "--no-write"], capsys)
    assert code == 2
    _, model, options, *_ = calls[0]
    assert model == "m"
    assert (options.slo.p99_ms, options.slo.load.rate) == (pytest.approx(20.0), 100.0)
    assert (options.accuracy.max_drop, options.accuracy.metric) == (0.5, "accuracy")
    assert options.space == surge.SearchSpace((1, 8), (0.0, 2.0), ((1, 2), (2, 1)))
    assert (options.effort.budget_s, options.effort.full_run_s) == (120.0, 5.0)
    assert (options.effort.finalists, options.effort.eval_samples) == (3, 100)
    assert options.write_config is False


def test_surge_train_and_optimize_call_the_api(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    trains = capture(monkeypatch, "train")
    assert run_cli(["train", "r.yaml", "--nproc", "2", "epochs=1"], capsys)[0] == 2
    recipe, overrides, options, _ = trains[0]
    assert (recipe, overrides, options.nproc) == (Path("r.yaml"), ["epochs=1"], 2)
    optimizes = capture(monkeypatch, "optimize")
    assert run_cli(["optimize", "repo", "--model", "m", "--variants", "int8-dynamic"],
                   capsys)[0] == 2
    assert optimizes[0][1:3] == ("m", "int8-dynamic")


def test_surge_evaluate_prints_the_api_report(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from surge.evaluate.harness import EvalReport

    def fake(repo: Path, model: str, data: str, task: str, **kwargs: Any) -> EvalReport:
        assert kwargs == {"metric": None, "samples": 10}
        return EvalReport(task, model, data, 10, 0.5, "accuracy", 90.0, None)  # type: ignore[arg-type]

    monkeypatch.setattr(surge.api, "evaluate", fake)
    code, out, _ = run_cli(["evaluate", "repo", "--model", "m", "--data", "d", "--samples", "10"],
                           capsys)
    assert code == 0
    assert "m on d (10 samples): accuracy 90.00%" in out


def test_train_refuses_overrides_for_a_parsed_recipe() -> None:
    with pytest.raises(SurgeError, match="overrides apply to a recipe file"):
        surge.api.train(object(), ["epochs=1"])  # type: ignore[arg-type]


def test_a_server_that_cannot_start_raises_its_error(tmp_path: Path) -> None:
    with pytest.raises(SurgeError, match="not a directory"):
        surge.start_server(tmp_path / "absent", timeout_s=30)
    surge.api.BackgroundServer(tmp_path).stop()  # never started: nothing to stop
