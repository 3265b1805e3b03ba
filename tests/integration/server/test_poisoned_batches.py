"""One client's poisoned ids among other clients' good ones, through a real `surge serve` of the
recommendation entry (`examples/recommendation/repository/dlrm`, batching with a queue delay so
that the requests share batches): an id past an embedding table, a negative one past it, INT64's
limits. The entry is served without its declared id ranges, so that the ids reach the tables
(test_declared_ranges.py serves it as it is). Each poisoned request gets its own 400 (gRPC
INVALID_ARGUMENT) naming the Gather that refused it; the requests batched with it are answered,
with the scores they get alone."""

from __future__ import annotations

import json
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

I64 = np.iinfo(np.int64)
BAD_USERS = [2000, -2001, int(I64.max), int(I64.min)]  # the user table has 2,000 rows

pytestmark = needs_entry


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # Without the declared inputs: their ranges would refuse these ids before the engine.
    proc = serve_entry(tmp_path_factory.mktemp("poisoned"),
                       tmp_path_factory.mktemp("log") / "server.log", delay_ms=300.0,
                       inputs=None)
    yield proc
    assert proc.stop() == 0, proc.output()


def columns(user: int, n: int = 3) -> dict[str, np.ndarray]:
    return {"user": np.full(n, user, np.int64), "item": np.arange(n, dtype=np.int64),
            "category": np.ones(n, np.int64), "dense": np.full((n, 2), 0.5, np.float32)}


def scores(reply: httpx.Response) -> list[float]:
    assert reply.status_code == 200, reply.text
    return [round(x, 5) for x in reply.json()["outputs"][0]["data"]]


def test_poisoned_ids_get_400_and_the_requests_batched_with_them_are_answered(
        server: ServerProcess) -> None:
    alone = {user: scores(http_json(server, columns(user))) for user in (3, 7, 1999)}

    def one(i: int) -> tuple[int, int, str]:
        user = BAD_USERS[i % 4] if i % 3 == 0 else (3, 7, 1999)[i % 3]
        reply = (http_binary if i % 2 else http_json)(server, columns(user))
        return user, reply.status_code, reply.text

    before = stats(server)
    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(one, range(48)))
    after = stats(server)
    assert after["execution_count"] - before["execution_count"] < 40  # they shared batches
    for user, status, text in answers:
        if user in BAD_USERS:
            assert status == 400, text
            assert "Gather" in json.loads(text)["error"]
            assert "out of data bounds" in text
        else:
            assert status == 200, text
            assert [round(x, 5) for x in json.loads(text)["outputs"][0]["data"]] == alone[user]
    assert httpx.get(f"{server.http}/v2/health/ready", timeout=10).status_code == 200


def test_grpc_poisoned_ids_are_invalid_argument_and_the_others_ok(server: ServerProcess) -> None:
    requests = [grpc_request(columns(user)) for user in [5, *BAD_USERS, 6, 7, 8]]
    codes = [outcome.split(":")[0] for outcome in grpc_outcomes(server, requests)]
    assert codes == ["OK"] + ["INVALID_ARGUMENT"] * 4 + ["OK"] * 3
