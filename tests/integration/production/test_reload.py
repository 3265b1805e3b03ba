"""Repository changes while serving: a new version switched to with no failed request, a
broken one reported while the old keeps serving, config overrides on load, and load/unload
cycles that leave memory and /dev/shm flat."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.integration.production.conftest import Served, launch
from tests.integration.server.conftest import triton_client
from tests.integration.server.models import make_repository

HERE = Path(__file__).resolve().parent
TINY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]},
                   {"name": "n", "datatype": "INT64", "shape": [1, 3], "data": [1, 2, 3]}]}


class Traffic:
    """Clients sending requests back to back; counts answers by (status, model version)."""

    def __init__(self, url: str, clients: int = 4) -> None:
        self.url, self.answers = url, Counter[tuple[int, str]]()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(clients)]
        self._lock = threading.Lock()

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _loop(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                try:
                    answer = client.post(f"{self.url}/v2/models/tiny/infer", json=TINY)
                    key = (answer.status_code, answer.json().get("model_version", ""))
                except httpx.HTTPError as exc:
                    key = (0, type(exc).__name__)
                with self._lock:
                    self.answers[key] += 1

    def versions_seen(self) -> set[str]:
        with self._lock:
            return {v for (s, v) in self.answers if s == 200}


@pytest.fixture
def polled(tmp_path: Path) -> Iterator[Served]:
    repo = make_repository(tmp_path / "repo", with_slow=False)
    served = launch(repo, tmp_path / "server.log", "--poll-interval", "0.3")
    yield served
    assert served.stop() == 0, served.output()


def _repo(served: Served) -> Path:
    args = Path(f"/proc/{served.process.pid}/cmdline").read_bytes().split(b"\0")
    return Path(args[args.index(b"serve") + 1].decode())


def _wait(condition: object, timeout: float, what: str, served: Served) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what}\n{served.output()}"
        time.sleep(0.1)


def _index(served: Served) -> list[dict]:
    return httpx.post(f"{served.http}/v2/repository/index").json()


def test_new_version_switches_with_no_failed_request(polled: Served) -> None:
    tiny = _repo(polled) / "tiny"
    with Traffic(polled.http) as traffic:
        _wait(lambda: traffic.versions_seen() == {"1"}, 30, "no answers", polled)
        staging = tiny.parent / ".staging"  # hidden: not a model, not a version
        shutil.copytree(tiny / "1", staging)
        staging.rename(tiny / "2")
        _wait(lambda: "2" in traffic.versions_seen(), 60, "version 2 never served", polled)
        time.sleep(0.5)
    assert set(traffic.answers) <= {(200, "1"), (200, "2")}, traffic.answers
    assert [(e["version"], e["state"]) for e in _index(polled)] == [("2", "READY")]


def test_broken_version_leaves_the_old_one_serving(polled: Served) -> None:
    tiny = _repo(polled) / "tiny"
    (tiny / "2").mkdir()
    (tiny / "2" / "model.onnx").write_bytes(b"corrupt: not an onnx model")
    with Traffic(polled.http, clients=2) as traffic:
        _wait(lambda: any(e["state"] == "UNAVAILABLE" for e in _index(polled)), 60,
              "the failure is not in the index", polled)
        time.sleep(0.5)
    assert set(traffic.answers) == {(200, "1")}, traffic.answers
    rows = {e["version"]: e for e in _index(polled)}
    assert rows["1"]["state"] == "READY"
    assert rows["2"]["state"] == "UNAVAILABLE"
    assert "model.onnx" in rows["2"]["reason"]
    metrics = httpx.get(polled.metrics).text
    assert 'surge_model_loads_total{model="tiny",outcome="failure"} 1.0' in metrics
    assert "reload failed, the served version stays" in polled.output()
    # load/unload requests are refused while the server follows the repository
    refused = httpx.post(f"{polled.http}/v2/repository/models/tiny/unload")
    assert refused.status_code == 400
    assert "--model-control poll" in refused.json()["error"]


def _instances(served: Served) -> int:
    config = httpx.get(f"{served.http}/v2/models/tiny/config").json()
    return int(config["instance_group"][0]["count"])


def test_load_takes_a_config_override(explicit: Served) -> None:
    override = {"parameters": {"config": json.dumps({"instances": 2})}}
    answer = httpx.post(f"{explicit.http}/v2/repository/models/tiny/load", json=override,
                        timeout=120)
    assert answer.status_code == 200, answer.text
    assert _instances(explicit) == 2
    assert len(explicit.worker_pids()) == 2
    # without a body the model is loaded as config.yaml says again
    assert httpx.post(f"{explicit.http}/v2/repository/models/tiny/load",
                      timeout=120).status_code == 200
    assert _instances(explicit) == 1


def test_load_can_move_the_instances_into_the_server(explicit: Served) -> None:
    """`placement: in-process` on load: the instances become threads of the server (no worker
    process), the answers stay the same; a load without a body brings the workers back."""
    before = httpx.post(f"{explicit.http}/v2/models/tiny/infer", json=TINY).json()
    override = {"parameters": {"config": json.dumps({"placement": "in-process"})}}
    answer = httpx.post(f"{explicit.http}/v2/repository/models/tiny/load", json=override,
                        timeout=120)
    assert answer.status_code == 200, answer.text
    assert explicit.worker_pids() == []
    assert httpx.post(f"{explicit.http}/v2/models/tiny/infer", json=TINY).json()["outputs"] == \
        before["outputs"]
    assert httpx.post(f"{explicit.http}/v2/repository/models/tiny/load",
                      timeout=120).status_code == 200
    assert len(explicit.worker_pids()) == 1


@pytest.mark.parametrize(("config", "message"), [
    ({"max_batch_size": 4}, "'max_batch_size' is read from config.yaml"),
    ({"placement": "cluster"}, "--ray"),
    ({"instanses": 2}, "unknown key 'instanses'"),
    ({"instances": 0}, "instances"),
    ("{not json", "not valid JSON"),
])
def test_bad_override_is_400_and_keeps_serving(explicit: Served, config: object,
                                               message: str) -> None:
    text = config if isinstance(config, str) else json.dumps(config)
    answer = httpx.post(f"{explicit.http}/v2/repository/models/tiny/load",
                        json={"parameters": {"config": text}}, timeout=120)
    assert answer.status_code == 400, answer.text
    assert message in answer.json()["error"]
    assert httpx.post(f"{explicit.http}/v2/models/tiny/infer", json=TINY).status_code == 200


def test_tritonclient_load_with_config_over_grpc(explicit: Served) -> None:
    result = triton_client(str(HERE / "clients" / "triton_load.py"), explicit.grpc)
    assert result.returncode == 0, result.stdout + result.stderr
    assert _instances(explicit) == 2
    httpx.post(f"{explicit.http}/v2/repository/models/tiny/load", timeout=120)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _segments(pid: int) -> list[str]:
    return sorted(p.name for p in Path("/dev/shm").iterdir() if p.name.startswith(f"surge-{pid}-"))


@pytest.mark.slow
def test_load_unload_cycles_leave_memory_and_shm_flat(explicit: Served) -> None:
    """10 measured cycles here (each starts a worker process, about a second);
    benchmarks/soak.py --cycles 200 runs the long version.

    Why 10 are enough: the shared-memory check is exact (one segment left behind by one cycle
    fails it). The front end's RSS is about 78 MiB here, so the 5 % tolerance is about 3.9 MiB:
    a leak of about 400 KiB or more per load/unload cycle (0.5 % of RSS) fails over 10 cycles,
    while what a cycle really adds measured about 5 KiB (112 KiB over 20 cycles after warm-up;
    the first cycles add no more than the later ones, so a short warm-up does)."""
    url, pid = explicit.http, explicit.process.pid
    warmup, cycles = 2, 10

    def cycle() -> None:
        assert httpx.post(f"{url}/v2/repository/models/tiny/unload", timeout=60).status_code == 200
        assert httpx.post(f"{url}/v2/repository/models/tiny/load", timeout=120).status_code == 200
        assert httpx.post(f"{url}/v2/models/tiny/infer", json=TINY).status_code == 200

    for _ in range(warmup):  # warm-up: allocator pools, imports, caches
        cycle()
    rss, segments = _rss_kib(pid), _segments(pid)
    for _ in range(cycles):
        cycle()
    assert len(_segments(pid)) == len(segments)  # names change: each load makes new ones
    growth = _rss_kib(pid) - rss
    assert growth < 0.05 * rss, f"RSS grew {growth} KiB from {rss} KiB over {cycles} cycles"
