"""Access log lines, request ids in and out on both protocols, and OpenTelemetry spans."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from tests.integration.production.conftest import launch
from tests.integration.server.models import make_repository

import surge
from surge.protocol.grpc_gen import grpc_service_pb2 as pb
from surge.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc
from surge.server.production import ProductionOptions

TINY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "data": [0] * 8},
                   {"name": "n", "datatype": "INT64", "shape": [2, 3], "data": [0] * 6}]}
FIELDS = {"time", "request_id", "protocol", "client", "model", "version", "variant",
          "batch_size", "queue_ms", "compute_ms", "total_ms", "status"}
TRACE_IDS = {"http": "4bf92f3577b34da6a3ce929d0e0e4736", "grpc": "4bf92f3577b34da6a3ce929d0e0e4737"}


def _grpc_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend(
        [1, 2, 3, 4])
    request.inputs.add(name="n", datatype="INT64", shape=[1, 3]).contents.int64_contents.extend(
        [1, 2, 3])
    return request


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repository(tmp_path_factory.mktemp("repo"), with_slow=False)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_access_log_and_request_ids(repo: Path, tmp_path: Path) -> None:
    log = tmp_path / "access.jsonl"
    served = launch(repo, tmp_path / "server.log", "--access-log", str(log))
    try:
        given = httpx.post(f"{served.http}/v2/models/tiny/infer", json=TINY,
                           headers={"x-request-id": "order-42"})
        made = httpx.post(f"{served.http}/v2/models/tiny/infer", json=TINY)
        bad = httpx.post(f"{served.http}/v2/models/tiny/infer", json={"inputs": []},
                         headers={"x-request-id": "bad one\twith spaces"})
        with grpc.insecure_channel(served.grpc) as channel:
            _, call = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer.with_call(
                _grpc_request(), metadata=(("x-request-id", "grpc-7"),), timeout=30)
        trailing = dict(call.trailing_metadata())
    finally:
        assert served.stop() == 0, served.output()
    assert given.headers["x-request-id"] == "order-42"
    assert made.headers["x-request-id"]
    assert made.headers["x-request-id"] != "order-42"
    assert bad.status_code == 400
    assert bad.headers["x-request-id"] not in ("", "bad one\twith spaces")  # replaced, not echoed
    assert trailing["x-request-id"] == "grpc-7"
    lines = {line["request_id"]: line for line in _lines(log)}
    assert set(lines) == {"order-42", made.headers["x-request-id"], bad.headers["x-request-id"],
                          "grpc-7"}
    for line in lines.values():
        assert set(line) == FIELDS
    ok = lines["order-42"]
    assert (ok["model"], ok["version"], ok["status"], ok["protocol"]) == ("tiny", 1, 200, "http")
    assert ok["batch_size"] >= 2
    assert ok["total_ms"] >= ok["compute_ms"] > 0
    assert ok["client"].startswith("127.0.0.1:")
    assert lines[bad.headers["x-request-id"]]["status"] == 400
    assert (lines["grpc-7"]["status"], lines["grpc-7"]["protocol"]) == ("OK", "grpc")


def test_sampling_keeps_failures(repo: Path, tmp_path: Path) -> None:
    log = tmp_path / "access.jsonl"
    served = launch(repo, tmp_path / "server.log", "--access-log", str(log),
                    "--access-log-sample", "0")
    try:
        for _ in range(5):
            assert httpx.post(f"{served.http}/v2/models/tiny/infer", json=TINY).status_code == 200
        assert httpx.post(f"{served.http}/v2/models/nope/infer", json=TINY).status_code == 404
    finally:
        assert served.stop() == 0, served.output()
    assert [(line["model"], line["status"]) for line in _lines(log)] == [("nope", 404)]


@pytest.fixture(scope="module")
def traced(repo: Path) -> Iterator[tuple[surge.api.BackgroundServer, object]]:
    pytest.importorskip("opentelemetry.sdk", reason="tracing is an optional extra")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    options = surge.ServeOptions(http_port=0, grpc_port=0, metrics_port=0,
                                 production=ProductionOptions(tracing=provider))
    with surge.start_server(repo, options) as server:
        yield server, exporter


def _spans_of(exporter: object, request_id: str) -> dict[str, object]:
    """The request's spans, once its root has ended: the server ends it after the answer is
    written, so the client can hold the answer a moment before the span is exported."""
    deadline = time.monotonic() + 10.0
    while True:
        spans = exporter.get_finished_spans()  # type: ignore[attr-defined]
        root = next((s for s in spans if s.name == "surge.infer"
                     and s.attributes["surge.request_id"] == request_id), None)
        if root is not None or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert root is not None, f"no surge.infer span for {request_id}"
    return {s.name: s for s in spans if s.context.trace_id == root.context.trace_id}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_spans_follow_traceparent(traced: tuple, protocol: str) -> None:
    server, exporter = traced
    request_id = f"traced-{protocol}"
    traceparent = f"00-{TRACE_IDS[protocol]}-00f067aa0ba902b7-01"
    if protocol == "http":
        answer = httpx.post(f"{server.endpoints.http}/v2/models/tiny/infer", json=TINY,
                            headers={"traceparent": traceparent, "x-request-id": request_id})
        assert answer.status_code == 200
    else:
        with grpc.insecure_channel(server.endpoints.grpc) as channel:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                _grpc_request(), timeout=30,
                metadata=(("traceparent", traceparent), ("x-request-id", request_id)))
    spans = _spans_of(exporter, request_id)
    assert set(spans) == {"surge.infer", "decode", "queue", "batch", "compute", "encode"}
    root = spans["surge.infer"]
    assert format(root.context.trace_id, "032x") == TRACE_IDS[protocol]
    assert format(root.parent.span_id, "016x") == "00f067aa0ba902b7"
    for name in ("decode", "queue", "batch", "encode"):
        assert spans[name].parent.span_id == root.context.span_id
        assert root.start_time <= spans[name].start_time <= spans[name].end_time <= root.end_time
    assert spans["compute"].parent.span_id == spans["batch"].context.span_id
    assert spans["batch"].attributes["surge.batch_size"] >= 1
    assert spans["decode"].end_time <= spans["queue"].end_time <= spans["encode"].start_time
