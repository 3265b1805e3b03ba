"""TensorFlow SavedModel, TF-Keras .h5 and Caffe models: converted, checked, cached, refused."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml

from surge.convert import convert, find_source
from surge.convert.onnx_fixups import drop_initializer_inputs, make_batch_dynamic
from surge.errors import ModelLoadError
from surge.repository import Repository
from surge.runtimes.onnx_runner import OnnxRunner
from tests.cli_runner import run_cli
from tests.unit.formats.builders import tiny_onnx


def _repo(tmp_path: Path, name: str, *files: Path) -> Repository:
    version = tmp_path / name / "1"
    version.mkdir(parents=True)
    for file in files:
        copy = shutil.copytree if file.is_dir() else shutil.copy
        copy(file, version / ("model" + file.suffix if file.suffix != ".prototxt" else file.name))
    return Repository(tmp_path)


@pytest.mark.parametrize("source", ["model.savedmodel", "model.h5"])
def test_tensorflow_model_is_served_from_its_checked_conversion(
        tf_models: Path, tmp_path: Path, source: str) -> None:
    model = _repo(tmp_path, "m", tf_models / source).load("m")
    assert model.path == tmp_path / "m" / "1" / "converted" / "model.onnx"
    specs = [(s.name, s.datatype, s.shape) for s in model.signature.inputs]
    assert specs == [("image", "FP32", (-1, 8, 8, 3))]
    assert model.signature.output_names == ["logits"]
    assert model.signature.batched
    got = model.runner.run({"image": np.load(tf_models / "inputs.npy")})["logits"]
    np.testing.assert_allclose(got, np.load(tf_models / "expected.npz")["tf"], atol=1e-5)
    record = yaml.safe_load((model.path.parent / "conversion.yaml").read_text())
    assert record["converter"].startswith("tf2onnx")
    assert record["parity"][0]["inputs"] == "random"
    assert record["parity"][0]["max_abs"] < 1e-4


def test_conversion_is_cached_until_the_source_changes(tf_models: Path, tmp_path: Path) -> None:
    _repo(tmp_path, "m", tf_models / "model.h5")
    source = find_source(tmp_path / "m" / "1")
    assert source is not None
    first = convert(source)
    assert not first.cached
    assert convert(source).cached
    with (tmp_path / "m" / "1" / "model.h5").open("ab") as handle:
        handle.write(b"\0")  # HDF5 ignores trailing bytes; the fingerprint does not
    assert not convert(source).cached


def test_cli_convert_records_parity_on_real_inputs(tf_models: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    _repo(tmp_path, "m", tf_models / "model.savedmodel")
    code, out, err = run_cli(["convert", str(tmp_path), "--model", "m", "--data",
                              str(tf_models / "inputs.npy")], capsys)
    assert code == 0, err
    assert "against TensorFlow" in out
    record = yaml.safe_load((tmp_path / "m" / "1" / "converted" / "conversion.yaml").read_text())
    assert [p["inputs"] for p in record["parity"]] == ["random", "real"]
    assert record["parity"][1]["rows"] == 3


def test_cli_convert_without_a_convertible_model_is_a_one_line_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    tiny_onnx(tmp_path / "m" / "1" / "model.onnx")
    code, _, err = run_cli(["convert", str(tmp_path), "--model", "m"], capsys)
    assert code == 2
    assert "nothing to convert" in err
    assert len(err.strip().splitlines()) == 1


def test_h5_with_a_lambda_layer_is_refused_before_it_is_loaded(tf_models: Path, tmp_path: Path) -> None:
    shutil.copy(tf_models / "lambda.h5", tmp_path / "model.h5")
    repo = _repo(tmp_path / "repo", "m", tmp_path / "model.h5")
    with pytest.raises(ModelLoadError, match=r"model\.h5: refused to load: a Lambda layer"):
        repo.load("m")


def test_corrupt_h5_is_refused_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "model.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(ModelLoadError, match=r"model\.h5: not a readable HDF5 file"):
        _repo(tmp_path / "repo", "m", tmp_path / "model.h5").load("m")


def test_savedmodel_without_its_graph_is_refused(tmp_path: Path) -> None:
    (tmp_path / "m" / "1" / "model.savedmodel" / "variables").mkdir(parents=True)
    with pytest.raises(ModelLoadError, match=r"model\.savedmodel: not a TensorFlow SavedModel: "
                                             r"saved_model\.pb is missing"):
        Repository(tmp_path).load("m")


def test_savedmodel_with_a_corrupt_graph_is_refused(tf_models: Path, tmp_path: Path) -> None:
    repo = _repo(tmp_path, "m", tf_models / "model.savedmodel")
    (tmp_path / "m" / "1" / "model.savedmodel" / "saved_model.pb").write_bytes(b"\x08\x01garbage")
    with pytest.raises(ModelLoadError, match=r"model\.savedmodel: not a readable TensorFlow SavedModel"):
        repo.load("m")


def test_symlinked_model_files_are_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside.h5"
    outside.write_bytes(b"x")
    (tmp_path / "repo" / "m" / "1").mkdir(parents=True)
    (tmp_path / "repo" / "m" / "1" / "model.h5").symlink_to(outside)
    with pytest.raises(ModelLoadError, match="may not be symlinks"):
        Repository(tmp_path / "repo").load("m")


def test_fifo_inside_a_savedmodel_is_refused_before_tensorflow_reads_it(tmp_path: Path) -> None:
    variables = tmp_path / "model.savedmodel" / "variables"
    variables.mkdir(parents=True)
    (variables.parent / "saved_model.pb").write_bytes(b"")
    os.mkfifo(variables / "variables.index")  # TensorFlow's read of it would wait forever
    with pytest.raises(ModelLoadError, match=r"variables\.index: refused to load: not a regular file"):
        find_source(tmp_path)


def test_caffe_model_is_served_equal_to_its_layers(caffe_model: Path, tmp_path: Path) -> None:
    repo = _repo(tmp_path, "m", caffe_model / "deploy.prototxt", caffe_model / "model.caffemodel")
    model = repo.load("m")
    assert [(s.name, s.shape) for s in model.signature.inputs] == [("data", (-1, 1, 12, 12))]
    got = model.runner.run({"data": np.load(caffe_model / "inputs.npy")})["prob"]
    np.testing.assert_allclose(got, np.load(caffe_model / "expected.npy"), atol=1e-5)


def test_caffe_model_missing_its_weights_is_refused(caffe_model: Path, tmp_path: Path) -> None:
    repo = _repo(tmp_path, "m", caffe_model / "deploy.prototxt")
    with pytest.raises(ModelLoadError, match=r"needs deploy\.prototxt and model\.caffemodel; "
                                             r"model\.caffemodel missing"):
        repo.load("m")


def test_corrupt_caffemodel_is_refused_naming_the_file(caffe_model: Path, tmp_path: Path) -> None:
    repo = _repo(tmp_path, "m", caffe_model / "deploy.prototxt", caffe_model / "model.caffemodel")
    (tmp_path / "m" / "1" / "model.caffemodel").write_bytes(b"\xff\xff\xff garbage")
    with pytest.raises(ModelLoadError, match=r"model\.caffemodel: not a Caffe weights file"):
        repo.load("m")


@pytest.mark.parametrize(("data", "refusal"), [
    (b"not numpy", r"bad\.npy: not a \.npy or \.npz file of plain arrays \(no \.npy or \.npz header\)"),
    (np.ones((2, 5), np.float32), r"bad\.npy: float32 array of shape \[2, 5\]; the Caffe model's "
                                  r"input 'data' takes float rows of shape \[1, 12, 12\]"),
], ids=["not-numpy", "wrong-shape"])
def test_cli_convert_refuses_real_inputs_the_model_cannot_take(
        caffe_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        data: bytes | np.ndarray, refusal: str) -> None:
    _repo(tmp_path / "repo", "m", caffe_model / "deploy.prototxt", caffe_model / "model.caffemodel")
    bad = tmp_path / "bad.npy"
    if isinstance(data, bytes):
        bad.write_bytes(data)
    else:
        np.save(bad, data)
    code, _, err = run_cli(["convert", str(tmp_path / "repo"), "--model", "m", "--data", str(bad)],
                           capsys)
    assert code == 2
    assert re.search(refusal, err), err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "repo" / "m" / "1" / "converted").exists()


def test_missing_toolchain_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SURGE_CAFFE_PYTHON", str(tmp_path / "nowhere" / "python"))
    (tmp_path / "m" / "1").mkdir(parents=True)
    for name in ("deploy.prototxt", "model.caffemodel"):
        (tmp_path / "m" / "1" / name).write_bytes(b"")
    with pytest.raises(ModelLoadError, match="SURGE_CAFFE_PYTHON=.*: no such interpreter"):
        Repository(tmp_path).load("m")


def _fixed_batch_graph(path: Path) -> onnx.ModelProto:
    """tiny_onnx pinned to batch 1 with a Reshape to [1, 3] and its weights listed as inputs."""
    from onnx import helper, numpy_helper

    model = onnx.load(str(tiny_onnx(path)))
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 1
    model.graph.initializer.append(numpy_helper.from_array(np.array([1, 3], np.int64), "shape"))
    model.graph.node[-1].output[0] = "r"
    model.graph.node.append(helper.make_node("Reshape", ["r", "shape"], ["y"]))
    for init in model.graph.initializer:
        model.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, init.dims))
    return model


def test_fixed_batch_graph_gets_a_free_batch_dim(tmp_path: Path) -> None:
    model = _fixed_batch_graph(tmp_path / "t.onnx")
    drop_initializer_inputs(model)
    assert [v.name for v in model.graph.input] == ["x"]
    onnx.save(model, str(tmp_path / "fixed.onnx"))
    assert make_batch_dynamic(model)
    onnx.save(model, str(tmp_path / "dynamic.onnx"))
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    dynamic = OnnxRunner(tmp_path / "dynamic.onnx")
    assert dynamic.signature.batched
    fixed = OnnxRunner(tmp_path / "fixed.onnx")
    rows = np.concatenate([fixed.run({"x": x[i:i + 1]})["y"] for i in range(3)])
    np.testing.assert_allclose(dynamic.run({"x": x})["y"], rows, atol=1e-6)


def test_graph_without_one_fixed_batch_is_left_alone(tmp_path: Path) -> None:
    model = onnx.load(str(tiny_onnx(tmp_path / "t.onnx")))
    assert not make_batch_dynamic(model)


def test_optimize_makes_variants_of_a_converted_model(tf_models: Path, tmp_path: Path) -> None:
    from surge.optimize import Tolerance, parse_variants
    from surge.optimize.pipeline import OptimizeOptions, optimize_model

    _repo(tmp_path, "m", tf_models / "model.h5")
    outcomes = optimize_model(tmp_path, "m", parse_variants("int8-dynamic"),
                              OptimizeOptions(tolerance=Tolerance(max_abs=1.0)))
    assert [o.kept for o in outcomes] == [True]
    variant = Repository(tmp_path).load("m@int8-dynamic")
    got = variant.runner.run({"image": np.load(tf_models / "inputs.npy")})["logits"]
    assert np.abs(got - np.load(tf_models / "expected.npz")["tf"]).max() < 0.1
