"""`surge serve --ray` refuses what cannot work with one clear line and exit code 2."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
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


def test_port_out_of_range(cluster_repo: Path) -> None:
    # Not taken modulo 65536 (which joined whatever cluster listened there).
    line = one_line_error(serve(cluster_repo, "127.0.0.1:70000"))
    assert "--ray '127.0.0.1:70000': port 70000 is not in 1-65535" in line


def test_a_port_where_no_gcs_answers(cluster_repo: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # listens, never answers
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        line = one_line_error(serve(cluster_repo, address))
    assert f"{address} does not answer as a Ray cluster's GCS" in line
    assert time.monotonic() - started < 20  # Ray alone waits 40 s, then says "timed out"


def test_token_mode_without_a_token(cluster_repo: Path, ray_cluster: object,
                                    tmp_path: Path) -> None:
    # Ray's C++ client aborts the process here (exit 1, its message hidden) without the check.
    address = ray_cluster.address  # type: ignore[attr-defined]
    missing = tmp_path / "no-token"
    line = one_line_error(serve(cluster_repo, address, RAY_AUTH_TOKEN="",
                                RAY_AUTH_TOKEN_PATH=str(missing)))
    assert f"RAY_AUTH_TOKEN_PATH '{missing}' cannot be read or is empty" in line


def test_auto_with_a_mismatched_token(cluster_repo: Path, ray_cluster: object) -> None:
    address = ray_cluster.address  # type: ignore[attr-defined]
    started = time.monotonic()
    line = one_line_error(serve(cluster_repo, "auto", RAY_ADDRESS=address,
                                RAY_AUTH_TOKEN="not-" + "1" * 28))
    assert f"the Ray cluster at {address} refused this front end's token" in line
    assert time.monotonic() - started < 20  # Ray alone retries for about 20 s


def test_a_misspelt_auth_mode(cluster_repo: Path, ray_cluster: object) -> None:
    # Ray took it for "disabled": the cluster then refused the right token as a wrong one.
    address = ray_cluster.address  # type: ignore[attr-defined]
    line = one_line_error(serve(cluster_repo, address, RAY_AUTH_MODE="tokn"))
    assert "RAY_AUTH_MODE 'tokn' is not a mode Ray knows (token or disabled)" in line
