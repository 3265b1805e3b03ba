"""The recommendation entry served as it ships (`examples/recommendation/repository/dlrm`, its
config declaring each id's table range and finite dense features), with a queue delay so that
concurrent requests share batches: an id of -1, which ONNX's Gather would read as the table's
last row, and a NaN feature (binary data; JSON has no NaN) are refused with a 400 (gRPC
INVALID_ARGUMENT) naming the input, the value and the declared range, before batching; the
good requests sent with them are answered with the scores they get alone."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from tests.integration.server.conftest import ServerProcess
from tests.integration.server.dlrm_entry import (
    grpc_outcomes,
    grpc_request,
    http_binary,
    http_json,
    needs_entry,
    serve_entry,
    stats,
)

USER_RANGE = "input 'user' holds -1, but its config declares values in [0, 1999]"
DENSE_FINITE = "input 'dense' holds NaN, but its config declares finite values"

pytestmark = needs_entry


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = serve_entry(tmp_path_factory.mktemp("ranges"),
                       tmp_path_factory.mktemp("log") / "server.log", delay_ms=200.0)
    yield proc
    assert proc.stop() == 0, proc.output()


def columns(user: int, dense: float = 0.5) -> dict[str, np.ndarray]:
    return {"user": np.array([user, 3], np.int64), "item": np.array([0, 1], np.int64),
            "category": np.array([1, 2], np.int64), "dense": np.full((2, 2), dense, np.float32)}


def test_out_of_range_requests_get_400_and_those_batched_with_them_are_answered(
        server: ServerProcess) -> None:
    alone = http_binary(server, columns(7))
    assert alone.status_code == 200, alone.text
    # JSON has no NaN: a NaN comes in binary (or gRPC)
    cases = [(7, 0.5, http_json), (7, 0.5, http_binary), (-1, 0.5, http_json),
             (-1, 0.5, http_binary), (7, float("nan"), http_binary)] * 3

    def one(case: tuple) -> httpx.Response:
        user, dense, send = case
        return send(server, columns(user, dense))

    before = stats(server)
    with ThreadPoolExecutor(len(cases)) as pool:
        replies = list(pool.map(one, cases))
    after = stats(server)
    good = [case for case in cases if case[0] == 7 and case[1] == 0.5]
    assert after["inference_count"] - before["inference_count"] == 2 * len(good)  # rows
    assert after["execution_count"] - before["execution_count"] < len(good)  # shared batches
    for (user, dense, _), reply in zip(cases, replies, strict=True):
        if user == -1 or dense != dense:
            assert reply.status_code == 400, reply.text
            assert reply.json() == {"error": USER_RANGE if user == -1 else DENSE_FINITE}
        else:
            assert reply.status_code == 200, reply.text
            assert reply.json()["outputs"] == alone.json()["outputs"]


def test_grpc_refuses_an_id_of_minus_one_as_invalid_argument(server: ServerProcess) -> None:
    requests = [grpc_request(columns(user)) for user in (5, -1, 1999)]
    assert grpc_outcomes(server, requests) == ["OK", f"INVALID_ARGUMENT: {USER_RANGE}", "OK"]
