"""Small real models written by each framework's own tools, for the format tests.

TensorFlow and Caffe models are written by scripts run in their own venvs (`.venv-tf`,
`.venv-caffe`, made by scripts/setup.sh); tests that need one skip with the reason when the
venv is missing. OpenVINO IR comes from OpenVINO's converter in the main venv.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
VENVS = {"tf": ROOT / ".venv-tf" / "bin" / "python", "caffe": ROOT / ".venv-caffe" / "bin" / "python"}
SCRIPTS = {"tf": HERE / "tf_build.py", "caffe": HERE / "caffe_build.py"}


def _build(toolchain: str, out: Path) -> Path:
    python = VENVS[toolchain]
    if not python.is_file():
        pytest.skip(f"{python.parents[1].name} is missing (scripts/setup.sh installs it)")
    done = subprocess.run([str(python), str(SCRIPTS[toolchain]), str(out)], capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def build_tf_models(out: Path) -> Path:
    """model.savedmodel/, model.h5, model.tflite, model_int8.tflite, lambda.h5, inputs.npy and
    expected.npz (TensorFlow's and LiteRT's own outputs) in `out`."""
    return _build("tf", out)


def build_caffe_model(out: Path) -> Path:
    """deploy.prototxt, model.caffemodel, inputs.npy, expected.npy in `out`."""
    return _build("caffe", out)


def tiny_onnx(path: Path) -> Path:
    """y = relu(x @ W + b), x FP32 [batch, 4] -> y FP32 [batch, 3], dim 0 symbolic."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "W")
    bias = numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["z"]),
         helper.make_node("Relu", ["z"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], [weights, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def build_openvino_ir(directory: Path) -> Path:
    """directory/model.xml + model.bin written by OpenVINO's converter from `tiny_onnx`."""
    import openvino as ov

    directory.mkdir(parents=True, exist_ok=True)
    source = tiny_onnx(directory / "source.onnx")
    # save_model stores fp16 weights unless told not to; the tests compare against fp32 ONNX Runtime
    ov.save_model(ov.convert_model(str(source)), str(directory / "model.xml"), compress_to_fp16=False)
    source.unlink()
    return directory / "model.xml"
