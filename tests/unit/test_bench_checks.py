"""`surge bench` refuses bad input in one line (exit 2) before any load is sent."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from surge.bench import loadgen, payload
from surge.bench.loadgen import _open_loop, _Tally, prepare_target
from surge.bench.payload import InputSpec, sample_inputs
from surge.cli import main
from surge.errors import SurgeError

URL = "http://127.0.0.1:9"  # nothing listens: a check that lets the run start fails later
METADATA = {"name": "m", "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 784]}]}


def refused(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.replace("\n", "")


@pytest.fixture
def metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loadgen, "fetch_metadata", lambda *_a, **_k: METADATA)
    monkeypatch.setattr(loadgen, "fetch_max_batch", lambda *_a, **_k: 64)


def test_json_path_in_a_missing_directory_or_a_directory_is_refused_before_the_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nodir" / "r.json"
    assert "does not exist" in refused(capsys, URL, "--model", "m", "--json", str(missing))
    assert "is a directory" in refused(capsys, URL, "--model", "m", "--json", str(tmp_path))


@pytest.mark.parametrize(("args", "message"), [
    (["--rate", "10", "--concurrency", "1,2,3"], "give --rate or --concurrency, not both"),
    (["--rate", "10", "--concurrency", "4"], "give --rate or --concurrency, not both"),
    (["--poisson"], "--poisson needs --rate"),
    (["--rate", "100000000"], "--rate '100000000' is more than"),
    # 100 million clients: 2.4 GB within 15 s, and still no request sent
    (["--concurrency", "1,100000000"], "--concurrency '1,100000000': at most 10,000 clients"),
])
def test_load_shape_conflicts_are_refused(args: list[str], message: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert message in refused(capsys, URL, "--model", "m", *args)


def test_an_unparsable_url_and_a_model_name_that_is_not_utf8_are_refused(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert "'http://[::1' is not a valid URL" in refused(capsys, "http://[::1", "--model", "m")
    assert "--model '\\udcff' is not valid UTF-8" in refused(capsys, URL, "--model", "\udcff")
    assert "is not a model name" in refused(capsys, URL, "--model", "a/b")


@pytest.mark.parametrize("metrics", ["notaurl", "http://127.0.0.1:9/metrics"])
def test_a_metrics_url_that_cannot_be_read_is_refused(
        metrics: str, capsys: pytest.CaptureFixture[str]) -> None:
    err = refused(capsys, URL, "--model", "m", "--metrics-url", metrics)
    assert f"--metrics-url '{metrics}' cannot be read" in err


def test_a_batch_over_the_models_max_batch_is_refused(metadata: None) -> None:
    with pytest.raises(SurgeError, match="--batch-size 65 is larger than model 'm'.s max "
                                         "batch size 64"):
        prepare_target(URL, "m", "http", batch_size=65)


def test_a_batch_too_large_to_build_is_refused_before_building_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loadgen, "fetch_metadata", lambda *_a, **_k: METADATA)
    monkeypatch.setattr(loadgen, "fetch_max_batch", lambda *_a, **_k: None)  # not said

    def never(*_a: Any, **_k: Any) -> None:
        raise AssertionError("payloads built")

    monkeypatch.setattr(loadgen, "sample_inputs", never)
    with pytest.raises(SurgeError, match="--batch-size 1000000: a request would carry"):
        prepare_target(URL, "m", "http", batch_size=1_000_000)


def test_cli_refuses_an_unknown_dataset(metadata: None,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    err = refused(capsys, URL, "--model", "m", "--duration", "100ms", "--data", "nosuch")
    assert "--data 'nosuch'" in err


def test_a_dataset_of_the_wrong_dtype_is_an_error_only_when_named(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rows = {"x": np.zeros((64, 784), dtype=np.uint8)}
    monkeypatch.setattr(payload, "dataset_inputs", lambda *_a, **_k: dict(rows))
    specs = [InputSpec("x", "FP32", (-1, 784))]
    with pytest.raises(SurgeError, match="--data 'pixels' input 'x' is uint8, not .* FP32"):
        sample_inputs(specs, dataset="pixels", strict_dataset=True)
    lenient = sample_inputs(specs, dataset="pixels")  # `surge tune`'s config default
    assert lenient[0]["x"].dtype == np.float32


class _Instant:
    def __init__(self) -> None:
        self.first: float | None = None

    async def send(self, payload: bytes) -> str:
        if self.first is None:
            self.first = time.perf_counter()
        return "ok"

    async def close(self) -> None:
        pass


def test_an_open_loop_behind_its_schedule_lets_requests_run_and_ends() -> None:
    transport, tally = _Instant(), _Tally()
    until = time.perf_counter() + 0.05

    async def drive() -> None:
        await _open_loop(transport, [b"x"], 1_000_000.0, False, until, tally, 5.0)

    asyncio.run(drive())
    assert tally.sent > 0
    assert transport.first is not None
    assert transport.first < until  # sent while still scheduling


UNBATCHED = {"name": "m", "inputs": [{"name": "x", "datatype": "FP32", "shape": [784]}]}


@pytest.mark.parametrize(("metadata_", "max_batch"), [
    (UNBATCHED, None),  # the shapes say so; the server does not give its config
    (METADATA, 0),  # the config says so, whatever the leading -1 of a shape means
])
def test_a_batch_for_a_model_without_a_batch_dimension_is_refused(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        metadata_: dict[str, Any], max_batch: int | None) -> None:
    monkeypatch.setattr(loadgen, "fetch_metadata", lambda *_a, **_k: metadata_)
    monkeypatch.setattr(loadgen, "fetch_max_batch", lambda *_a, **_k: max_batch)
    err = refused(capsys, URL, "--model", "m", "--duration", "100ms", "--concurrency", "1",
                  "--batch-size", "4")
    assert "--batch-size 4: model 'm' has no batch dimension" in err


def test_batch_size_one_on_a_model_without_a_batch_dimension_is_sent(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loadgen, "fetch_metadata", lambda *_a, **_k: UNBATCHED)
    monkeypatch.setattr(loadgen, "fetch_max_batch", lambda *_a, **_k: 0)
    target = prepare_target(URL, "m", "http-json", batch_size=1, variants=1)
    assert b'"shape":[784]' in target.payloads[0]


def test_run_bench_refuses_more_clients_than_it_can_run() -> None:
    with pytest.raises(SurgeError, match=r"concurrency \[1, 10001\]: give integers from 1 to "
                                         "10,000"):
        loadgen.run_bench(URL, "m", [1, 10_001], 1.0)


@pytest.mark.parametrize(("url", "model", "kwargs", "message"), [
    (URL, "m", {"concurrency": "4"}, "concurrency '4': give integers"),
    (URL, "m", {"concurrency": True}, "concurrency True: give integers"),
    (URL, "m", {"concurrency": 2.5}, "concurrency 2.5: give integers"),
    (URL, "m", {"duration_s": float("nan")}, "duration nan: give a positive, finite"),
    (URL, "m", {"duration_s": float("inf")}, "duration inf: give a positive, finite"),
    (URL, "m", {"rate": float("nan")}, "rate nan: give requests per second"),
    (URL, "m", {"batch_size": 0}, "--batch-size 0: give a positive number"),
    (URL, "m", {"warmup_s": -1}, "warmup_s -1: give a finite number"),
    (None, "m", {}, "URL None: give the server's address as a string"),
    (URL, None, {}, "--model None: give the model's name as a string"),
    ("127.0.0.1:9", "m", {}, "URL '127.0.0.1:9': begin it with http:// or https://, e.g. "
                             "http://127.0.0.1:9"),
    ("localhost:9", "m", {}, "begin it with http:// or https://, e.g. http://localhost:9"),
])
def test_run_bench_refuses_what_surge_bench_refuses(url: Any, model: Any, kwargs: dict[str, Any],
                                                    message: str) -> None:
    """A value of the wrong type or out of range failed deep inside (a TypeError, a
    ZeroDivisionError), ran forever (an infinite duration), or was taken as something else
    (True as one client); a URL without a scheme passed the check and failed on the request."""
    kwargs = {"concurrency": 1, "duration_s": 0.1, **kwargs}
    with pytest.raises(SurgeError) as error:
        loadgen.run_bench(url, model, **kwargs)
    assert message in str(error.value)


class _StallsOnce:
    """Answers at once, but its first send holds the event loop for `stall_s`."""

    def __init__(self, stall_s: float) -> None:
        self.stall_s, self.stalled = stall_s, False

    async def send(self, payload: bytes) -> str:
        if not self.stalled:
            self.stalled = True
            time.sleep(self.stall_s)  # the client falls behind its schedule
        return "ok"

    async def close(self) -> None:
        pass


def test_open_loop_latency_counts_from_the_schedule_not_the_late_send() -> None:
    tally = _Tally()
    until = time.perf_counter() + 0.2

    async def drive() -> None:
        await _open_loop(_StallsOnce(0.08), [b"x"], 1000.0, False, until, tally, 5.0)

    asyncio.run(drive())
    # The requests due during the 80 ms stall went late; timed from their late send they
    # would all look instant (coordinated omission).
    assert tally.sent_late >= 40
    assert sum(latency >= 0.01 for latency in tally.latencies) >= 30
