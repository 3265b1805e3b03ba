"""`surge bench` against a server that stops answering: the warm-up says so in one line, the
levels measured before are kept, the last answers are waited for a grace that follows the run,
and a tune trial whose server hung loses without ending the tune. Then the folder a `surge data`
builder writes its splits into."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from surge.bench import BenchRun, loadgen, run_bench
from surge.bench.loadgen import NoAnswerError, grace_s, run_level
from surge.datafiles import refuse_foreign_files
from surge.errors import ConfigError, SurgeError
from surge.tuning import serving as tuning_serving
from tests.cli_runner import run_cli


class _Silent:
    """A server that takes every request and never answers."""

    async def send(self, payload: bytes) -> str:
        await asyncio.Event().wait()
        return "ok"

    async def close(self) -> None:
        pass


class _Slow:
    """A server that answers every request, each after `seconds`."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    async def send(self, payload: bytes) -> str:
        await asyncio.sleep(self.seconds)
        return "ok"

    async def close(self) -> None:
        pass


def test_the_grace_for_the_last_answers_follows_the_run() -> None:
    """Every run waited 30 s for its last answers: a 1 s bench of a server that never answered
    lasted 62 s (warm-up and level)."""
    assert grace_s(1.0) == loadgen.MIN_GRACE_S == 5.0
    assert grace_s(12.0) == 12.0
    assert grace_s(600.0) == loadgen.GRACE_S == 30.0


def test_a_warm_up_without_any_answer_stops_the_level(monkeypatch: pytest.MonkeyPatch) -> None:
    """It went on to the measured run, which timed out in its turn."""
    monkeypatch.setattr(loadgen, "MIN_GRACE_S", 0.1)
    with pytest.raises(NoAnswerError, match=r"no answer to any of the 2 warm-up request\(s\) "
                                            r"within 0\.15 s \(0\.05 s of warm-up \+ 0\.1 s\)"):
        asyncio.run(run_level(_Silent(), [b"x"], concurrency=2, duration_s=0.05,
                              warmup_s=0.05))


def test_a_slow_server_that_answers_is_still_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    """Answers after the run's end, within its grace, count; the warm-up lets them through."""
    monkeypatch.setattr(loadgen, "MIN_GRACE_S", 2.0)
    run = asyncio.run(run_level(_Slow(0.3), [b"x"], concurrency=2, duration_s=0.05,
                                warmup_s=0.05))
    assert (run.requests, run.ok, run.errors) == (2, 2, {})
    assert run.p50_ms >= 300


def _run(concurrency: int) -> BenchRun:
    return BenchRun(concurrency=concurrency, rate=None, duration_s=1.0, requests=40, ok=40,
                    throughput=40.0, p50_ms=2.0, p90_ms=3.0, p99_ms=4.0, max_ms=5.0, errors={},
                    client_cpu_s=0.1, client_cpu_share=0.1)


def test_a_server_that_stops_answering_keeps_the_levels_measured_before(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The error line came alone: the first level's figures were lost."""
    def hangs_at_the_second(*_args: Any, on_run: Any = None, **_kwargs: Any) -> None:
        on_run(_run(16))
        raise NoAnswerError("http://h:1: model 'm' accepts requests but answers none")

    monkeypatch.setattr("surge.bench.run_bench", hangs_at_the_second)
    code, out, err = run_cli(["bench", "http://127.0.0.1:9", "--model", "m", "--concurrency",
                              "16,64", "--duration", "1s"], capsys)
    assert code == 2
    assert "accepts requests but answers none" in err
    assert "40.0" in out
    assert "stopped: 1 load level(s) measured to the end" in out


def test_a_tune_trial_that_never_answers_loses_and_the_tune_goes_on(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A configuration whose server hung ended the whole tune with the bench's error."""
    @contextlib.contextmanager
    def served(*_args: Any) -> Iterator[Any]:
        yield type("Server", (), {"url": "http://127.0.0.1:9", "startup_s": 1.0})

    def silent(*_args: Any, **_kwargs: Any) -> None:
        raise NoAnswerError("http://127.0.0.1:9: model 'm' accepts requests but answers none")

    monkeypatch.setattr(tuning_serving, "stage_model", lambda *_a: tmp_path)
    monkeypatch.setattr(tuning_serving, "serving", served)
    monkeypatch.setattr(tuning_serving, "_payload_dataset", lambda _p: None)
    monkeypatch.setattr("surge.bench.run_bench", silent)
    (tmp_path / "m").mkdir()
    with pytest.raises(tuning_serving.ServingTrialError, match="answers none"):
        tuning_serving.measure_served(tmp_path / "m", None, _Load(), 1.0)  # type: ignore[arg-type]


class _Load:
    concurrency, rate, rows = 4, None, 1





def test_a_duration_too_short_to_send_a_request_is_refused(
        capsys: pytest.CaptureFixture[str]) -> None:
    """1 us sent no request and printed a level of 0.0 req/s, as if it were measured."""
    code, _, err = run_cli(["bench", "http://127.0.0.1:9", "--model", "m", "--duration",
                            "0.001ms"], capsys)
    assert code == 2
    assert "--duration '0.001ms' is shorter than 10 ms" in err


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_an_api_key_no_header_can_carry_is_named(protocol: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """It came out as "cannot reach" the server (HTTP) or the server's INTERNAL error (gRPC)."""
    code, _, err = run_cli(["bench", "127.0.0.1:9" if protocol == "grpc" else
                            "http://127.0.0.1:9", "--model", "m", "--protocol", protocol,
                            "--api-key", "key\r\nX-Other: 1"],
                           capsys)
    assert code == 2
    assert "--api-key holds '\\r' at position 4, which a request header cannot carry" in err


# -- the folder a `surge data` builder writes into ----------------------------------------------
SPLITS = frozenset({"images.npy", "annotations.json"})
OUTPUTS = {"train": SPLITS, "test": SPLITS, "test.npz": None, "calib.npy": None}


def _previous_output(folder: Path) -> None:
    for split in ("train", "test"):
        (folder / split).mkdir(parents=True)
        for name in SPLITS:
            (folder / split / name).write_bytes(b"")
    (folder / "test.npz").write_bytes(b"")


def test_a_new_empty_or_previously_written_folder_is_written_into(tmp_path: Path) -> None:
    refuse_foreign_files(tmp_path / "new", OUTPUTS)
    refuse_foreign_files(tmp_path, OUTPUTS)
    _previous_output(tmp_path)
    refuse_foreign_files(tmp_path, OUTPUTS)


@pytest.mark.parametrize(("stray", "named"), [
    ("notes.txt", "notes.txt"),  # another file beside the splits
    ("train/labels.csv", "train/labels.csv"),  # read with the split it sits in
    ("test.npz/", "test.npz"),  # a folder where a file goes
])
def test_a_folder_holding_other_files_is_refused_by_name(tmp_path: Path, stray: str,
                                                          named: str) -> None:
    """The splits were written beside whatever the folder held."""
    _previous_output(tmp_path)
    path = tmp_path / stray.rstrip("/")
    if stray.endswith("/"):
        path.unlink()
        path.mkdir()
    else:
        path.write_text("mine")
    with pytest.raises(ConfigError, match=rf"OUT '{tmp_path}' holds files this command does not "
                                          rf"write \({named}\): name an empty or new folder"):
        refuse_foreign_files(tmp_path, OUTPUTS)


def test_the_python_api_names_the_api_key_too() -> None:
    with pytest.raises(SurgeError, match=r"--api-key holds '\\n' at position 2"):
        run_bench("http://127.0.0.1:9", "m", 1, 0.1, api_key="a\nb")


def test_an_npy_header_claiming_exabytes_is_refused(tmp_path: Path) -> None:
    # numpy allocated what the header claims first: a MemoryError traceback, exit 1
    from surge.datafiles import load_npy

    path = tmp_path / "huge.npy"
    with path.open("wb") as file:
        np.lib.format.write_array_header_1_0(
            file, {"descr": "<f4", "fortran_order": False, "shape": (2**30, 2**30)})
        file.write(b"\0" * 64)
    with pytest.raises(ConfigError, match="header claims an array larger than this machine's"):
        load_npy(path, "--input")
