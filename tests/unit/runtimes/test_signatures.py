import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from surge.errors import InputError, ModelLoadError
from surge.runtimes import load_runner
from tests.unit.tiny_models import write_onnx, write_pt2


def test_onnx_signature_has_dynamic_batch(tmp_path: Path) -> None:
    runner = load_runner(write_onnx(tmp_path / "m.onnx"))
    sig = runner.signature
    assert sig.batched
    assert [(s.name, s.datatype, s.shape) for s in sig.inputs] == [("x", "FP32", (-1, 4))]
    assert [(s.name, s.datatype, s.shape) for s in sig.outputs] == [("y", "FP32", (-1, 4))]
    out = runner.run({"x": np.ones((3, 4), np.float32)})["y"]
    np.testing.assert_allclose(out, np.full((3, 4), 3.0))


def test_pt2_signature_and_run(tmp_path: Path) -> None:
    runner = load_runner(write_pt2(tmp_path / "m.pt2"))
    sig = runner.signature
    assert sig.batched
    assert sig.inputs[0].name == "x"
    assert sig.inputs[0].shape == (-1, 4)
    assert sig.outputs[0].shape == (-1, 4)
    out = runner.run({"x": np.ones((5, 4), np.float32)})
    np.testing.assert_allclose(next(iter(out.values())), np.full((5, 4), 3.0), rtol=1e-6)


def test_keras_signature_and_run(tmp_path: Path) -> None:
    from surge.runtimes.keras_runner import import_keras

    keras = import_keras()
    inputs = keras.Input(shape=(6,), name="features")
    outputs = keras.layers.Dense(3, name="scores")(inputs)
    model = keras.Model(inputs, outputs)
    path = tmp_path / "model.keras"
    model.save(path)
    runner = load_runner(path)
    sig = runner.signature
    assert sig.batched
    assert sig.inputs[0].shape == (-1, 6)
    assert sig.outputs[0].shape == (-1, 3)
    x = np.random.default_rng(0).random((2, 6), dtype=np.float32)
    got = runner.run({sig.inputs[0].name: x})[sig.outputs[0].name]
    want = np.asarray(model.predict(x, verbose=0))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_validate_inputs_names_expected_and_actual(tmp_path: Path) -> None:
    sig = load_runner(write_onnx(tmp_path / "m.onnx")).signature
    with pytest.raises(InputError, match=r"input 'x' expects FP32 \[-1, 4\], got INT64 \[2, 4\]"):
        sig.validate_inputs({"x": np.ones((2, 4), np.int64)})
    with pytest.raises(InputError, match=r"expects FP32 \[-1, 4\], got FP32 \[2, 5\]"):
        sig.validate_inputs({"x": np.ones((2, 5), np.float32)})
    with pytest.raises(InputError, match="missing input"):
        sig.validate_inputs({})
    with pytest.raises(InputError, match="unknown input 'z'"):
        sig.validate_inputs({"x": np.ones((2, 4), np.float32), "z": np.ones(1)})


def test_unknown_suffix_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "model.bin"
    bad.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="unknown model file type"):
        load_runner(bad)
    with pytest.raises(ModelLoadError, match="not found"):
        load_runner(tmp_path / "absent.onnx")


def test_corrupt_onnx_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelLoadError, match=r"model.onnx: not a valid ONNX model"):
        load_runner(bad)


@pytest.mark.parametrize("datatype", ["FP32", "FP16", "BF16", "FP64", "INT8", "UINT8", "INT16",
                                      "UINT16", "INT32", "UINT32", "INT64", "UINT64", "BOOL",
                                      "BYTES"])
def test_onnx_signature_names_each_datatype(tmp_path: Path, datatype: str) -> None:
    """Read from the session: every element type, fixed, named and unnamed dims, and the
    initializer that is also a graph input left out."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    element = {"FP32": TensorProto.FLOAT, "FP64": TensorProto.DOUBLE,
               "BYTES": TensorProto.STRING}.get(datatype, getattr(TensorProto, datatype, None))
    element = element if element is not None else getattr(
        TensorProto, {"FP16": "FLOAT16", "BF16": "BFLOAT16"}[datatype])
    weight = numpy_helper.from_array(np.ones((1,), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"]), helper.make_node("Identity", ["w"], ["v"])],
        "identity",
        [helper.make_tensor_value_info("x", element, ["batch", 3, None]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", element, ["batch", 3, None]),
         helper.make_tensor_value_info("v", TensorProto.FLOAT, [1])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "model.onnx")
    signature = load_runner(tmp_path / "model.onnx").signature
    assert [(s.name, s.datatype, s.shape) for s in signature.inputs] == [
        ("x", datatype, (-1, 3, -1))]
    assert [(s.name, s.datatype, s.shape) for s in signature.outputs] == [
        ("y", datatype, (-1, 3, -1)), ("v", "FP32", (1,))]
    assert not signature.batched  # v has no batch dim


def test_onnx_bytes_tensors_round_trip(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["echo"])], "echo",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch", 2])],
        [helper.make_tensor_value_info("echo", TensorProto.STRING, ["batch", 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "echo.onnx")
    runner = load_runner(tmp_path / "echo.onnx")
    assert runner.signature.inputs[0].datatype == "BYTES"
    words = np.array([[b"ab", "é".encode()], [b"", b"z"]], dtype=object)
    echo = runner.run({"text": words})["echo"]
    assert echo.tolist() == words.tolist()
    with pytest.raises(InputError, match="UTF-8"):
        runner.run({"text": np.array([[b"\xff", b"a"]], dtype=object)})


def test_loading_an_onnx_model_leaves_the_onnx_package_unimported(tmp_path: Path) -> None:
    """Its import (ml_dtypes) cost each worker a second of CPU before it could load a model."""
    write_onnx(tmp_path / "model.onnx")
    script = ("import sys; from surge.runtimes import load_runner; "
              f"load_runner({str(tmp_path / 'model.onnx')!r}); "
              "print(sorted(m for m in ('onnx', 'ml_dtypes') if m in sys.modules))")
    shown = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           timeout=120, check=True).stdout
    assert shown.strip() == "[]"
