"""A model whose output is BF16 is answered BF16, with its values, every way an answer goes.

Engines return bfloat16 outputs as their raw 2-byte words (uint16), which lose any dtype label
on their way back from a worker process: responses named the output UINT16, so that a client
(tritonclient reads BF16 as float32) read the words as integers, while the model's metadata
said BF16.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from tests.integration.server.conftest import triton_client
from tests.unit.runtimes.test_engine_edges import ToBf16, _pt2
from torch.export import Dim

from surge.api import BackgroundServer, start_server
from surge.server.process import ServeOptions

pytestmark = pytest.mark.timeout(240)

CLIENT = str(Path(__file__).parent / "clients" / "triton_bf16.py")
X = np.array([[0.5, 1.5, -2.0, 3.25], [1.0, 2.0, 3.0, 0.1]], dtype=np.float32)  # the client's
EXPECTED = torch.from_numpy(X).to(torch.bfloat16) * 1.5  # what ToBf16 computes
VALUES = EXPECTED.float().numpy()
WORDS = EXPECTED.view(torch.int16).numpy().view(np.uint16)

# A pipeline answering with the model's BF16 output.
PIPELINE = """kind: pipeline
max_batch_size: 8
inputs:
- {name: x, datatype: FP32, shape: [-1, 4]}
outputs:
- {name: y, datatype: BF16, shape: [-1, 4]}
steps:
- {name: scale, model: bf, inputs: {x: x}, outputs: {output: y}}
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    repo = tmp_path_factory.mktemp("repo")
    (repo / "bf" / "1").mkdir(parents=True)
    _pt2(repo / "bf" / "1" / "model.pt2", ToBf16(), (torch.zeros(2, 4),),
         ({0: Dim("batch")},))
    (repo / "bf-pipeline").mkdir()
    (repo / "bf-pipeline" / "config.yaml").write_text(PIPELINE)
    with start_server(repo, ServeOptions(http_port=0, grpc_port=0, metrics_port=0)) as server:
        yield server


@pytest.fixture(scope="module")
def answers(served: BackgroundServer) -> dict:
    endpoints = served.endpoints
    result = triton_client(CLIENT, endpoints.http.removeprefix("http://"), endpoints.grpc, "bf")
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(json.loads(result.stdout))


def test_the_model_says_its_output_is_bf16(answers: dict) -> None:
    assert [o["datatype"] for o in answers["metadata"]] == ["BF16"]


@pytest.mark.parametrize("how", ["http_json", "http_binary", "grpc"])
def test_a_bf16_output_is_answered_bf16_with_the_model_values(answers: dict, how: str) -> None:
    answer = answers[how]
    assert answer["datatype"] == "BF16", answer
    assert answer["dtype"] == "float32"  # tritonclient's reading of BF16
    np.testing.assert_array_equal(np.array(answer["values"], np.float32), VALUES)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_bf16_output_in_shared_memory_is_written_as_bf16_words(answers: dict,
                                                                 protocol: str) -> None:
    answer = answers[f"{protocol}_shared_memory"]
    assert answer["datatype"] == "BF16", answer
    np.testing.assert_array_equal(np.array(answer["words"], np.uint16), WORDS)


@pytest.mark.parametrize("model", ["bf", "bf-pipeline"])
def test_json_answer_carries_the_float_values(served: BackgroundServer, model: str) -> None:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(X.shape),
                        "data": X.reshape(-1).tolist()}]}
    response = httpx.post(f"{served.endpoints.http}/v2/models/{model}/infer", json=body)
    assert response.status_code == 200, response.text
    [output] = response.json()["outputs"]
    assert (output["datatype"], output["shape"]) == ("BF16", list(X.shape))
    assert output["data"] == VALUES.reshape(-1).tolist()


def test_label_bf16_labels_only_the_uint16_words_of_the_outputs_named() -> None:
    from surge.datatypes import BF16_WORDS, label_bf16, sent_datatype

    words = np.array([0x3F80], np.uint16)
    outputs = {"b": words, "u": words.copy(), "f": np.ones(1, np.float32)}
    labelled = label_bf16(outputs, frozenset({"b", "f", "missing"}))
    assert {name: sent_datatype(a) for name, a in labelled.items()} == {
        "b": "BF16", "u": "UINT16", "f": "FP32"}
    assert labelled["b"].dtype == BF16_WORDS
    assert np.shares_memory(labelled["b"], words)
    assert sent_datatype(outputs["b"]) == "UINT16"  # the engine's own dict is left as it was
