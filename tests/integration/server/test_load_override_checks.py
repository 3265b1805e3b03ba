"""A load request's config override is checked as config.yaml is: `labels` against the model's
classes, no key given twice, and a version policy that selects nothing said as the repository
says it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.integration.server.models import TINY_CONFIG, make_repository, tiny_onnx

import surge
from surge.repository import Repository

TINY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]},
                   {"name": "n", "datatype": "INT64", "shape": [1, 3], "data": [1, 2, 3]}]}
NO_VERSION = "version_policy {'specific': [7]} selects nothing: version folders [1]"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`tiny` (output y: 4 classes), and `unserved`, whose config.yaml selects no version."""
    root = make_repository(tmp_path_factory.mktemp("override-checks"), with_slow=False)
    tiny_onnx(root / "unserved" / "1" / "model.onnx")
    (root / "unserved" / "config.yaml").write_text(
        TINY_CONFIG + "version_policy: {specific: [7]}\n")
    return root


@pytest.fixture(scope="module")
def url(repo: Path) -> Iterator[str]:
    options = surge.ServeOptions(http_port=0, grpc_port=0, metrics_port=0, models=("tiny",))
    with surge.start_server(repo, options) as server:
        yield server.endpoints.http


def _load(url: str, config: str | None, model: str = "tiny") -> httpx.Response:
    body = {"parameters": {"config": config}} if config is not None else None
    return httpx.post(f"{url}/v2/repository/models/{model}/load", json=body, timeout=120)


def _serves(url: str) -> bool:
    return httpx.post(f"{url}/v2/models/tiny/infer", json=TINY, timeout=30).status_code == 200


def test_labels_of_the_wrong_count_are_refused_as_in_config_yaml(url: str) -> None:
    answer = _load(url, json.dumps({"labels": ["a", "b", "c"]}))
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert ("model 'tiny': the load's config override gives 3 labels, but its output 'y' "
            "(model.onnx) has 4 classes") in error, error
    assert _serves(url)  # what was served stays
    answer = _load(url, json.dumps({"labels": ["a", "b", "c", "d"]}))
    assert answer.status_code == 200, answer.text
    assert _serves(url)


@pytest.mark.parametrize(("text", "key"), [
    ('{"instances": 1, "instances": 2}', "'instances'"),
    ('{"batching": {"max_queue_delay_ms": 1, "max_queue_delay_ms": 2}}', "'max_queue_delay_ms'"),
    ('{"labels": ["a", "b", "c", "d"], "parameters": {"k": {"z": 1, "z": 1}}}', "'z'"),
])
def test_a_key_given_twice_is_refused_by_name(url: str, text: str, key: str) -> None:
    answer = _load(url, text)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert f"key {key} is given twice" in error, error
    assert _serves(url)


def test_a_policy_that_selects_nothing_is_said_as_the_repository_says_it(url: str,
                                                                        repo: Path) -> None:
    answer = _load(url, json.dumps({"version_policy": {"specific": [7]}}))
    assert answer.status_code == 400, answer.text
    assert f"tiny/config.yaml: {NO_VERSION}" in answer.json()["error"], answer.text
    assert _serves(url)
    # config.yaml's own policy: the load says what the repository index says, word for word
    reason = {e.name: e.reason for e in Repository(repo).entries()}["unserved"]
    assert reason == f"unserved/config.yaml: {NO_VERSION}"
    answer = _load(url, None, "unserved")
    assert answer.status_code == 400, answer.text
    assert reason in answer.json()["error"], answer.text


@pytest.mark.parametrize(("text", "key"), [
    ('{"parameters": {"config": {"instances": 1, "instances": 2}}}', "'instances'"),
    ('{"parameters": {"config": {"labels": ["a", "b", "c", "d"]}}, "parameters": {}}',
     "'parameters'"),
])
def test_a_key_given_twice_in_an_override_object_is_refused(url: str, text: str,
                                                            key: str) -> None:
    """The override may be an object rather than a JSON string: its keys are checked too."""
    answer = httpx.post(f"{url}/v2/repository/models/tiny/load", content=text,
                        headers={"content-type": "application/json"}, timeout=120)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert f"request body: key {key} is given twice" in error, error
    assert _serves(url)
