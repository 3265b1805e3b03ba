"""Triton's generate extension against a real server with two front ends: a numeric model and
a text pipeline answered as plain JSON, `generate_stream` as one Server-Sent Event, errors as
statuses with a JSON `error`, and the API key's inference scope."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.integration.server.conftest import API_KEY, ServerProcess, start_server

AUTH = {"Authorization": f"Bearer {API_KEY}"}
TEXT_PIPELINE = """\
kind: pipeline
max_batch_size: 8
inputs: [{name: text, datatype: BYTES, shape: [-1, 1]}]
outputs:
  - {name: shout, datatype: BYTES, shape: [-1, 1]}
  - {name: length, datatype: INT64, shape: [-1, 1]}
steps:
  - {name: shout, processor: "text_steps:shout", inputs: {text: text},
     outputs: {shout: shout, length: length}}
"""


@pytest.fixture(scope="module")
def served(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("generate")
    repo = root / "repo"
    shutil.copytree(tiny_repo, repo)
    (repo / "words").mkdir()
    (repo / "words" / "config.yaml").write_text(TEXT_PIPELINE)
    server = start_server(repo, root / "server.log", "--frontends", "2", api_key=API_KEY)
    yield server
    assert server.stop() == 0, server.output()


@pytest.fixture
def client(served: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.http, headers=AUTH, timeout=30) as http:
        yield http


def test_a_numeric_model_answers_plain_json(client: httpx.Client) -> None:
    answer = client.post("/v2/models/tiny/generate", json={"x": [1, 2, 3, 4], "n": [1, 2, 3]})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == {"model_name": "tiny", "model_version": "1", "variant": "original",
                             "y": [2.0, 3.0, 4.0, 5.0], "m": [2, 4, 6]}


def test_a_text_pipeline_takes_and_answers_strings(client: httpx.Client) -> None:
    answer = client.post("/v2/models/words/generate",
                         json={"text": "héllo", "id": "r1", "parameters": {"priority": 1}})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"model_name": "words", "model_version": "1", "id": "r1",
                             "shout": "HÉLLO", "length": 5}


def test_generate_stream_sends_the_answer_as_one_event(client: httpx.Client) -> None:
    with client.stream("POST", "/v2/models/words/versions/1/generate_stream",
                       json={"text": "hi"}) as answer:
        body = answer.read().decode()
    assert answer.status_code == 200, body
    assert answer.headers["content-type"] == "text/event-stream; charset=utf-8"
    events = [line for line in body.split("\n\n") if line]
    assert len(events) == 1
    assert events[0].startswith("data: ")
    assert json.loads(events[0][len("data: "):])["shout"] == "HI"


def test_generate_counts_in_the_models_statistics(client: httpx.Client) -> None:
    """Each front end keeps its own statistics: the requests are sent until the one that
    answers the statistics has counted one (a request lands on either)."""
    for _ in range(40):
        assert client.post("/v2/models/words/generate", json={"text": "a"}).status_code == 200
        stats = client.get("/v2/models/words/stats").json()["model_stats"][0]
        if stats["inference_count"] > 0:
            return
    pytest.fail(f"no front end counted a generate request: {stats}")


@pytest.mark.parametrize(("path", "body", "status", "message"), [
    ("/v2/models/tiny/generate", {"x": [1, 2, 3, 4]}, 400, "missing input 'n'"),
    ("/v2/models/tiny/generate", {"x": [1, 2, 3, 4], "n": [1, 2, 3], "typo": 1}, 400,
     "unknown input 'typo'"),
    ("/v2/models/tiny/generate", {"x": [1, 2, 3], "n": [1, 2, 3]}, 400,
     "input 'x': 3 value(s) do not fill its shape [-1, 4]"),
    ("/v2/models/tiny/generate", {"x": [[1, 2], [3, 4, 5]], "n": [1, 2, 3]}, 400, "ragged"),
    ("/v2/models/tiny/generate", {"x": ["a", "b", "c", "d"], "n": [1, 2, 3]}, 400,
     "does not hold FP32 values"),
    ("/v2/models/words/generate_stream", {"text": 5}, 400, "BYTES data must be strings"),
    ("/v2/models/tiny/generate", {"x": [1, 2, 3, 4], "n": [1, 2, 3],
                                  "parameters": {"variant": "fast"}}, 400, "variant"),
    ("/v2/models/nope/generate", {"x": 1}, 404, "model 'nope'"),
    ("/v2/models/tiny/versions/7/generate", {"x": 1}, 404, "no served version 7"),
])
def test_bad_requests_get_a_status_and_a_json_error(client: httpx.Client, path: str,
                                                    body: dict, status: int,
                                                    message: str) -> None:
    answer = client.post(path, json=body)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert message in answer.json()["error"]


def test_generate_needs_the_key_and_post(served: ServerProcess, client: httpx.Client) -> None:
    body = {"text": "a"}
    assert httpx.post(f"{served.http}/v2/models/words/generate", json=body,
                      timeout=30).status_code == 401
    wrong = httpx.post(f"{served.http}/v2/models/words/generate", json=body, timeout=30,
                       headers={"Authorization": "Bearer wrong"})
    assert wrong.status_code == 401
    get = client.get("/v2/models/words/generate")
    assert (get.status_code, get.headers["allow"]) == (405, "POST")


def test_the_openapi_description_lists_the_generate_routes(client: httpx.Client) -> None:
    paths = client.get("/v2/openapi.json").json()["paths"]
    assert {"/v2/models/{model}/generate", "/v2/models/{model}/generate_stream",
            "/v2/models/{model}/versions/{version}/generate_stream"} <= set(paths)
