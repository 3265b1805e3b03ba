"""Adversarial repository control requests: bodies and parameters a load or unload does not
take are refused with a 400 naming what is wrong, and refuse before anything is unloaded."""

from __future__ import annotations

import grpc
import httpx
import pytest
from tests.integration.production.conftest import Served

from surge.protocol.grpc_gen import grpc_service_pb2 as pb
from surge.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc


def _post(explicit: Served, action: str, body: bytes) -> httpx.Response:
    return httpx.post(f"{explicit.http}/v2/repository/models/tiny/{action}", content=body,
                      headers={"content-type": "application/json"}, timeout=60)


def _ready(explicit: Served) -> bool:
    return httpx.get(f"{explicit.http}/v2/models/tiny/ready", timeout=10).status_code == 200


@pytest.mark.parametrize(("body", "message"), [
    (b"[1]", "must be a JSON object"),
    (b"{{", "not valid JSON"),
    (b'{"force": true}', "unknown field 'force'"),
    (b'{"parameters": 0}', "'parameters' must be an object"),
    (b'{"parameters": {"unload_dependents": "yes"}}', "must be true or false"),
    (b'{"parameters": {"config": "{}"}}', "unknown unload parameter 'config'"),
])
def test_a_bad_unload_body_is_400_and_unloads_nothing(explicit: Served, body: bytes,
                                                      message: str) -> None:
    answer = _post(explicit, "unload", body)
    assert answer.status_code == 400, answer.text
    assert message in answer.json()["error"]
    assert _ready(explicit)


@pytest.mark.parametrize("parameters", [b"0", b"false", b'""', b"[]"])
def test_load_parameters_that_are_not_an_object_are_400(explicit: Served,
                                                        parameters: bytes) -> None:
    answer = _post(explicit, "load", b'{"parameters": ' + parameters + b"}")
    assert answer.status_code == 400, answer.text
    assert "'parameters' must be an object" in answer.json()["error"]


def test_tritons_unload_body_unloads_and_grpc_refuses_an_unknown_parameter(
        explicit: Served) -> None:
    request = pb.RepositoryModelUnloadRequest(model_name="tiny")
    request.parameters["cascade"].bool_param = True
    with grpc.insecure_channel(explicit.grpc) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.RepositoryModelUnload(request, timeout=30)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "unknown unload parameter 'cascade'" in (refused.value.details() or "")
        assert _ready(explicit)
    # what tritonclient's HTTP unload_model sends
    answer = _post(explicit, "unload", b'{"parameters": {"unload_dependents": false}}')
    assert answer.status_code == 200, answer.text
    assert not _ready(explicit)
    assert _post(explicit, "load", b"").status_code == 200
    assert _ready(explicit)
