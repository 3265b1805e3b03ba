"""The HTTP app's guards, driven through raw ASGI with a fake engine: large JSON is decoded off the
event loop, keys are compared in constant time, only served models get metric labels."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import orjson
import pytest

import surge.server.app
import surge.server.keys
from surge.engine.metrics import SurgeMetrics
from surge.engine.route import request_route
from surge.errors import ModelLoadError, NotFoundError
from surge.server.app import OFFLOAD_DECODE_BYTES, V2App


class _Handle:
    version = 1


class FakeEngine:
    """Serves one model, `double`, computing y = 2x; loading anything fails."""

    def __init__(self) -> None:
        self.metrics = SurgeMetrics()

    def model(self, name: str, version: int | None = None) -> _Handle:
        if name != "double":
            raise NotFoundError(f"model {name!r} is not loaded")
        return _Handle()

    async def infer(self, name: str, version: int | None, inputs: dict[str, np.ndarray],
                    **_: Any) -> dict[str, np.ndarray]:
        self.model(name)
        return {"y": inputs["x"] * 2}

    async def load(self, name: str) -> None:
        raise ModelLoadError(f"{name}/1/model.onnx: not a valid ONNX model")


async def _call(app: V2App, method: str, path: str, body: bytes = b"",
                headers: tuple[tuple[bytes, bytes], ...] = ()) -> tuple[int, bytes]:
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": list(headers)}
    await app(scope, receive, send)
    return sent[0]["status"], sent[1]["body"]


def _infer_body(count: int) -> bytes:
    return orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, count],
                                     "data": [1.0] * count}]})


@pytest.mark.parametrize(("count", "in_thread"), [(4, False), (OFFLOAD_DECODE_BYTES // 4, True)])
def test_large_json_is_decoded_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch, count: int, in_thread: bool
) -> None:
    threads: list[threading.Thread] = []
    decode = surge.server.app.decode_request

    def recording_decode(body: bytes, header_length: int | None, regions: Any = None) -> Any:
        threads.append(threading.current_thread())
        return decode(body, header_length, regions)

    monkeypatch.setattr(surge.server.app, "decode_request", recording_decode)
    app = V2App(FakeEngine())
    body = _infer_body(count)
    assert (len(body) >= OFFLOAD_DECODE_BYTES) == in_thread
    status, answer = asyncio.run(_call(app, "POST", "/v2/models/double/infer", body))
    assert status == 200
    assert orjson.loads(answer)["outputs"][0]["data"][:2] == [2.0, 2.0]
    assert (threads[0] is not threading.main_thread()) == in_thread


def test_api_key_looked_up_by_its_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    hashed: list[bytes] = []
    real = surge.server.keys._digest

    def spy(token: bytes) -> bytes:
        hashed.append(token)
        return real(token)

    app = V2App(FakeEngine(), api_key="k")
    monkeypatch.setattr(surge.server.keys, "_digest", spy)
    wrong = asyncio.run(_call(app, "GET", "/v2", headers=((b"authorization", b"Bearer x"),)))
    right = asyncio.run(_call(app, "GET", "/v2", headers=((b"authorization", b"Bearer k"),)))
    assert (wrong[0], right[0]) == (401, 200)
    assert hashed == [b"x", b"k"]  # the presented tokens; keys are held only as hashes


def test_only_served_models_get_a_metric_label() -> None:
    engine = FakeEngine()
    app = V2App(engine)

    async def requests() -> None:
        for i in range(50):
            await _call(app, "POST", f"/v2/models/client-name-{i}/infer", b"{")
            await _call(app, "POST", f"/v2/models/client-name-{i}/infer", _infer_body(4))
        await _call(app, "POST", "/v2/models/double/infer", _infer_body(4))
        await _call(app, "POST", "/v2/models/double/infer", b"{")

    asyncio.run(requests())
    labels = {s.labels["model"] for m in engine.metrics.requests.collect() for s in m.samples}
    assert labels == {"_unknown", "double"}
    def counted(model: str, outcome: str) -> float | None:
        return engine.metrics.registry.get_sample_value(
            "surge_requests_total", {"model": model, "outcome": outcome, "protocol": "http"})

    assert counted("_unknown", "bad_request") == 50
    assert counted("_unknown", "not_found") == 50
    assert counted("double", "bad_request") == 1


def test_failed_load_answers_400_with_the_reason() -> None:
    status, body = asyncio.run(_call(V2App(FakeEngine()), "POST",
                                     "/v2/repository/models/broken/load"))
    assert status == 400
    assert orjson.loads(body)["error"] == \
        "failed to load: broken/1/model.onnx: not a valid ONNX model"


def test_error_bodies_are_bounded() -> None:
    body = orjson.dumps({"inputs": [{"name": "x" * 1_000_000, "datatype": "FP32",
                                     "shape": [1], "data": [1.0]}],
                         "parameters": {"priority": "p" * 1_000_000}})
    status, answer = asyncio.run(_call(V2App(FakeEngine()), "POST", "/v2/models/double/infer",
                                       body))
    assert status == 400
    assert len(answer) < 1500
    assert "more characters]" in orjson.loads(answer)["error"] or len(answer) < 400


class EvictingEngine(FakeEngine):
    """Answers as version 3 of `double`, then evicts it before the front end goes on."""

    def __init__(self) -> None:
        super().__init__()
        self.evicted = False

    def model(self, name: str, version: int | None = None) -> _Handle:
        if self.evicted:
            raise NotFoundError(f"model {name!r} is not loaded: unloaded to fit the memory budget")
        return super().model(name, version)

    async def infer(self, name: str, version: int | None, inputs: dict[str, np.ndarray],
                    **_: Any) -> dict[str, np.ndarray]:
        outputs = await super().infer(name, version, inputs)
        route = request_route.get()
        assert route is not None
        route.version = 3  # as the served model records it
        self.evicted = True
        return outputs


def test_an_answer_computed_before_an_eviction_is_delivered() -> None:
    status, body = asyncio.run(_call(V2App(EvictingEngine()), "POST", "/v2/models/double/infer",
                                     _infer_body(4)))
    assert status == 200, body
    answer = orjson.loads(body)
    assert answer["model_version"] == "3"
    assert answer["outputs"][0]["data"] == [2.0] * 4
