"""Chaos beside normal traffic: a stopped worker, a full /dev/shm, a model file corrupted before
a reload, slow clients holding connections. Normal clients get an answer every time."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from tests.integration.production.conftest import Served, launch
from tests.integration.production.test_reload import TINY, Traffic
from tests.integration.server.models import make_repository


def _metric(served: Served, name: str) -> float:
    for line in httpx.get(served.metrics).text.splitlines():
        if line.startswith(name):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _answered(traffic: Traffic) -> set[int]:
    return {status for status, _ in traffic.answers}


def test_stopped_worker_is_killed_and_replaced(tmp_path: Path) -> None:
    repo = make_repository(tmp_path / "repo", with_slow=False)
    (repo / "tiny" / "config.yaml").write_text(
        "max_batch_size: 8\ninstances: 2\nthreads: 1\nhang_min_ms: 300\n"
        "batching: {max_queue_delay_ms: 1.0}\n")
    served = launch(repo, tmp_path / "server.log")
    try:
        with Traffic(served.http, clients=3) as traffic:
            time.sleep(1.0)
            stopped = served.worker_pids()[0]
            os.kill(stopped, signal.SIGSTOP)
            deadline = time.monotonic() + 30
            while stopped in served.worker_pids() or len(served.worker_pids()) < 2:
                assert time.monotonic() < deadline, served.output()
                time.sleep(0.1)
            time.sleep(1.0)
        assert _answered(traffic) <= {200, 503}, traffic.answers  # 0 would be unanswered
        assert traffic.answers[(200, "1")] > 0
        assert _metric(served, 'surge_worker_hangs_total{model="tiny"}') >= 1
    finally:
        assert served.stop() == 0, served.output()


def _private_shm() -> tuple[str, ...]:
    """A command prefix giving the server its own 64 MiB /dev/shm, or skip."""
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs "
                            "/dev/shm"], capture_output=True, check=False)
    if probe.returncode != 0 or shutil.which("unshare") is None:
        pytest.skip("needs a private mount namespace (unshare -m, root) to fill /dev/shm safely")
    return ("unshare", "-m", "sh", "-c",
            'mount -t tmpfs -o size=64m tmpfs /dev/shm && exec "$0" "$@"')


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    with filler.open("wb") as handle, contextlib.suppress(OSError):
        while True:
            handle.write(b"\0" * (1 << 20))
            handle.flush()
    return filler


def test_full_shm_fails_the_reload_not_the_server(tmp_path: Path) -> None:
    prefix = _private_shm()
    repo = make_repository(tmp_path / "repo", with_slow=False)
    served = launch(repo, tmp_path / "server.log", prefix=prefix)
    try:
        # unshare and sh exec: the launched pid is the server, in its own mount namespace
        shm = Path(f"/proc/{served.process.pid}/root/dev/shm")
        filler = _fill(shm)
        with Traffic(served.http, clients=2) as traffic:
            answer = httpx.post(f"{served.http}/v2/repository/models/tiny/load", timeout=120)
            time.sleep(0.5)
        # The new instances cannot get their segments: the reload fails (before segments were
        # reserved with fallocate, the front end itself died of SIGBUS here).
        assert answer.status_code == 400, answer.text
        assert "failed to load" in answer.json()["error"]
        assert _answered(traffic) == {200}, traffic.answers
        filler.unlink()
        assert httpx.post(f"{served.http}/v2/repository/models/tiny/load",
                          timeout=120).status_code == 200
        assert httpx.post(f"{served.http}/v2/models/tiny/infer", json=TINY).status_code == 200
    finally:
        assert served.stop() == 0, served.output()


def test_corrupt_model_file_before_reload_keeps_the_old_instances(tmp_path: Path) -> None:
    repo = make_repository(tmp_path / "repo", with_slow=False)
    served = launch(repo, tmp_path / "server.log")
    model = repo / "tiny" / "1" / "model.onnx"
    good = model.read_bytes()
    try:
        with Traffic(served.http, clients=2) as traffic:
            model.write_bytes(good[: len(good) // 2])  # truncated, as by an interrupted copy
            answer = httpx.post(f"{served.http}/v2/repository/models/tiny/load", timeout=120)
            time.sleep(0.3)
        assert answer.status_code == 400
        assert "model.onnx" in answer.json()["error"]
        assert _answered(traffic) == {200}, traffic.answers
        model.write_bytes(good)
        assert httpx.post(f"{served.http}/v2/repository/models/tiny/load",
                          timeout=120).status_code == 200
    finally:
        assert served.stop() == 0, served.output()


def test_slow_clients_do_not_starve_normal_ones(tmp_path: Path) -> None:
    repo = make_repository(tmp_path / "repo", with_slow=False)
    served = launch(repo, tmp_path / "server.log", "--header-timeout", "2",
                    "--max-connections", "400")
    port = int(served.http.rsplit(":", 1)[1])
    slow: list[socket.socket] = []
    try:
        for _ in range(200):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\n")
            slow.append(sock)
        with Traffic(served.http, clients=3) as traffic:
            for _ in range(4):  # trickle a header byte per second, as slowloris does
                for sock in slow:
                    with contextlib.suppress(OSError):
                        sock.send(b"X")
                time.sleep(1.0)
        assert _answered(traffic) == {200}, traffic.answers
        assert sum(traffic.answers.values()) > 50
        closed = sum(1 for sock in slow if _closed(sock))
        assert closed == len(slow)  # each cut off at the header timeout
    finally:
        for sock in slow:
            sock.close()
        assert served.stop() == 0, served.output()


def _closed(sock: socket.socket) -> bool:
    """Whether the server has closed `sock` (reads to the end within 3 s)."""
    sock.settimeout(3.0)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True
