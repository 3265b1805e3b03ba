"""A real `surge serve` process on loopback, on free ports, for each group of tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.integration.server.models import make_repository

from surge.server.process import read_endpoints

HERE = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def _no_severity_filters_left() -> Iterator[None]:
    """The logging extension's tests apply settings in this process: its severity filter goes
    onto every root handler, pytest's own capture handlers included, which outlive the test
    (a later test's `caplog` then saw nothing). Taken off every handler and uvicorn's loggers
    after each test."""
    yield
    from surge.server.log_settings import drop_severity_filters

    drop_severity_filters()
ROOT = HERE.parents[2]
TRITON_PYTHON = ROOT / ".venv-triton" / "bin" / "python"
API_KEY = "test-key"


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    http: str
    grpc: str
    metrics: str
    log: Path
    handle: Any

    @property
    def grpc_port(self) -> int:
        return int(self.grpc.rsplit(":", 1)[1])

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        try:
            return stop_process(self.process, sig, timeout)
        finally:
            self.handle.close()

    def worker_pids(self) -> list[int]:
        return worker_pids(self.process)


def stop_process(process: subprocess.Popen[bytes], sig: int, timeout: float) -> int:
    """Signal the server and wait for its exit code; kill it if it does not exit in time."""
    if process.poll() is None:
        process.send_signal(sig)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
        raise


def worker_pids(process: subprocess.Popen[bytes]) -> list[int]:
    """Worker processes: the server's children other than multiprocessing's tracker."""
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    return [int(pid) for pid in children.read_text().split()
            if b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()]


def start_server(repo: Path, log: Path, *args: str, api_key: str | None = None,
                 timeout: float = 120.0) -> ServerProcess:
    """`surge serve` on ports the system chooses (0), read back from its endpoints file."""
    endpoints = log.with_name(log.name + ".endpoints.json")
    env = dict(os.environ, PYTHONPATH=str(HERE), SURGE_DEBUG="1")
    command = [sys.executable, "-c", "from surge.cli import main; main()", "serve", str(repo),
               "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0",
               "--endpoints-file", str(endpoints), *args]
    if api_key:
        command += ["--api-key", api_key]
    handle = log.open("wb")
    process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
    server = ServerProcess(process, "", "", "", log, handle)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.output()}")
        bound = read_endpoints(endpoints)
        if bound is not None:
            server.http, server.grpc, server.metrics = bound.http, bound.grpc, bound.metrics
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{server.http}/v2/health/ready", timeout=1.0).status_code == 200:
                    return server
        time.sleep(0.2)
    server.stop(signal.SIGKILL)
    raise RuntimeError(f"server not ready after {timeout} s:\n{server.output()}")


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repository(tmp_path_factory.mktemp("repo"), with_slow=False)


@pytest.fixture(scope="session")
def server(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The tiny model behind an API key, with a 1 MiB body limit (one for the whole session)."""
    log = tmp_path_factory.mktemp("log") / "server.log"
    proc = start_server(tiny_repo, log, "--max-body-mb", "1", api_key=API_KEY)
    yield proc
    assert proc.stop() == 0, proc.output()


def client_results(script: str, served: ServerProcess, key: str = API_KEY) -> dict:
    """The JSON a client script of `clients/` prints after its calls to `served`'s HTTP and
    gRPC ports, with the tiny model and `key`."""
    result = triton_client(str(Path(__file__).parent / "clients" / script),
                           served.http.removeprefix("http://"), served.grpc, "tiny", key)
    assert result.returncode == 0, result.stderr[-3000:] + served.output()[-2000:]
    return dict(json.loads(result.stdout))


def triton_client(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run a client script with tritonclient's own venv (it needs numpy < 2)."""
    if not TRITON_PYTHON.exists():
        pytest.skip("tritonclient venv .venv-triton is missing (run scripts/setup.sh)")
    return subprocess.run([str(TRITON_PYTHON), *args], capture_output=True, text=True,
                          timeout=timeout, check=False)
