"""`surge bench` on input that does not fit the model, servers that never answer, runs too
short for their schedule, and Ctrl-C: a clear error or an honest figure, never a traceback, a
hang or a number computed over the wrong time."""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from surge.bench import BenchReport, BenchRun, loadgen
from surge.bench.loadgen import _closed_loop, _Tally, run_level
from surge.bench.payload import InputSpec, dataset_inputs, sample_inputs
from surge.cli import main
from surge.commands import bench as bench_command
from surge.errors import SurgeError

SPECS = [InputSpec("x", "FP32", (-1, 4))]


@pytest.mark.parametrize("shape", [(64, 3), (64, 2, 2), (64, 8)])
def test_rows_of_another_shape_are_refused_when_named(tmp_path: Path,
                                                       shape: tuple[int, ...]) -> None:
    """Rows of 3 values were a ValueError traceback from a reshape; rows of 2x2 were reshaped
    into the model's 4 and sent as if they were its inputs."""
    data = tmp_path / "rows.npz"
    np.savez(data, x=np.zeros(shape, np.float32), labels=np.zeros(shape[0], np.int64))
    with pytest.raises(SurgeError, match=rf"input 'x' has rows of shape "
                                         rf"\[{', '.join(map(str, shape[1:]))}\], not the "
                                         r"model's \[4\]"):
        sample_inputs(SPECS, dataset=str(data), strict_dataset=True)
    lenient = sample_inputs(SPECS, dataset=str(data))  # `surge tune`'s trials: random rows
    assert lenient[0]["x"].shape == (1, 4)


def test_rows_of_the_models_shape_are_sent(tmp_path: Path) -> None:
    data = tmp_path / "rows.npz"
    rows = np.arange(64 * 4, dtype=np.float32).reshape(64, 4)
    np.savez(data, x=rows, labels=np.zeros(64, np.int64))
    sets = sample_inputs(SPECS, dataset=str(data), strict_dataset=True, variants=2)
    assert np.array_equal(sets[1]["x"], rows[1:2])
    flat = sample_inputs([InputSpec("x", "FP32", (4,))], batched=False, dataset=str(data),
                         strict_dataset=True, variants=1)
    assert flat[0]["x"].shape == (4,)


@pytest.mark.parametrize("content", [b"not a zip", b"PK\x03\x04broken"])
def test_a_data_file_that_is_not_an_npz_is_refused(tmp_path: Path, content: bytes) -> None:
    """numpy's ValueError (a pickle it will not load) came out as a traceback."""
    data = tmp_path / "rows.npz"
    data.write_bytes(content)
    with pytest.raises(SurgeError, match=r"--data '.*rows.npz': cannot read its rows"):
        dataset_inputs(str(data), SPECS, 16, strict=True)
    assert dataset_inputs(str(data), SPECS, 16) == {}


class _Silent:
    """A server that takes every request and never answers."""

    def __init__(self) -> None:
        self.sent = 0

    async def send(self, payload: bytes) -> str:
        self.sent += 1
        await asyncio.Event().wait()
        return "ok"

    async def close(self) -> None:
        pass


def test_a_closed_loop_against_a_server_that_never_answers_ends() -> None:
    """It waited for the answers forever."""
    transport, tally = _Silent(), _Tally()

    async def drive() -> None:
        until = time.perf_counter() + 0.05
        await asyncio.wait_for(_closed_loop(transport, [b"x"], 3, until, tally, 0.2),
                               timeout=5.0)

    asyncio.run(drive())
    assert transport.sent == 3
    assert (tally.sent, dict(tally.errors), tally.latencies) == (3, {"timeout": 3}, [])


def test_an_open_loop_counts_the_requests_it_gave_up_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loadgen, "GRACE_S", 0.1)
    run = asyncio.run(run_level(_Silent(), [b"x"], concurrency=1, duration_s=0.2, rate=20.0,
                                poisson=False, warmup_s=0.0))
    assert run.requests == 4
    assert run.errors == {"timeout": 4}
    assert (run.ok, run.throughput) == (0, 0.0)


class _Instant:
    async def send(self, payload: bytes) -> str:
        return "ok"

    async def close(self) -> None:
        pass


def test_an_open_loop_divides_by_its_whole_duration() -> None:
    """At 5/s for 0.5 s, three requests (t = 0, 0.2, 0.4) were divided by the 0.4 s to the
    last arrival: 7.5 requests/s reported for a rate of 5."""
    run = asyncio.run(run_level(_Instant(), [b"x"], concurrency=1, duration_s=0.5, rate=5.0,
                                poisson=False, warmup_s=0.0))
    assert run.requests == 3
    assert run.duration_s >= 0.5
    assert run.throughput == pytest.approx(3 / 0.5, rel=0.1)


def _run(**figures: Any) -> BenchRun:
    base: dict[str, Any] = {
        "concurrency": 1, "rate": None, "duration_s": 1.0, "requests": 5, "ok": 0,
        "throughput": 0.0, "p50_ms": math.nan, "p90_ms": math.nan, "p99_ms": math.nan,
        "max_ms": math.nan, "errors": {"503": 5}, "client_cpu_s": 0.1, "client_cpu_share": 0.1}
    return BenchRun(**{**base, **figures})


def test_a_run_without_answers_writes_json_with_nulls(tmp_path: Path) -> None:
    """NaN was written as is: not JSON (jq, JavaScript and most parsers refuse the file)."""
    path = tmp_path / "bench.json"
    bench_command._write_json(path, BenchReport("http://h:1", "m", "http", 1, [_run()]))

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in the JSON")

    run = json.loads(path.read_text(), parse_constant=refuse)["runs"][0]
    assert (run["p50_ms"], run["p99_ms"], run["max_ms"], run["ok"]) == (None, None, None, 0)


def test_a_duration_too_long_for_a_float_is_refused_by_its_text() -> None:
    text = "1" + "0" * 400 + "s"
    with pytest.raises(SurgeError, match=r"--duration '10+s' is not a positive duration"):
        bench_command.parse_duration(text)


def test_ctrl_c_prints_the_levels_measured_and_exits_130(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """It printed nothing: a long bench interrupted in its last level lost every figure."""
    def interrupted(*_args: Any, on_run: Any = None, **_kwargs: Any) -> None:
        on_run(_run(concurrency=16, ok=123, throughput=61.5, p50_ms=2.0, p90_ms=3.0,
                    p99_ms=4.0, max_ms=5.0, errors={}))
        raise KeyboardInterrupt

    monkeypatch.setattr(loadgen, "run_bench", interrupted)
    monkeypatch.setattr("surge.bench.run_bench", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "http://127.0.0.1:9", "--model", "m", "--concurrency", "16,64",
              "--duration", "1s"])
    assert exit_info.value.code == 130
    out = capsys.readouterr()
    assert "61.5" in out.out
    assert "123" in out.out
    assert "interrupted: 1 load level(s) measured to the end" in out.out
    assert "Traceback" not in out.err
