"""`surge serve` on ports the system chooses (0), reported in `--endpoints-file`, and ports it
cannot have refused in one line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import httpx
import pytest
from tests.integration.server.conftest import HERE, ServerProcess, start_server

from surge.protocol.grpc_gen import grpc_service_pb2 as pb
from surge.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc


def serve(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(HERE))
    env.pop("SURGE_DEBUG", None)  # the user's one-line error, not the traceback
    return subprocess.run([sys.executable, "-c", "from surge.cli import main; main()", "serve",
                           str(repo), *args], capture_output=True, text=True, timeout=120,
                          env=env, check=False)


def test_the_endpoints_file_names_the_ports_the_system_chose(tiny_repo: Path,
                                                             tmp_path: Path) -> None:
    server: ServerProcess = start_server(tiny_repo, tmp_path / "server.log")  # all three 0
    try:
        written = json.loads((tmp_path / "server.log.endpoints.json").read_text())
        assert written == {"http": server.http, "grpc": server.grpc, "metrics": server.metrics}
        ports = {int(address.split(":")[-1].split("/")[0]) for address in written.values()}
        assert 0 not in ports
        assert len(ports) == 3
        assert httpx.get(f"{server.http}/v2/health/live", timeout=10).status_code == 200
        assert httpx.get(server.metrics, timeout=10).status_code == 200
        with grpc.insecure_channel(server.grpc) as channel:
            live = pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest(),
                                                                        timeout=10)
        assert live.live
    finally:
        assert server.stop() == 0, server.output()


@pytest.mark.parametrize("port", ["--http-port", "--grpc-port", "--metrics-port"])
def test_a_port_another_program_holds_is_refused_before_loading(tiny_repo: Path,
                                                                port: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        number = taken.getsockname()[1]
        ports = {"--http-port": "0", "--grpc-port": "0", "--metrics-port": "0"}
        ports[port] = str(number)
        result = serve(tiny_repo, *[part for pair in ports.items() for part in pair])
    assert result.returncode == 2, result.stdout + result.stderr
    # before any model loads (no worker started), in one line
    assert result.stderr.strip() == \
        f"error: cannot listen on 127.0.0.1:{number} (Address already in use)", result.stderr


@pytest.mark.parametrize(("where", "message"), [("absent/endpoints.json", "no directory"),
                                               (".", "is a directory")])
def test_an_endpoints_file_that_cannot_be_is_refused_before_loading(
        tiny_repo: Path, tmp_path: Path, where: str, message: str) -> None:
    target = tmp_path / where
    result = serve(tiny_repo, "--http-port", "0", "--endpoints-file", str(target))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().startswith(f"error: --endpoints-file {target}: {message}"), \
        result.stderr
