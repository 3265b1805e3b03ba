"""A `surge serve` process with production options (TLS, keys, logs, polling) on free ports."""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from tests.integration.production.certs import Pair, issue, make_ca
from tests.integration.server.conftest import HERE as SERVER_TESTS
from tests.integration.server.conftest import stop_process, worker_pids
from tests.integration.server.models import make_repository

from surge.server.process import read_endpoints


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    http: str
    grpc: str
    metrics: str
    log: Path
    verify: ssl.SSLContext | bool = True

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.http, verify=self.verify, timeout=30.0, **kwargs)  # type: ignore[arg-type]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        return stop_process(self.process, sig, timeout)

    def worker_pids(self) -> list[int]:
        return worker_pids(self.process)


def serve_command(repo: Path, *args: str) -> list[str]:
    """`surge serve` on ports the system chooses (0)."""
    return [sys.executable, "-c", "from surge.cli import main; main()", "serve", str(repo),
            "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", *args]


def launch(repo: Path, log: Path, *args: str, ca: Path | None = None,
           client_cert: Pair | None = None, prefix: tuple[str, ...] = (),
           timeout: float = 120.0) -> Served:
    """Start the server and wait until /v2/health/ready answers 200 (over HTTPS with `ca`)."""
    endpoints = log.with_name(log.name + ".endpoints.json")
    env = dict(os.environ, PYTHONPATH=str(SERVER_TESTS), SURGE_DEBUG="1")
    verify: ssl.SSLContext | bool = True
    if ca is not None:
        verify = ssl.create_default_context(cafile=str(ca))
        if client_cert is not None:
            verify.load_cert_chain(str(client_cert.cert), str(client_cert.key))
    command = serve_command(repo, "--endpoints-file", str(endpoints), *args)
    with log.open("wb") as handle:
        process = subprocess.Popen([*prefix, *command], stdout=handle, stderr=subprocess.STDOUT,
                                   env=env)
    served = Served(process, "", "", "", log, verify)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{served.output()}")
        bound = read_endpoints(endpoints)
        if bound is not None:
            served.http, served.grpc, served.metrics = bound.http, bound.grpc, bound.metrics
            with contextlib.suppress(httpx.HTTPError):
                answer = httpx.get(f"{served.http}/v2/health/ready", timeout=1.0, verify=verify)
                if answer.status_code == 200:
                    return served
        time.sleep(0.2)
    served.stop(signal.SIGKILL)
    raise RuntimeError(f"server not ready after {timeout} s:\n{served.output()}")


@dataclass(frozen=True)
class Pki:
    ca: Pair
    server: Pair
    client: Pair
    folder: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca, ca_key = make_ca(folder)
    return Pki(ca, issue(folder, ca, ca_key, "server"), issue(folder, ca, ca_key, "client",
                                                             client=True), folder)


@pytest.fixture(scope="module")
def explicit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A module's own server of the test repository, models changed by the load API only."""
    root = tmp_path_factory.mktemp("explicit")
    served = launch(make_repository(root / "repo", with_slow=False), root / "server.log")
    yield served
    assert served.stop() == 0, served.output()
