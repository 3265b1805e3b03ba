"""SIGTERM at awkward moments of the long commands: they unwind, clean up and say what they
measured, with exit code 143 and no traceback."""

from __future__ import annotations

import contextlib
import gc
import logging
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from surge.bench import clients, loadgen
from tests.cli_runner import run_cli

TERMINATED = 128 + signal.SIGTERM


class _TerminatedError(Exception):
    """What this test's own SIGTERM handler raises where no command handles the signal."""


@pytest.fixture
def sigterm_guard() -> Iterator[object]:
    """A SIGTERM handler of the test's own, so that code that does not handle SIGTERM fails
    the test instead of killing pytest; restored afterwards."""
    def guard(signum: int, frame: object) -> None:
        raise _TerminatedError

    previous = signal.signal(signal.SIGTERM, guard)
    yield guard
    signal.signal(signal.SIGTERM, previous)


def _answer(conn: socket.socket) -> None:
    """Answer every HTTP request on `conn` with an empty 200."""
    buffered = b""
    with contextlib.suppress(OSError), conn:
        while data := conn.recv(65536):
            buffered += data
            while b"\r\n\r\n" in buffered:
                _, buffered = buffered.split(b"\r\n\r\n", 1)
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")


@pytest.fixture
def http_server() -> Iterator[int]:
    """A loopback server that answers 200 to everything; its port."""
    listener = socket.create_server(("127.0.0.1", 0))

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                threading.Thread(target=_answer, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield listener.getsockname()[1]
    listener.close()


@pytest.fixture
def fake_target(http_server: int, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The load generator aimed at `http_server` with no metadata to fetch and no warm-up;
    returns the load levels as they start."""
    payload = b"POST /v2/models/m/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n"
    target = loadgen.Target("http", [payload],
                            lambda _c: clients.HttpTransport("127.0.0.1", http_server))
    monkeypatch.setattr(loadgen, "prepare_target", lambda *_a, **_k: target)
    started: list[int] = []
    run_level = loadgen.run_level

    async def level(transport: Any, payloads: list[bytes], **options: Any) -> Any:
        started.append(options["concurrency"])
        return await run_level(transport, payloads, **{**options, "warmup_s": 0.0})

    monkeypatch.setattr(loadgen, "run_level", level)
    return started


def _sigterm_in_data_received(monkeypatch: pytest.MonkeyPatch, when: Any) -> None:
    """SIGTERM raised inside a connection's `data_received` (a uvloop transport callback),
    once `when()` holds: where a handler that raises used to land about 1 run in 10."""
    received = clients._HttpConnection.data_received
    sent: list[bool] = []

    def data_received(self: clients._HttpConnection, data: bytes) -> None:
        if not sent and when():
            sent.append(True)
            signal.raise_signal(signal.SIGTERM)  # delivered to this thread, now
        received(self, data)

    monkeypatch.setattr(clients._HttpConnection, "data_received", data_received)


def _no_loop_errors(err: str, caplog: pytest.LogCaptureFixture) -> None:
    gc.collect()  # "Task exception was never retrieved" is said when the task is collected
    assert "Traceback" not in err
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_sigterm_in_a_transport_callback_ends_bench_with_its_measured_levels(
        fake_target: list[int], sigterm_guard: object, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    """SIGTERM killed `surge bench` printing nothing of the levels it had measured (Ctrl-C
    printed them); and where a handler raised SystemExit, raising it inside uvloop's
    `data_received` printed "Fatal error on transport" and "Task exception was never
    retrieved" tracebacks. Now the loop's main task is cancelled and the bench ends as Ctrl-C
    ends it, with 143."""
    _sigterm_in_data_received(monkeypatch, lambda: fake_target[-1:] == [2])
    code, out, err = run_cli(["bench", "http://127.0.0.1:9", "--model", "m",
                              "--concurrency", "1,2,4", "--duration", "0.2s"], capsys)
    assert code == TERMINATED
    assert fake_target == [1, 2]  # level 4 never started
    assert "terminated: 1 load level(s) measured to the end" in out
    _no_loop_errors(err, caplog)
    assert signal.getsignal(signal.SIGTERM) is sigterm_guard  # handed back


def test_sigterm_in_a_tune_trial_stops_its_server_and_removes_its_stage(
        fake_target: list[int], sigterm_guard: object, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    """A tune's served trial runs the load generator's loop: SIGTERM there raised SystemExit
    inside a transport callback (tracebacks of the loop's own); now the trial unwinds, its
    server is stopped, its staged repository removed, and the tune exits with 143."""
    import tempfile

    from surge.commands import exit_on_sigterm
    from surge.tuning import serving
    from surge.tuning.space import Candidate, Load

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    staged: list[Path] = []
    stopped: list[bool] = []

    def stage(_model_dir: Path, _candidate: object, _slo: object, root: Path) -> Path:
        staged.append(root)
        return root

    @contextlib.contextmanager
    def server(repo: Path, model: str) -> Iterator[serving.RunningServer]:
        try:
            yield serving.RunningServer("http://127.0.0.1:9", None, 0.0)  # type: ignore[arg-type]
        finally:
            stopped.append(True)

    monkeypatch.setattr(serving, "stage_model", stage)
    monkeypatch.setattr(serving, "serving", server)
    monkeypatch.setattr(serving, "_payload_dataset", lambda _dir: None)
    _sigterm_in_data_received(monkeypatch, lambda: True)
    with pytest.raises(SystemExit) as exit_info, exit_on_sigterm():
        serving.measure_served(tmp_path / "m", Candidate("original", 1, 0.0, 1, 1),
                               Load(concurrency=2), 5.0, warmup_s=0.0)
    assert exit_info.value.code == TERMINATED
    assert stopped == [True]
    assert staged
    assert not staged[0].exists()
    _no_loop_errors(capsys.readouterr().err, caplog)


def test_a_bench_report_cut_short_mid_write_leaves_the_previous_one_whole(
        fake_target: list[int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """--json was written in place: a full disk (or a stop) mid-write left half a report at
    the path, which the next reader took for a whole one."""
    import errno

    report = tmp_path / "bench.json"
    report.write_text('{"runs": []}')
    write_text = Path.write_text

    def half(self: Path, text: str, *args: Any, **kwargs: Any) -> int:
        write_text(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half)
    code, out, err = run_cli(["bench", "http://127.0.0.1:9", "--model", "m", "--concurrency",
                              "1", "--duration", "0.1s", "--json", str(report)], capsys)
    assert code == 2
    assert "cannot write the report" in " ".join(err.split())
    assert '"runs"' in out  # printed instead
    monkeypatch.undo()
    assert report.read_text() == '{"runs": []}'
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]


@pytest.mark.parametrize(("sizes", "refusal"), [
    ([1 << 10, 2 << 20], "b.bin has 2 MiB, more than the 1 MiB one request may carry"),
    ([800 << 10] * 3, "2 MiB in all, more than the 1 MiB a run holds"),
])
def test_bench_files_too_large_to_hold_are_refused_before_reading(
        sizes: list[int], refusal: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """--files read every file whole first: a folder with a large file (a video, a disk
    image) ended in MemoryError, or the kernel's OOM killer. The limits are lowered here so
    that the old code reads only a few MiB."""
    import os

    from surge.bench import payload

    monkeypatch.setattr(payload, "MAX_REQUEST_BYTES", 1 << 20)
    monkeypatch.setattr(payload, "MAX_FILES_BYTES", 1 << 20, raising=False)  # new in the fix
    folder = tmp_path / "files"
    folder.mkdir()
    for name, size in zip("abc", sizes, strict=False):
        with (folder / f"{name}.bin").open("wb") as file:
            os.truncate(file.fileno(), size)  # sparse: no disk used
    code, _, err = run_cli(["bench", "http://127.0.0.1:9", "--model", "m", "--files",
                            str(folder)], capsys)
    assert code == 2
    assert refusal in " ".join(err.split())
