"""Trace context and request ids through the front ends: the caller's W3C `tracestate` beside
its `traceparent` (HTTP headers, gRPC metadata), and a gRPC stream's metadata, read once and
used for each of its requests, on both gRPC stacks."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from tests.integration.server.models import make_repository

import surge
from surge.protocol.grpc_gen import grpc_service_pb2 as pb
from surge.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc
from surge.server.access_log import AccessLogConfig
from surge.server.production import ProductionOptions

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN}-01"
TINY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]},
                   {"name": "n", "datatype": "INT64", "shape": [1, 3], "data": [1, 2, 3]}]}


class Traced:
    def __init__(self, server: Any, exporter: Any, log: Path) -> None:
        self.server, self.exporter, self.log = server, exporter, log

    def roots(self, request_id: str, count: int = 1) -> list[Any]:
        """The surge.infer spans of `request_id`, once `count` of them have ended (the server
        ends each after its answer is written)."""
        deadline = time.monotonic() + 10.0
        while True:
            roots = [s for s in self.exporter.get_finished_spans() if s.name == "surge.infer"
                     and s.attributes["surge.request_id"] == request_id]
            if len(roots) >= count or time.monotonic() > deadline:
                return roots
            time.sleep(0.01)

    def log_lines(self, request_id: str, count: int) -> list[dict[str, Any]]:
        deadline = time.monotonic() + 10.0
        while True:
            lines = [json.loads(line) for line in self.log.read_text().splitlines()]
            mine = [line for line in lines if line.get("request_id") == request_id]
            if len(mine) >= count or time.monotonic() > deadline:
                return mine
            time.sleep(0.01)


@pytest.fixture(scope="module", params=["surge", "grpcio"])
def traced(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traced]:
    pytest.importorskip("opentelemetry.sdk", reason="tracing is an optional extra")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    root = tmp_path_factory.mktemp("trace")
    repo = make_repository(root / "repo", with_slow=False)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    log = root / "access.jsonl"
    production = ProductionOptions(tracing=provider,
                                   access_log=AccessLogConfig(path=str(log)))
    options = surge.ServeOptions(http_port=0, grpc_port=0, metrics_port=0,
                                 production=production, grpc_server=request.param)
    with surge.start_server(repo, options) as server:
        yield Traced(server, exporter, log)


def _request(request_id: str = "") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="tiny", id=request_id)
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend(
        [1, 2, 3, 4])
    request.inputs.add(name="n", datatype="INT64", shape=[1, 3]).contents.int64_contents.extend(
        [1, 2, 3])
    return request


def _assert_child_of_caller(root: Any) -> None:
    assert format(root.context.trace_id, "032x") == TRACE_ID
    assert format(root.parent.span_id, "016x") == PARENT_SPAN


def test_http_keeps_the_callers_tracestate(traced: Traced) -> None:
    # tracestate in two fields: one list (RFC 9110 5.3)
    headers = [("traceparent", TRACEPARENT), ("tracestate", "congo=t61rcWkgMzE"),
               ("tracestate", "rojo=00f067aa0ba902b7"), ("x-request-id", "ts-http")]
    answer = httpx.post(f"{traced.server.endpoints.http}/v2/models/tiny/infer", json=TINY,
                        headers=headers)
    assert answer.status_code == 200
    (root,) = traced.roots("ts-http")
    _assert_child_of_caller(root)
    # Before: the tracestate header was never read; the span's trace_state was empty.
    assert dict(root.context.trace_state) == {"congo": "t61rcWkgMzE", "rojo": "00f067aa0ba902b7"}


def test_an_unusable_tracestate_does_not_fail_the_request(traced: Traced) -> None:
    headers = {"traceparent": TRACEPARENT, "tracestate": "BAD STATE," + "k=v," * 3000,
               "x-request-id": "ts-bad"}
    answer = httpx.post(f"{traced.server.endpoints.http}/v2/models/tiny/infer", json=TINY,
                        headers=headers)
    assert answer.status_code == 200
    (root,) = traced.roots("ts-bad")
    _assert_child_of_caller(root)
    assert not dict(root.context.trace_state)


def test_grpc_keeps_the_callers_tracestate(traced: Traced) -> None:
    metadata = (("traceparent", TRACEPARENT), ("tracestate", "congo=t61rcWkgMzE"),
                ("x-request-id", "ts-grpc"))
    with grpc.insecure_channel(traced.server.endpoints.grpc) as channel:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(_request(), metadata=metadata,
                                                             timeout=30)
    (root,) = traced.roots("ts-grpc")
    _assert_child_of_caller(root)
    assert dict(root.context.trace_state) == {"congo": "t61rcWkgMzE"}


def test_a_streams_metadata_is_used_for_each_of_its_requests(traced: Traced) -> None:
    metadata = (("traceparent", TRACEPARENT), ("tracestate", "congo=t61rcWkgMzE"),
                ("x-request-id", "ts-stream"))
    ids = ["frame-1", "frame-2", "frame-3"]
    with grpc.insecure_channel(traced.server.endpoints.grpc) as channel:
        call = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(
            iter([_request(i) for i in ids]), metadata=metadata, timeout=30)
        answers = list(call)
        trailing = dict(call.trailing_metadata())
    assert sorted(a.infer_response.id for a in answers) == ids
    assert not any(a.error_message for a in answers)
    # Before: each streamed request had an id of its own making and started its own trace.
    assert trailing["x-request-id"] == "ts-stream"
    roots = traced.roots("ts-stream", len(ids))
    assert sorted(r.attributes["surge.id"] for r in roots) == ids
    for root in roots:
        _assert_child_of_caller(root)
        assert dict(root.context.trace_state) == {"congo": "t61rcWkgMzE"}
    lines = traced.log_lines("ts-stream", len(ids))
    assert sorted(line["id"] for line in lines) == ids
    assert {(line["protocol"], line["status"]) for line in lines} == {("grpc", "OK")}


def test_a_stream_without_an_id_gets_one_for_all_its_requests(traced: Traced) -> None:
    with grpc.insecure_channel(traced.server.endpoints.grpc) as channel:
        call = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(
            iter([_request("a"), _request("b")]), timeout=30)
        assert len(list(call)) == 2
        made = dict(call.trailing_metadata())["x-request-id"]
    assert made
    assert sorted(line["id"] for line in traced.log_lines(made, 2)) == ["a", "b"]


@pytest.mark.parametrize("path", ["/v2/models/tiny/versions/abc/infer",
                                  "/v2/models/tiny/versions/0/infer", "/v2/models/..bad/infer"])
def test_http_a_bad_name_or_version_is_answered_with_the_request_id(
        traced: Traced, path: str) -> None:
    request_id = "bad-http" + path
    answer = httpx.post(f"{traced.server.endpoints.http}{path}", json=TINY,
                        headers={"x-request-id": request_id})
    assert answer.status_code == 400
    assert "error" in answer.json()
    # Before: a 400 without x-request-id, and no access-log line for this inference request.
    assert answer.headers["x-request-id"] == request_id
    (line,) = traced.log_lines(request_id, 1)
    assert (line["status"], line["protocol"]) == (400, "http")


@pytest.mark.parametrize(("model", "version"), [("tiny", "abc"), ("..bad", ""),
                                                ("x" * 5000, "")])
def test_grpc_a_bad_name_or_version_is_answered_with_the_request_id(
        traced: Traced, model: str, version: str) -> None:
    request_id = f"bad-grpc-{len(model)}-{version}"
    request = _request()
    request.model_name, request.model_version = model, version
    with grpc.insecure_channel(traced.server.endpoints.grpc) as channel, \
            pytest.raises(grpc.RpcError) as refused:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            request, metadata=(("x-request-id", request_id),), timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Before: no x-request-id in the trailers, and no access-log line.
    assert dict(refused.value.trailing_metadata())["x-request-id"] == request_id
    (line,) = traced.log_lines(request_id, 1)
    assert line["status"] == "INVALID_ARGUMENT"
    assert line["model"] == model[:128] + ("..." if len(model) > 128 else "")


def test_a_streamed_request_with_a_bad_name_is_logged(traced: Traced) -> None:
    bad = _request("frame-bad")
    bad.model_name = "..bad"
    with grpc.insecure_channel(traced.server.endpoints.grpc) as channel:
        call = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(
            iter([bad, _request("frame-ok")]), metadata=(("x-request-id", "bad-stream"),),
            timeout=30)
        answers = {a.infer_response.id: a.error_message for a in call}
    assert "invalid model name '..bad'" in answers["frame-bad"]
    assert answers["frame-ok"] == ""
    lines = {line["id"]: line["status"] for line in traced.log_lines("bad-stream", 2)}
    assert lines == {"frame-bad": "INVALID_ARGUMENT", "frame-ok": "OK"}
