"""A served model's queue policy in its configuration: `GET /v2/models/NAME/config` and gRPC
`ModelConfig` on both gRPC stacks show `queue` (and `queue.priorities`) in Triton's dynamic
batcher fields, and tritonclient (HTTP and gRPC) reads them unmodified."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import json_format
from tests.integration.server.conftest import ServerProcess, start_server, triton_client
from tests.integration.server.models import tiny_onnx

from surge.protocol.grpc_gen import grpc_service_pb2 as pb
from surge.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(240)

QUEUED = """\
max_batch_size: 8
instances: 1
threads: 1
batching: {max_queue_delay_ms: 1.0, preferred_batch_sizes: [4]}
queue:
  max_size: 6
  default_timeout_ms: 250
  priorities:
    0: {max_size: 4}
    9: {max_size: 3, default_timeout_ms: 1.5}
"""
UNBATCHED = "max_batch_size: 8\ninstances: 1\nthreads: 1\nbatching: {enabled: false}\n"


def _policy(size: int, timeout_us: int) -> dict[str, Any]:
    return {"timeout_action": "REJECT", "default_timeout_microseconds": timeout_us,
            "allow_timeout_override": True, "max_queue_size": size}


EXPECTED = {"preferred_batch_size": [4], "max_queue_delay_microseconds": 1000,
            "priority_levels": 2**64 - 1, "default_priority_level": 8,
            "default_queue_policy": _policy(6, 250_000),
            "priority_queue_policy": {"8": _policy(4, 250_000), "9": _policy(3, 1500)}}

# Runs in tritonclient's venv: the config as each client decodes it, with fields read from
# tritonclient's own generated classes.
CLIENT = """
import json, sys
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
http_url, grpc_url = sys.argv[1:3]
http = httpclient.InferenceServerClient(http_url).get_model_config("queued")
config = grpcclient.InferenceServerClient(grpc_url).get_model_config("queued").config
batching = config.dynamic_batching
print(json.dumps({
    "http": http["dynamic_batching"],
    "grpc": {"levels": batching.priority_levels, "default": batching.default_priority_level,
             "default_size": batching.default_queue_policy.max_queue_size,
             "default_timeout": batching.default_queue_policy.default_timeout_microseconds,
             "override": batching.default_queue_policy.allow_timeout_override,
             "sizes": {str(k): v.max_queue_size for k, v in batching.priority_queue_policy.items()},
             "timeouts": {str(k): v.default_timeout_microseconds
                          for k, v in batching.priority_queue_policy.items()}},
}))
"""


def _repository(root: Path) -> Path:
    for name, config in (("queued", QUEUED), ("unbatched", UNBATCHED)):
        tiny_onnx(root / name / "1" / "model.onnx")
        (root / name / "config.yaml").write_text(config)
    return root


@pytest.fixture(scope="module", params=["surge", "grpcio"])
def served(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The server with each gRPC stack (`--grpc-server`)."""
    repo = _repository(tmp_path_factory.mktemp("echo-repo"))
    proc = start_server(repo, tmp_path_factory.mktemp("log") / "server.log",
                        "--grpc-server", request.param)
    yield proc
    assert proc.stop() == 0, proc.output()[-3000:]


def _grpc_config(served: ServerProcess, model: str) -> Any:
    with grpc.insecure_channel(served.grpc) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        return stub.ModelConfig(pb.ModelConfigRequest(name=model), timeout=30).config


def test_http_config_shows_the_queue_policies(served: ServerProcess) -> None:
    config = httpx.get(f"{served.http}/v2/models/queued/config", timeout=30).json()
    assert config["dynamic_batching"] == EXPECTED


def test_grpc_config_shows_the_queue_policies(served: ServerProcess) -> None:
    batching = _grpc_config(served, "queued").dynamic_batching
    assert batching == json_format.ParseDict(EXPECTED, pb.ModelDynamicBatching())
    assert batching.priority_queue_policy[9].max_queue_size == 3


def test_a_model_without_batching_shows_no_dynamic_batcher(served: ServerProcess) -> None:
    config = httpx.get(f"{served.http}/v2/models/unbatched/config", timeout=30).json()
    assert "dynamic_batching" not in config
    assert not _grpc_config(served, "unbatched").HasField("dynamic_batching")


def test_tritonclient_reads_the_queue_policies(served: ServerProcess) -> None:
    result = triton_client("-c", CLIENT, served.http.removeprefix("http://"), served.grpc)
    assert result.returncode == 0, result.stderr[-3000:] + served.output()[-2000:]
    decoded = json.loads(result.stdout)
    assert decoded["http"] == EXPECTED
    assert decoded["grpc"] == {
        "levels": 2**64 - 1, "default": 8, "default_size": 6, "default_timeout": 250_000,
        "override": True, "sizes": {"8": 4, "9": 3}, "timeouts": {"8": 250_000, "9": 1500}}
