"""`model_warmup` served: every instance runs every sample (a data file's included) `count`
times before the model is ready, and again when it is restarted; the samples count in no
statistics; a sample that does not fit fails the load with its name and why (at start, in the
repository index and on a load request); the model configuration echoes the samples over HTTP
and gRPC."""

from __future__ import annotations

import collections
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from safetensors.torch import save_file
from tests.integration.production.conftest import Served, launch
from tests.integration.server.conftest import HERE as SERVER_TESTS
from tests.integration.server.models import tiny_onnx

from surge.protocol.grpc_gen import grpc_service_pb2 as pb
from surge.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(240)

# Loaded by the workers as `warm_models:recorder`: a model that writes its process id to a log
# for each batch of sevens (the warm-up sample's data), so the test sees which instance ran it.
RECORDER = """
import os
import torch


class Recorder(torch.nn.Module):
    def __init__(self, log: str) -> None:
        super().__init__()
        self.log = log

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x == 7).all()):
            with open(self.log, "a") as handle:
                handle.write(f"{os.getpid()}\\n")
        return x * 2


def recorder(log: str) -> Recorder:
    return Recorder(log)
"""

RECORDED = """\
engine: torch_factory
factory: warm_models:recorder
factory_kwargs: {{log: {log}}}
inputs: [{{name: x, datatype: FP32, shape: [-1, 4]}}]
outputs: [{{name: output, datatype: FP32, shape: [-1, 4]}}]
max_batch_size: 4
instances: 2
threads: 1
model_warmup:
  - name: sevens
    batch_size: 3
    count: 2
    inputs: {{x: {{datatype: FP32, dims: [4], input_data_file: sevens.bin}}}}
"""

# Triton's spelling, every data source, and a file of the wrong size for model `bad`.
TINY = """\
max_batch_size: 8
instances: 1
threads: 1
model_warmup:
  - name: mixed
    batch_size: 2
    inputs:
      x: {data_type: TYPE_FP32, dims: [4], random_data: true}
      n: {data_type: TYPE_INT64, dims: [3], input_data_file: n.bin}
  - name: zeros
    inputs:
      x: {datatype: FP32, dims: [4], zero_data: true}
      n: {datatype: INT64, dims: [3], zero_data: true}
"""
BAD_MESSAGE = ("model_warmup sample 'mixed': input_data_file 'n.bin' holds 16 bytes; "
               "INT64 [3] takes 24")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, Path]]:
    root = tmp_path_factory.mktemp("warmup")
    repo, code, log = root / "repo", root / "code", root / "calls.log"
    code.mkdir()
    (code / "warm_models.py").write_text(RECORDER)
    (repo / "recorded" / "1").mkdir(parents=True)
    save_file({}, str(repo / "recorded" / "1" / "model.safetensors"))
    (repo / "recorded" / "config.yaml").write_text(RECORDED.format(log=log))
    (repo / "recorded" / "warmup").mkdir()
    np.full(4, 7, "<f4").tofile(repo / "recorded" / "warmup" / "sevens.bin")
    for name, values in (("tiny", 3), ("bad", 2)):
        tiny_onnx(repo / name / "1" / "model.onnx")
        (repo / name / "config.yaml").write_text(TINY)
        (repo / name / "warmup").mkdir()
        np.arange(values, dtype="<i8").tofile(repo / name / "warmup" / "n.bin")
    path = f"PYTHONPATH={code}{os.pathsep}{SERVER_TESTS}"
    server = launch(repo, root / "server.log", prefix=("env", path))
    yield server, log
    assert server.stop() == 0, server.output()


def _runs(log: Path) -> collections.Counter[int]:
    """Batches of sevens each process ran."""
    return collections.Counter(int(line) for line in log.read_text().split())


def test_every_instance_runs_every_sample_before_it_is_ready(
        served: tuple[Served, Path]) -> None:
    server, log = served
    runs = _runs(log)
    assert sorted(runs.values()) == [2, 2], runs  # two instances, count 2 each
    with server.client() as client:
        stats = client.get("/v2/models/recorded/stats").json()["model_stats"][0]
        assert (stats["inference_count"], stats["execution_count"]) == (0, 0)
        answer = client.post("/v2/models/recorded/infer", json={"inputs": [
            {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]})
        assert answer.json()["outputs"][0]["data"] == [2, 4, 6, 8], answer.text
    os.kill(next(iter(runs)), signal.SIGKILL)  # its replacement warms up before it serves
    deadline = time.monotonic() + 60
    while len(_runs(log)) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sorted(_runs(log).values()) == [2, 2, 2], _runs(log)


def test_a_sample_that_does_not_fit_fails_the_load_naming_it(
        served: tuple[Served, Path]) -> None:
    server, _ = served
    with server.client() as client:
        index = {entry["name"]: entry for entry in client.post("/v2/repository/index").json()}
        assert index["tiny"]["state"] == "READY"
        assert index["bad"]["state"] == "UNAVAILABLE"
        assert BAD_MESSAGE in index["bad"]["reason"]
        answer = client.post("/v2/repository/models/bad/load")
        assert answer.status_code == 400, answer.text
        assert BAD_MESSAGE in answer.json()["error"]
    assert BAD_MESSAGE in server.output()


ECHOED = [
    {"name": "mixed", "batch_size": 2, "count": 1, "inputs": {
        "x": {"data_type": "TYPE_FP32", "dims": [4], "random_data": True},
        "n": {"data_type": "TYPE_INT64", "dims": [3], "input_data_file": "n.bin"}}},
    {"name": "zeros", "batch_size": 1, "count": 1, "inputs": {
        "x": {"data_type": "TYPE_FP32", "dims": [4], "zero_data": True},
        "n": {"data_type": "TYPE_INT64", "dims": [3], "zero_data": True}}},
]


def test_the_model_configuration_echoes_the_samples(served: tuple[Served, Path]) -> None:
    server, _ = served
    with server.client() as client:
        assert client.get("/v2/models/tiny/config").json()["model_warmup"] == ECHOED
        recorded = client.get("/v2/models/recorded/config").json()["model_warmup"]
        assert [sample["name"] for sample in recorded] == ["sevens"]
    with grpc.insecure_channel(server.grpc) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        config = stub.ModelConfig(pb.ModelConfigRequest(name="tiny"), timeout=30).config
    first, second = config.model_warmup
    assert (first.name, first.batch_size, first.count) == ("mixed", 2, 1)
    assert first.inputs["n"].input_data_file == "n.bin"
    assert first.inputs["n"].data_type == pb.TYPE_INT64
    assert list(first.inputs["n"].dims) == [3]
    assert first.inputs["x"].random_data
    assert second.inputs["x"].zero_data


ZEROS_ONLY = [{"name": "zeros", "inputs": {
    "x": {"datatype": "FP32", "dims": [4], "zero_data": True},
    "n": {"datatype": "INT64", "dims": [3], "zero_data": True}}}]


def test_a_load_can_replace_the_samples(served: tuple[Served, Path]) -> None:
    """`model_warmup` was refused in a load's config override (the workers read config.yaml's):
    `bad`, whose own samples cannot run, loads with samples that can."""
    server, _ = served
    with server.client() as client:
        answer = client.post("/v2/repository/models/bad/load",
                             json={"parameters": {"config": {"model_warmup": ZEROS_ONLY}}})
        assert answer.status_code == 200, answer.text
        warmup = client.get("/v2/models/bad/config").json()["model_warmup"]
        assert [sample["name"] for sample in warmup] == ["zeros"]
        wrong = client.post("/v2/repository/models/bad/load", json={"parameters": {"config": {
            "model_warmup": [{"name": "z", "inputs": {"x": {"datatype": "FP32", "dims": [5],
                                                            "zero_data": True}}}]}}})
        assert wrong.status_code == 400, wrong.text
        assert "model_warmup sample 'z'" in wrong.json()["error"]
        assert client.post("/v2/repository/models/bad/unload").status_code == 200
