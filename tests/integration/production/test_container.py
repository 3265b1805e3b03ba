"""The container image and the Kubernetes example: checked as files everywhere, built and run
when a Docker daemon is available."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from surge.server.openapi import openapi_document
from surge.server.process import ServeOptions

ROOT = Path(__file__).resolve().parents[3]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
MANIFESTS = list(yaml.safe_load_all((ROOT / "deploy" / "kubernetes.yaml").read_text()))


def test_dockerfile_installs_as_setup_does_and_runs_unprivileged() -> None:
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    pin = re.search(r"torch==[\d.]+", setup)
    assert pin is not None
    assert f"pip install --index-url \"${{TORCH_INDEX}}\" {pin.group()}" in DOCKERFILE
    assert pin.group() in (ROOT / "pyproject.toml").read_text()
    user = re.findall(r"^USER (\S+)", DOCKERFILE, re.MULTILINE)
    assert user
    assert not user[-1].startswith(("root", "0:", "0"))
    assert 'ENTRYPOINT ["surge", "serve", "/models"' in DOCKERFILE
    check = (ROOT / "deploy" / "healthcheck.py").read_text()
    assert "/v2/health/ready" in check
    assert "/v2/health/ready" in openapi_document()["paths"]


def test_kubernetes_example_probes_health_and_scrapes_metrics() -> None:
    deployment = next(m for m in MANIFESTS if m["kind"] == "Deployment")
    service = next(m for m in MANIFESTS if m["kind"] == "Service")
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    defaults = ServeOptions()
    assert ports == {"http": defaults.http_port, "grpc": defaults.grpc_port,
                     "metrics": defaults.metrics_port}
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == defaults.metrics_port
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["terminationGracePeriodSeconds"] > float(
        container["args"][container["args"].index("--grace") + 1])
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports)
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def _docker_reason() -> str | None:
    if shutil.which("docker") is None:
        return "no docker client"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, check=False,
                          timeout=30)
    if info.returncode != 0:
        return "no Docker daemon: " + (info.stderr.strip().splitlines() or ["docker info failed"])[-1]
    return None


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_image_builds_serves_and_is_healthy(tmp_path: Path) -> None:
    reason = _docker_reason()
    if reason is not None:
        pytest.skip(reason)
    tag = f"surge-test:{uuid.uuid4().hex[:8]}"
    subprocess.run(["docker", "build", "-t", tag, str(ROOT)], check=True, timeout=1700)
    name = f"surge-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["docker", "run", "-d", "--name", name, "-p", "127.0.0.1::8000",
                    "-v", f"{ROOT / 'examples' / 'repository'}:/models:ro", tag, "--models",
                    "fashion"], check=True, timeout=60)
    try:
        port = subprocess.run(["docker", "port", name, "8000"], capture_output=True, text=True,
                              check=True).stdout.split(":")[-1].strip()
        deadline = time.monotonic() + 300
        while _health(name) != "healthy":
            assert time.monotonic() < deadline, "container never became healthy"
            time.sleep(2)
        assert httpx.get(f"http://127.0.0.1:{port}/v2/models/fashion").status_code == 200
        uid = subprocess.run(["docker", "exec", name, "id", "-u"], capture_output=True,
                             text=True, check=True).stdout.strip()
        assert uid != "0"
    finally:
        subprocess.run(["docker", "rm", "-f", name], check=False, timeout=60)
        subprocess.run(["docker", "rmi", "-f", tag], check=False, timeout=60)


def _health(name: str) -> str:
    return subprocess.run(["docker", "inspect", "-f", "{{.State.Health.Status}}", name],
                          capture_output=True, text=True, check=False).stdout.strip()
