"""A sequence model under a queue policy that never fails a request for its own `timeout`
(`timeout_action: delay`, or `allow_timeout_override: false`): a request that waits for its
sequence's earlier request past its `timeout` is still answered, with the right running sum,
instead of a 504 from the wait for the earlier request."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from tests.integration.server.conftest import ServerProcess, start_server
from tests.integration.server.sequence_models import accumulator_repository

pytestmark = pytest.mark.timeout(120)

# A batch waits up to 400 ms for company: the first request of a sequence holds the sequence
# that long, and the second (with a 20 ms timeout) waits for it well past its timeout.
CONFIG = """\
max_batch_size: 8
instances: 1
threads: 1
batching: {{max_queue_delay_ms: 400}}
queue: {queue}
sequence_batching:
  max_sequence_idle_ms: 60000
  state: [{{input: state_in, output: state_out}}]
"""
QUEUES = {"delayed": "{timeout_action: delay}",
          "ignored": "{allow_timeout_override: false}",
          "level": "{priorities: {3: {timeout_action: delay}}}"}
PRIORITY = {"level": 3}
# Each test has models of its own: a model's measured arrival gaps would let its batches go
# without the wait that holds the sequence.
REJECTING = "level-default"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("sequence-delay-repo")
    for name, queue in {**QUEUES, REJECTING: QUEUES["level"]}.items():
        accumulator_repository(repo, name, CONFIG.format(queue=queue))
    proc = start_server(repo, tmp_path_factory.mktemp("log") / "server.log")
    yield proc
    assert proc.stop() == 0, proc.output()[-3000:]


def _body(value: float, **parameters: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [value] * 2}],
            "parameters": parameters}


async def _two_in_a_row(served: ServerProcess, model: str, priority: int = 0
                        ) -> list[httpx.Response]:
    """Sequence 9's start, and its next request (timeout 20 ms, `priority`) sent while the
    start waits."""
    async with httpx.AsyncClient(base_url=served.http, timeout=30) as client:
        url = f"/v2/models/{model}/infer"
        first = asyncio.ensure_future(client.post(url, json=_body(1.0, sequence_id=9,
                                                                   sequence_start=True)))
        await asyncio.sleep(0.1)
        second = client.post(url, json=_body(2.0, sequence_id=9, timeout=20_000,
                                             priority=priority))
        return list(await asyncio.gather(first, second))


@pytest.mark.parametrize("model", sorted(QUEUES))
def test_a_request_waiting_for_its_sequence_is_not_failed_for_its_timeout(
        served: ServerProcess, model: str) -> None:
    first, second = asyncio.run(_two_in_a_row(served, model, PRIORITY.get(model, 0)))
    assert first.status_code == 200, first.text
    assert second.status_code == 200, second.text
    assert json.loads(second.text)["outputs"][0]["data"] == [3.0, 3.0]


def test_a_level_that_rejects_still_bounds_the_wait(served: ServerProcess) -> None:
    """A model that delays priority 3 only: a default-priority request keeps the 504."""
    _, second = asyncio.run(_two_in_a_row(served, REJECTING))
    assert second.status_code == 504, second.text
    assert "while it waited for the earlier requests of sequence 9" in second.text
