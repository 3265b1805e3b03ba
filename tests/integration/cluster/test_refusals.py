"""`surge serve --ray` refuses what cannot work with one clear line and exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from surge.server.sockets import unused_port

pytestmark = pytest.mark.timeout(120)


def serve(repo: Path, address: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "SURGE_DEBUG"}
    environment.update(env)
    command = [sys.executable, "-c", "from surge.cli import main; main()", "serve", str(repo),
               "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--ray", address]
    return subprocess.run(command, capture_output=True, text=True, timeout=90, env=environment,
                          check=False)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_unreachable_address(cluster_repo: Path) -> None:
    address = f"127.0.0.1:{unused_port()}"
    line = one_line_error(serve(cluster_repo, address))
    assert f"cannot reach the Ray cluster at {address}" in line


def test_client_address_is_refused(cluster_repo: Path) -> None:
    line = one_line_error(serve(cluster_repo, "ray://127.0.0.1:10001"))
    assert "a ray:// client cannot serve" in line


def test_mismatched_token(cluster_repo: Path, ray_cluster: object) -> None:
    address = ray_cluster.address  # type: ignore[attr-defined]
    line = one_line_error(serve(cluster_repo, address, RAY_AUTH_TOKEN="not-" + "1" * 28))
    assert f"the Ray cluster at {address} refused this front end's token" in line
    assert "RAY_AUTH_TOKEN" in line
