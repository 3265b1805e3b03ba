"""The soak at CI size (about 20 s): mixed models and protocols, clients hanging up, a worker
killed every 5 s, a model reloaded every 10 s. Every request is answered and the server
drains cleanly; benchmarks/soak.py --duration 1800 is the long version."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_short_soak_leaves_no_request_unanswered(tmp_path: Path) -> None:
    # 20 s with the faults twice as often as over the 40 s before: the same three worker kills
    # (at about 5, 10 and 15 s; a reload blocking the fault loop for seconds only moves the
    # third) and a reload (at 10 s), under about 17,000 requests from the four HTTP and two
    # gRPC clients (measured on a 2-core machine), so a single one left unanswered still fails
    # the test; 5 s windows, each of which must have had traffic.
    out = tmp_path / "soak.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--duration", "20", "--window",
         "5", "--kill-every", "5", "--reload-every", "10", "--json", str(out)],
        capture_output=True, text=True, timeout=220, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert report["unanswered"] == 0, report
    assert report["server_exit"] == 0
    assert report["kills"] >= 3
    assert report["reloads"] >= 1
    assert report["reload_failures"] == 0
    assert report["hung_up"] > 0
    # only the answers a killed worker or a restarting model gives
    assert set(report["errors"]) <= {"http_503", "grpc_UNAVAILABLE"}, report["errors"]
    assert all(window["requests"] > 0 for window in report["windows"])
