"""`surge serve --frontends 2`: two front-end processes on the same ports, supervised."""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from tests.cli_runner import run_cli
from tests.integration.server.conftest import ServerProcess, start_server, worker_pids

from surge.protocol.grpc_gen import grpc_service_pb2 as pb
from surge.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc

CONNECTIONS = 16  # all on one front end by chance: 2 ** -15
BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]},
                   {"name": "n", "datatype": "INT64", "shape": [1, 3], "data": [1, 2, 3]}]}


def two_frontends(repo: Path, folder: Path) -> Iterator[ServerProcess]:
    """`surge serve --frontends 2` once both listen; stopped after (exit code 0)."""
    server = start_server(repo, folder / "server.log", "--frontends", "2")
    _wait_for(lambda: "front ends 2" in server.output())  # announced once both listen
    yield server
    if server.process.poll() is None:
        assert server.stop() == 0, server.output()[-3000:]


@pytest.fixture(scope="module")
def frontends(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[ServerProcess]:
    yield from two_frontends(tiny_repo, tmp_path_factory.mktemp("frontends"))


def _established(port: int) -> set[int]:
    """Socket inodes of the established TCP connections whose local port is `port`."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                inodes.add(int(fields[9]))
    return inodes


def connection_owners(port: int, pids: list[int]) -> Counter[int]:
    """How many of the server side's connections on `port` each process holds."""
    inodes = _established(port)
    owners: Counter[int] = Counter()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and int(target[8:-1]) in inodes:
                owners[pid] += 1
    return owners


def _grpc_infer(stub: pb_grpc.GRPCInferenceServiceStub) -> np.ndarray:
    request = pb.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    request.inputs.add(name="n", datatype="INT64", shape=[1, 3])
    request.raw_input_contents.extend([np.arange(4, dtype=np.float32).tobytes(),
                                       np.arange(3, dtype=np.int64).tobytes()])
    response = stub.ModelInfer(request, timeout=30)
    return np.frombuffer(response.raw_output_contents[0], np.float32)


def test_http_and_grpc_connections_reach_both_front_ends(frontends: ServerProcess) -> None:
    pids = worker_pids(frontends.process)
    assert len(pids) == 2
    http_port = int(frontends.http.rsplit(":", 1)[1])
    with ExitStack() as stack:
        for _ in range(CONNECTIONS):
            client = stack.enter_context(httpx.Client(base_url=frontends.http, timeout=30))
            response = client.post("/v2/models/tiny/infer", json=BODY)
            assert response.status_code == 200, response.text
            assert response.json()["outputs"][0]["data"] == [2.0, 3.0, 4.0, 5.0]
        assert set(connection_owners(http_port, pids)) == set(pids)
        for _ in range(CONNECTIONS):
            # A channel of its own: grpc shares subchannels between like channels otherwise.
            channel = stack.enter_context(grpc.insecure_channel(
                frontends.grpc, options=[("grpc.use_local_subchannel_pool", 1)]))
            result = _grpc_infer(pb_grpc.GRPCInferenceServiceStub(channel))
            assert result.tolist() == [1.0, 2.0, 3.0, 4.0]
        assert set(connection_owners(frontends.grpc_port, pids)) == set(pids)


SHM_BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "parameters": {
                "shared_memory_region": "in", "shared_memory_byte_size": 16}},
                       {"name": "n", "datatype": "INT64", "shape": [1, 3], "data": [1, 2, 3]}]}


def _shm_body(slot: int) -> dict:
    """SHM_BODY with output y written to the region at the slot's own offset."""
    return {**SHM_BODY, "outputs": [{"name": "y", "parameters": {
        "shared_memory_region": "in", "shared_memory_byte_size": 16,
        "shared_memory_offset": 16 * (slot + 1)}}]}


def test_a_region_registered_on_one_front_end_serves_every_front_end(
        frontends: ServerProcess) -> None:
    from multiprocessing import shared_memory

    pids = worker_pids(frontends.process)
    http_port = int(frontends.http.rsplit(":", 1)[1])
    block = shared_memory.SharedMemory(create=True, size=16 * (CONNECTIONS + 1))
    try:
        block.buf[:16] = np.array([1, 2, 3, 4], np.float32).tobytes()
        registered = httpx.post(f"{frontends.http}/v2/systemsharedmemory/region/in/register",
                                json={"key": "/" + block.name.lstrip("/"), "offset": 0,
                                      "byte_size": block.size}, timeout=30)
        assert registered.status_code == 200, registered.text
        with ExitStack() as stack:
            for slot in range(CONNECTIONS):
                client = stack.enter_context(httpx.Client(base_url=frontends.http, timeout=30))
                answer = client.post("/v2/models/tiny/infer", json=_shm_body(slot))
                assert answer.status_code == 200, answer.text
                written = bytes(block.buf[16 * (slot + 1):16 * (slot + 2)])
                assert np.frombuffer(written, np.float32).tolist() == [2.0, 3.0, 4.0, 5.0]
            assert set(connection_owners(http_port, pids)) == set(pids)
        httpx.post(f"{frontends.http}/v2/systemsharedmemory/unregister", timeout=30)
        for _ in range(CONNECTIONS):  # a new connection each time: either front end
            answer = httpx.post(f"{frontends.http}/v2/models/tiny/infer", json=SHM_BODY,
                                timeout=30)
            assert answer.status_code == 400
            assert "Unable to find system shared memory region: 'in'" in answer.json()["error"]
    finally:
        block.close()
        block.unlink()


def _requests_total(metrics: str) -> float:
    text = httpx.get(metrics, timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith('surge_requests_total{model="tiny",outcome="success",'))


def test_metrics_sum_over_front_ends_and_stats_are_each_front_ends_share(
        frontends: ServerProcess) -> None:
    before = _requests_total(frontends.metrics)
    for _ in range(CONNECTIONS):  # httpx.post: a new connection each time
        assert httpx.post(f"{frontends.http}/v2/models/tiny/infer", json=BODY,
                          timeout=30).status_code == 200
    assert _requests_total(frontends.metrics) - before == CONNECTIONS
    counts = {httpx.get(f"{frontends.http}/v2/models/tiny/stats", timeout=10)
              .json()["model_stats"][0]["inference_count"] for _ in range(CONNECTIONS)}
    total = _requests_total(frontends.metrics)
    # Each front end counts its own: two shares adding up to the total (one value: equal shares).
    assert max(counts) < total
    assert (sum(counts) if len(counts) == 2 else 2 * max(counts)) == total, (counts, total)


def _wait_for(condition, timeout: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_killed_front_end_is_replaced(frontends: ServerProcess) -> None:
    victim, survivor = worker_pids(frontends.process)
    its_workers = _children(victim)
    os.kill(victim, signal.SIGKILL)
    _wait_for(lambda: len(worker_pids(frontends.process)) == 2
              and victim not in worker_pids(frontends.process))
    replacement = (set(worker_pids(frontends.process)) - {survivor}).pop()
    http_port = int(frontends.http.rsplit(":", 1)[1])

    def replacement_serves() -> bool:
        with ExitStack() as stack:
            for _ in range(CONNECTIONS):
                client = stack.enter_context(httpx.Client(base_url=frontends.http, timeout=30))
                assert client.post("/v2/models/tiny/infer", json=BODY).status_code == 200
            return replacement in connection_owners(http_port, [replacement])

    _wait_for(replacement_serves)
    _wait_for(lambda: not any(_alive(pid) for pid in its_workers), timeout=30)


def test_gauges_combine_over_live_front_ends_without_a_series_per_process(
        frontends: ServerProcess) -> None:
    """After the restart above too: a dead front end's gauges leave the export, and no gauge
    gets a `pid` label (one series per process, growing with every restart)."""
    text = httpx.get(frontends.metrics, timeout=10).text
    assert "pid=" not in text
    assert "surge_models_loaded 1.0" in text.splitlines()
    memory = [line for line in text.splitlines() if line.startswith("surge_model_memory_bytes{")]
    assert len(memory) == 1, memory


PIPELINE = """\
kind: pipeline
max_batch_size: 8
inputs:
  - {name: x, datatype: FP32, shape: [-1, 4]}
  - {name: n, datatype: INT64, shape: [-1, 3]}
outputs: [{name: total, datatype: FP32, shape: [-1, 1]}]
steps:
  - {name: add, model: tiny, inputs: {x: x, n: n}, outputs: {y: y}}
  - {name: sum, processor: "pipeline_steps:row_sum", inputs: {y: y}, outputs: {total: total}}
"""


def _step_samples(metrics: str) -> dict[str, float]:
    """The pipeline's step samples, by name and labels, as the metrics port exports them."""
    lines = httpx.get(metrics, timeout=10).text.splitlines()
    return {name: float(value) for name, _, value in (line.rpartition(" ") for line in lines)
            if name.startswith("surge_pipeline_step_")}


def test_pipeline_step_metrics_sum_over_front_ends(tiny_repo: Path, tmp_path: Path) -> None:
    """Each front end's step durations and CPU reach the export (they are kept as plain totals,
    not prometheus_client values: copied into the multiprocess files every second)."""
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo, repo)
    (repo / "p").mkdir()
    (repo / "p" / "config.yaml").write_text(PIPELINE)
    server = start_server(repo, tmp_path / "server.log", "--frontends", "2")
    try:
        _wait_for(lambda: "front ends 2" in server.output())
        for _ in range(CONNECTIONS):  # httpx.post: a new connection each time
            answer = httpx.post(f"{server.http}/v2/models/p/infer", json=BODY, timeout=30)
            assert answer.status_code == 200, answer.text
            assert answer.json()["outputs"][0]["data"] == [14.0]
        count = 'surge_pipeline_step_duration_seconds_count{model="p",step="%s"}'
        _wait_for(lambda: all(_step_samples(server.metrics).get(count % step) == CONNECTIONS
                              for step in ("add", "sum")), timeout=10)
        samples = _step_samples(server.metrics)
        assert not [name for name in samples if "pid=" in name]
        for step in ("add", "sum"):
            name = "surge_pipeline_step_duration_seconds"
            assert samples[f'{name}_bucket{{le="+Inf",model="p",step="{step}"}}'] == CONNECTIONS
            assert samples[f'{name}_sum{{model="p",step="{step}"}}'] > 0
        assert samples['surge_pipeline_step_cpu_seconds_total{model="p",step="sum"}'] > 0
        # Both front ends answered (all on one by chance: 2 ** -15): a front end's own count is
        # short of the total.
        shares = {httpx.get(f"{server.http}/v2/models/p/stats", timeout=10)
                  .json()["model_stats"][0]["inference_count"] for _ in range(CONNECTIONS)}
        assert max(shares) < CONNECTIONS, shares
    finally:
        assert server.stop() == 0, server.output()[-3000:]


def test_sigterm_stops_every_process(frontends: ServerProcess) -> None:
    front_ends = worker_pids(frontends.process)
    everything = [*front_ends, *(pid for f in front_ends for pid in _children(f))]
    assert frontends.stop(signal.SIGTERM) == 0, frontends.output()
    _wait_for(lambda: not any(_alive(pid) for pid in everything), timeout=30)


@pytest.mark.parametrize("value", ["0", "-1", "many", ""])
def test_frontends_option_is_checked(value: str, tiny_repo: Path,
                                     capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SURGE_DEBUG", raising=False)
    code, _, err = run_cli(["serve", str(tiny_repo), "--frontends", value], capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "--frontends" in lines[0]
    assert "auto" in lines[0]


def test_front_ends_drain_and_exit_when_the_supervisor_is_killed(
        tiny_repo: Path, tmp_path: Path) -> None:
    server = start_server(tiny_repo, tmp_path / "server.log", "--frontends", "2", "--grace", "2")
    try:
        _wait_for(lambda: "front ends 2" in server.output())
        front_ends = worker_pids(server.process)
        everything = [*front_ends, *(pid for f in front_ends for pid in _children(f))]
        server.process.kill()  # SIGKILL: the supervisor cannot stop anything itself
        server.process.wait(10)
        _wait_for(lambda: not any(_alive(pid) for pid in everything), timeout=60)
    finally:
        server.stop(signal.SIGKILL)
