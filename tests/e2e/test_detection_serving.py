"""The trained detector served by `surge serve`: real test canvases come back with the right boxes,
malformed images get 400 with a message, and the tritonclient example draws the boxes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from tests.integration.server.conftest import ServerProcess, start_server, triton_client

from surge.repository import Repository
from surge.repository.config import read_config
from surge_examples.detection.dataset import DetectionSplit, generate_split

ROOT = Path(__file__).resolve().parents[2]
REPOSITORY = ROOT / "examples" / "repository"
MODEL = "detector"
CANVASES = 12

pytestmark = pytest.mark.skipif(not (REPOSITORY / MODEL / "1" / "model.onnx").is_file(),
                                reason="the trained detector is not in examples/repository")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("detector") / "server.log"
    proc = start_server(REPOSITORY, log, "--models", MODEL)
    yield proc
    assert proc.stop() == 0, proc.output()


@pytest.fixture(scope="module")
def canvases() -> DetectionSplit:
    return generate_split("test", CANVASES, seed=11)


def _infer(server: ServerProcess, image: list[int] | np.ndarray, shape: list[int],
           datatype: str = "UINT8") -> httpx.Response:
    data = image.ravel().tolist() if isinstance(image, np.ndarray) else image
    body = {"inputs": [{"name": "image", "shape": shape, "datatype": datatype, "data": data}]}
    return httpx.post(f"{server.http}/v2/models/{MODEL}/infer", json=body, timeout=60)


def _outputs(response: httpx.Response) -> dict[str, np.ndarray]:
    assert response.status_code == 200, response.text
    return {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in response.json()["outputs"]}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union


def test_served_boxes_equal_the_model_and_find_the_pasted_items(
        server: ServerProcess, canvases: DetectionSplit) -> None:
    threshold = float(read_config(REPOSITORY / MODEL / "config.yaml").parameters["score_threshold"])
    local = Repository(REPOSITORY).load(MODEL).runner
    found = total = 0
    for index in range(CANVASES):
        canvas = canvases.images[index:index + 1]
        served = _outputs(_infer(server, canvas, [1, 128, 128]))
        assert served["boxes"].shape == (1, 32, 4)
        expected = local.run({"image": canvas})
        np.testing.assert_allclose(served["boxes"], expected["boxes"], atol=1e-3)
        np.testing.assert_array_equal(served["labels"], expected["labels"])
        keep = served["scores"][0] >= threshold
        boxes, labels = served["boxes"][0][keep], served["labels"][0][keep]
        for gt_box, gt_label in zip(*canvases.objects_of(index), strict=True):
            total += 1
            found += any(label == gt_label and _iou(box, gt_box) >= 0.5
                         for box, label in zip(boxes, labels, strict=True))
    # The trained model finds most items (docs/detection.md has its test recall); a broken
    # pipeline (wrong scale, transposed image, shuffled outputs) finds almost nothing.
    assert found / total >= 0.75, f"{found} of {total} objects found"


@pytest.mark.parametrize(("shape", "datatype", "data", "message"), [
    ([1, 64, 64], "UINT8", [0] * 64 * 64, "expects UINT8 [-1, 128, 128]"),
    ([1, 128, 128], "FP32", [0.5] * 128 * 128, "expects UINT8 [-1, 128, 128], got FP32"),
    ([1, 128, 128], "UINT8", [], ""),
    ([0, 128, 128], "UINT8", [], ""),
])
def test_malformed_images_get_400_with_a_message(server: ServerProcess, shape: list[int],
                                                 datatype: str, data: list[float],
                                                 message: str) -> None:
    response = _infer(server, data, shape, datatype)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error
    assert message in error


def test_tritonclient_example_draws_the_returned_boxes(
        server: ServerProcess, canvases: DetectionSplit, tmp_path: Path) -> None:
    np.save(tmp_path / "canvases.npy", canvases.images)
    out = tmp_path / "boxes.png"
    result = triton_client(str(ROOT / "examples" / "detection" / "client.py"),
                           str(tmp_path / "canvases.npy"), "--index", "0",
                           "--url", server.http.removeprefix("http://"), "--out", str(out))
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "box [" in line]
    assert len(lines) >= 1
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    boxes, _ = canvases.objects_of(0)
    assert json.loads(lines[0].split("box ")[1])[2] <= 128 + 8  # pixel coordinates, not cells
    assert len(boxes) >= 1
