"""Every format served by a real `surge serve` and queried with tritonclient, against the
framework's own runtime: TensorFlow SavedModel and TF-Keras .h5 (converted), TFLite fp32 and
int8 (LiteRT), OpenVINO IR, Caffe (converted), and an ONNX model on the OpenVINO engine."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from tests.integration.server.conftest import ServerProcess, start_server, triton_client
from tests.unit.formats.builders import build_openvino_ir, tiny_onnx

from surge.runtimes.openvino_runner import OpenVinoRunner

HERE = Path(__file__).resolve().parent
# model -> (files in its version directory, input, output)
LAYOUT = {
    "tf-savedmodel": (("tf", "model.savedmodel", "model.savedmodel"),),
    "tf-h5": (("tf", "model.h5", "model.h5"),),
    "tflite": (("tf", "model.tflite", "model.tflite"),),
    "tflite-int8": (("tf", "model_int8.tflite", "model.tflite"),),
    "caffe": (("caffe", "deploy.prototxt", "deploy.prototxt"),
              ("caffe", "model.caffemodel", "model.caffemodel")),
}


@pytest.fixture(scope="module")
def sources(tf_models: Path, caffe_model: Path) -> dict[str, Path]:
    """The session's TensorFlow and Caffe models (tests/conftest.py), built once for this and
    the unit format tests."""
    return {"tf": tf_models, "caffe": caffe_model}


@pytest.fixture(scope="module")
def repo(sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    for model, files in LAYOUT.items():
        version = root / model / "1"
        version.mkdir(parents=True)
        for kind, name, target in files:
            copy = shutil.copytree if (sources[kind] / name).is_dir() else shutil.copy
            copy(sources[kind] / name, version / target)
    build_openvino_ir(root / "openvino-ir" / "1")
    (root / "onnx-on-openvino" / "1").mkdir(parents=True)
    tiny_onnx(root / "onnx-on-openvino" / "1" / "model.onnx")
    (root / "onnx-on-openvino" / "config.yaml").write_text("engine: openvino\n")
    return root


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(repo, tmp_path_factory.mktemp("log") / "server.log", timeout=300)
    yield proc
    assert proc.stop() == 0, proc.output()


def _expected(sources: dict[str, Path], repo: Path,
              work: Path) -> dict[str, tuple[str, str, Path, np.ndarray]]:
    tf, caffe = sources["tf"], sources["caffe"]
    tf_out = np.load(tf / "expected.npz")
    x = np.random.default_rng(3).standard_normal((6, 4)).astype(np.float32)
    np.save(work / "x.npy", x)
    openvino = {m: OpenVinoRunner(p).run({"x": x})["y"] for m, p in (
        ("openvino-ir", repo / "openvino-ir" / "1" / "model.xml"),
        ("onnx-on-openvino", repo / "onnx-on-openvino" / "1" / "model.onnx"))}
    return {
        "tf-savedmodel": ("image", "logits", tf / "inputs.npy", tf_out["tf"]),
        "tf-h5": ("image", "logits", tf / "inputs.npy", tf_out["tf"]),
        "tflite": ("image", "logits", tf / "inputs.npy", tf_out["tflite"]),
        "tflite-int8": ("image", "logits", tf / "inputs.npy", tf_out["tflite_int8"]),
        "caffe": ("data", "prob", caffe / "inputs.npy", np.load(caffe / "expected.npy")),
        "openvino-ir": ("x", "y", work / "x.npy", openvino["openvino-ir"]),
        "onnx-on-openvino": ("x", "y", work / "x.npy", openvino["onnx-on-openvino"]),
    }


def test_each_format_served_equals_its_own_framework(
        server: ServerProcess, sources: dict[str, Path], repo: Path, tmp_path: Path) -> None:
    expected = _expected(sources, repo, tmp_path)
    jobs = [{"model": m, "input": i, "output": o, "inputs": str(p)} for m, (i, o, p, _) in expected.items()]
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    done = triton_client(str(HERE / "clients" / "infer_formats.py"), server.http.removeprefix("http://"),
                         server.grpc, str(tmp_path / "jobs.json"), str(tmp_path / "out.npz"))
    assert done.returncode == 0, done.stderr[-3000:] + server.output()[-3000:]
    got = np.load(tmp_path / "out.npz")
    for model, (*_, reference) in expected.items():
        for protocol in ("http", "grpc"):
            np.testing.assert_allclose(got[f"{protocol}/{model}"], reference, atol=1e-5,
                                       err_msg=f"{model} over {protocol}")
    platforms = {m: str(got[f"platform/{m}"]) for m in expected}
    assert platforms["tflite"] == "tflite"
    assert platforms["openvino-ir"] == "openvino"
    assert platforms["onnx-on-openvino"] == "openvino"
    assert platforms["tf-h5"] == "onnxruntime_onnx"
    assert (repo / "tf-savedmodel" / "1" / "converted" / "conversion.yaml").is_file()
