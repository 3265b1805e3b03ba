"""TFLite (LiteRT), OpenVINO and ONNX Runtime's providers, each against its own framework."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from surge.errors import ModelLoadError
from surge.repository import Repository
from surge.runtimes import RunnerOptions, load_runner
from surge.runtimes.onnx_runner import OnnxRunner, parse_device, select_providers
from surge.runtimes.tflite_runner import Quantization, TfliteRunner
from tests.unit.formats.builders import build_openvino_ir, tiny_onnx


def test_tflite_fp32_equals_litert(tf_models: Path) -> None:
    runner = load_runner(tf_models / "model.tflite")
    assert isinstance(runner, TfliteRunner)
    specs = [(s.name, s.datatype, s.shape) for s in runner.signature.inputs]
    assert specs == [("image", "FP32", (-1, 8, 8, 3))]
    assert runner.signature.batched
    got = runner.run({"image": np.load(tf_models / "inputs.npy")})["logits"]
    np.testing.assert_allclose(got, np.load(tf_models / "expected.npz")["tflite"], atol=1e-5)


def test_tflite_int8_takes_and_returns_floats_with_the_models_quantization(tf_models: Path) -> None:
    runner = TfliteRunner(tf_models / "model_int8.tflite")
    assert runner.signature.inputs[0].datatype == "FP32"
    assert runner.signature.outputs[0].datatype == "FP32"
    assert set(runner.quantized) == {"image", "logits"}
    expected = np.load(tf_models / "expected.npz")
    got = runner.run({"image": np.load(tf_models / "inputs.npy")})["logits"]
    np.testing.assert_allclose(got, expected["tflite_int8"], atol=1e-6)  # exactly LiteRT's own
    assert np.abs(got - expected["tf"]).max() < 0.1  # and close to the fp32 model


def test_quantization_rounds_clips_and_inverts() -> None:
    q = Quantization(np.dtype(np.int8), scale=0.5, zero_point=-10)
    values = np.array([0.0, 1.26, -100.0, 100.0], np.float32)
    ints = q.quantize(values)
    assert ints.tolist() == [-10, -7, -128, 127]
    np.testing.assert_allclose(q.dequantize(ints), [0.0, 1.5, -59.0, 68.5])


def test_corrupt_tflite_is_refused_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "model.tflite"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match=r"model\.tflite: not a TFLite flat buffer"):
        load_runner(bad)


def test_truncated_tflite_is_refused_naming_the_file(tf_models: Path, tmp_path: Path) -> None:
    bad = tmp_path / "model.tflite"
    bad.write_bytes((tf_models / "model.tflite").read_bytes()[:200])
    with pytest.raises(ModelLoadError, match=r"model\.tflite: LiteRT cannot load it"):
        load_runner(bad)


def test_openvino_ir_equals_onnx_runtime_on_the_same_network(tmp_path: Path) -> None:
    xml = build_openvino_ir(tmp_path / "ir")
    runner = load_runner(xml)
    assert runner.signature.platform == "openvino"
    assert runner.signature.batched
    assert [(s.name, s.datatype, s.shape) for s in runner.signature.inputs] == [("x", "FP32", (-1, 4))]
    x = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    reference = OnnxRunner(tiny_onnx(tmp_path / "ref.onnx")).run({"x": x})["y"]
    np.testing.assert_allclose(runner.run({"x": x})["y"], reference, atol=1e-5)


def test_openvino_ir_without_its_weights_is_refused(tmp_path: Path) -> None:
    xml = build_openvino_ir(tmp_path / "ir")
    xml.with_suffix(".bin").unlink()
    with pytest.raises(ModelLoadError, match=r"model\.xml: OpenVINO IR needs its weights file model\.bin"):
        load_runner(xml)


def test_corrupt_openvino_ir_is_refused_naming_the_file(tmp_path: Path) -> None:
    xml = build_openvino_ir(tmp_path / "ir")
    xml.write_text("<net><layers>")
    with pytest.raises(ModelLoadError, match=r"model\.xml: OpenVINO cannot read it") as refused:
        load_runner(xml)
    # what is wrong, not the C++ file that threw ("Exception from src/inference/...")
    assert "Exception from" not in str(refused.value)


def _repo(tmp_path: Path, config: str) -> Repository:
    (tmp_path / "m" / "1").mkdir(parents=True)
    tiny_onnx(tmp_path / "m" / "1" / "model.onnx")
    (tmp_path / "m" / "config.yaml").write_text(config)
    return Repository(tmp_path)


def test_engine_openvino_serves_an_onnx_file(tmp_path: Path) -> None:
    model = _repo(tmp_path, "engine: openvino\n").load("m")
    assert model.signature.platform == "openvino"
    x = np.ones((2, 4), np.float32)
    expected = OnnxRunner(model.path).run({"x": x})["y"]
    np.testing.assert_allclose(model.runner.run({"x": x})["y"], expected, atol=1e-5)


def test_repository_serves_ir_and_tflite_by_file_layout(tmp_path: Path, tf_models: Path) -> None:
    build_openvino_ir(tmp_path / "ir" / "1")
    (tmp_path / "lite" / "1").mkdir(parents=True)
    shutil.copy(tf_models / "model.tflite", tmp_path / "lite" / "1" / "model.tflite")
    repo = Repository(tmp_path)
    assert repo.load("ir").signature.platform == "openvino"
    assert repo.load("lite").signature.platform == "tflite"


def test_tensorrt_without_its_provider_falls_back_to_cpu_and_says_so(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "surge.runtimes.onnx_runner"):
        chosen = select_providers("tensorrt:1", ["CPUExecutionProvider"])
    assert chosen == [("CPUExecutionProvider", {})]
    assert "TensorrtExecutionProvider, CUDAExecutionProvider not available" in caplog.text
    assert "falling back to CPUExecutionProvider" in caplog.text


def test_gpu_providers_come_first_with_their_device_id() -> None:
    available = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert select_providers("tensorrt:1", available) == [
        ("TensorrtExecutionProvider", {"device_id": "1"}), ("CUDAExecutionProvider", {"device_id": "1"}),
        ("CPUExecutionProvider", {})]
    assert select_providers("auto", available)[0] == ("CUDAExecutionProvider", {"device_id": "0"})
    assert select_providers("cpu", available) == [("CPUExecutionProvider", {})]
    assert select_providers("openvino", ["OpenVINOExecutionProvider", "CPUExecutionProvider"])[0] == (
        "OpenVINOExecutionProvider", {})


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "openvino:1", "tpu:0"])
def test_unknown_devices_are_refused(device: str) -> None:
    with pytest.raises(ModelLoadError, match="is not one of auto, cpu"):
        parse_device(device)


def test_session_logs_what_runs_where(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, "surge.runtimes.onnx_runner"):
        runner = OnnxRunner(tiny_onnx(tmp_path / "m.onnx"), RunnerOptions(device="tensorrt"))
    assert runner.device == "cpu"
    assert "m.onnx: ONNX Runtime runs it on CPUExecutionProvider (device tensorrt)" in caplog.text
