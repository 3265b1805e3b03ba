"""`surge optimize` refuses, before any work and in one line, what it cannot make right: a
--torch-model twin other than the served model, variant names it could not serve, --exclude
names of no node, calibration arrays of no input; and two runs storing one variant at once
leave it whole."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from surge.errors import InvalidNameError
from surge.optimize import Int8DynamicConfig, parse_variants
from surge.optimize.pipeline import OptimizeOptions, optimize_model
from surge.repository import Repository
from tests.cli_runner import run_cli
from tests.unit.optimize.models import MLP
from tests.unit.test_cli_inputs import one_line_error
from tests.unit.tiny_models import TwoXPlusOne, make_repo

SERVED = "x FP32 [-1, 4] -> y FP32 [-1, 4]"  # the 2x+1 ONNX model 'tiny'
X4 = "{name: x, datatype: FP32, shape: [-1, 4]}"
Y4 = "{name: y, datatype: FP32, shape: [-1, 4]}"


def _twin(root: Path, module: torch.nn.Module, factory: str, inputs: str, outputs: str | None,
          kwargs: str = "{}") -> str:
    """A torch_factory model 'twin' holding `module`'s weights."""
    (root / "twin" / "1").mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in module.state_dict().items()},
              str(root / "twin" / "1" / "model.safetensors"))
    config = (f"engine: torch_factory\nfactory: {factory}\nfactory_kwargs: {kwargs}\n"
              f"inputs: [{inputs}]\n" + (f"outputs: [{outputs}]\n" if outputs else ""))
    (root / "twin" / "config.yaml").write_text(config)
    return "twin"


SAME = ("tests.unit.tiny_models:two_x_plus_one", TwoXPlusOne(), "{}")
WIDE = ("tests.unit.optimize.models:MLP", MLP((8, 16, 4)), "{sizes: [8, 16, 4]}")
TEN = ("tests.unit.optimize.models:MLP", MLP((4, 16, 10)), "{sizes: [4, 16, 10]}")


@pytest.mark.parametrize(("twin", "inputs", "outputs", "message"), [
    (SAME, "{name: z, datatype: FP32, shape: [-1, 4]}", Y4,
     "inputs ['x'] expected, got ['z'] (tiny: x FP32 [-1, 4] -> y FP32 [-1, 4]; twin: z FP32"),
    (SAME, X4, "{name: out, datatype: FP32, shape: [-1, 4]}", "outputs ['y'] expected, got ['out']"),
    (SAME, "{name: x, datatype: INT64, shape: [-1, 4]}", Y4,
     "input 'x' expects FP32 [-1, 4], got INT64 [-1, 4]"),
    (WIDE, "{name: x, datatype: FP32, shape: [-1, 8]}", Y4,
     f"input 'x' expects FP32 [-1, 4], got FP32 [-1, 8] (tiny: {SERVED}; twin: x FP32 [-1, 8]"),
    (TEN, X4, "{name: y, datatype: FP32, shape: [-1, 10]}",
     "output 'y' expects FP32 [-1, 4], got FP32 [-1, 10]"),
    (TEN, X4, None, "output 'y' expects FP32 [-1, 4], got FP32 [-1, 10]"),
    (WIDE, X4, Y4, "--torch-model 'twin' cannot run the inputs of 'tiny' (x FP32 [-1, 4] -> "
                   "y FP32 [-1, 4]): RuntimeError: mat1 and mat2 shapes cannot be multiplied"),
])
def test_a_torch_model_of_another_signature_is_refused_before_any_work(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], twin: tuple[str, Any, str],
        inputs: str, outputs: str | None, message: str) -> None:
    """Another signature failed late inside making each variant with an engine's error (a
    different input width) or, with the same module, went unnoticed; another class count was
    kept, checked against the twin, and served [N, 10] under a model declaring [N, 4]."""
    repo = make_repo(tmp_path / "repo")
    factory, module, kwargs = twin
    name = _twin(repo, module, factory, inputs, outputs, kwargs)
    line = one_line_error(["optimize", str(repo), "--model", "tiny", "--torch-model", name,
                           "--variants", "bf16,lowrank-r1", "--tolerance", "max_abs=100"], capsys)
    assert message in line
    assert sorted(p.name for p in (repo / "tiny").iterdir()) == ["1", "config.yaml"]


def test_a_torch_model_of_other_weights_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The variants were checked against the twin, so all were kept, none computing what the
    served model does."""
    repo = make_repo(tmp_path / "repo")
    other = TwoXPlusOne()
    with torch.no_grad():
        other.linear.bias.fill_(5.0)
    _twin(repo, other, SAME[0], X4, Y4)
    line = one_line_error(["optimize", str(repo), "--model", "tiny", "--torch-model", "twin",
                           "--variants", "bf16"], capsys)
    assert "--torch-model 'twin' does not compute what 'tiny' does (outputs differ by up to 4" in line
    assert "it needs the same weights" in line


def test_torch_model_weights_that_do_not_fit_its_factory_are_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = make_repo(tmp_path / "repo")
    _twin(repo, MLP((4, 16, 4)), SAME[0], X4, Y4)  # an MLP's weights for the 2x+1 factory
    line = one_line_error(["optimize", str(repo), "--model", "tiny", "--torch-model", "twin",
                           "--variants", "bf16"], capsys)
    assert "weights do not fit tests.unit.tiny_models:two_x_plus_one" in line


def test_the_same_model_as_torch_twin_is_used(tmp_path: Path) -> None:
    """Outputs left undeclared are named by a trial run ('output'): their names do not count."""
    repo = make_repo(tmp_path / "repo")
    _twin(repo, TwoXPlusOne(), SAME[0], X4, None)
    (outcome,) = optimize_model(repo, "tiny", parse_variants("lowrank-r4"),
                                OptimizeOptions(torch_model="twin"))
    assert outcome.kept
    out = Repository(repo).load("tiny@lowrank-r4").runner.run({"x": np.ones((2, 4), np.float32)})
    np.testing.assert_allclose(out["y"], 3.0, atol=1e-4)


def test_a_model_whose_config_selects_the_variant_to_make_can_be_optimized(
        tmp_path: Path) -> None:
    """The signature came from loading the selected variant, which this run was to make."""
    repo = make_repo(tmp_path / "repo", config="variant: int8-dynamic\n")
    (outcome,) = optimize_model(repo, "tiny", parse_variants("int8-dynamic"))
    assert outcome.kept
    assert Repository(repo).load("tiny").variant == "int8-dynamic"


@pytest.mark.parametrize("name", ["../escape", "a/b", ""])
def test_api_variant_names_must_be_folder_names(tmp_path: Path, name: str) -> None:
    """optimize_model wrote `variants/../escape`, i.e. beside the version folders."""
    repo = make_repo(tmp_path / "repo")
    with pytest.raises(InvalidNameError, match="invalid variant name"):
        optimize_model(repo, "tiny", {name: Int8DynamicConfig()})
    assert sorted(p.name for p in (repo / "tiny").iterdir()) == ["1", "config.yaml"]


def test_an_exclude_naming_no_node_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """ONNX Runtime ignores the name: the node was quantized and variant.yaml said excluded."""
    repo = make_repo(tmp_path / "repo")
    line = one_line_error(["optimize", str(repo), "--model", "tiny", "--variants",
                           "int8-dynamic", "--exclude", "/linear/Gemn"], capsys)
    assert ("--exclude '/linear/Gemn': no node of that name in the ONNX graph of 'tiny' "
            "(nodes: '/linear/Gemm')") in line
    code, _, err = run_cli(["optimize", str(repo), "--model", "tiny", "--variants",
                            "int8-dynamic", "--exclude", "/linear/Gemm"], capsys)
    assert code == 0, err


class _Adder(torch.nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


@pytest.mark.parametrize(("arrays", "message"), [
    ({"a": 8, "b": 8, "junk": 8}, "array 'junk' is not an input of the model (inputs: ['a', 'b'])"),
    ({"a": 8, "b": 5}, "the inputs have different row counts {'a': 8, 'b': 5}"),
])
def test_calibration_arrays_must_be_the_inputs_in_equal_rows(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], arrays: dict[str, int],
        message: str) -> None:
    """Both failed int8-static only once the calibrator ran ('Invalid input name: junk')."""
    from surge.export import export_onnx

    repo = tmp_path / "repo"
    export_onnx(_Adder(), (torch.zeros(2, 3), torch.zeros(2, 3)), repo / "add" / "1" / "model.onnx",
                ["a", "b"], ["s"])
    calib = tmp_path / "calib.npz"
    np.savez(calib, **{n: np.ones((rows, 3), np.float32) for n, rows in arrays.items()})
    line = one_line_error(["optimize", str(repo), "--model", "add", "--variants", "int8-static",
                           "--calib", str(calib)], capsys)
    assert message in line


@pytest.mark.parametrize("other_run", ["stores its own", "moves it aside"])
def test_a_variant_another_run_stores_meanwhile_is_replaced_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, other_run: str) -> None:
    """Two optimizes of one model at once: after one moved the old variant aside, the other
    stored its own before the first moved its in (the rename then failed, 'Directory not
    empty'), or the other moved the old one aside first ('No such file'): a traceback, the
    finished variant lost with the work folder."""
    from surge.optimize.pipeline import _store
    from surge.optimize.variant import CheckResult, Tolerance, Variant

    target, staging = tmp_path / "variants" / "int8-dynamic", tmp_path / "work" / "int8-dynamic"
    for folder, text in ((target, "old"), (staging, "ours")):
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_text(text)
    rename = Path.rename
    interfered: list[bool] = []

    def racing(self: Path, to: Any) -> Any:
        moment = self == staging if other_run == "stores its own" else self == target
        if moment and not interfered:  # the other run acts right before this rename
            interfered.append(True)
            if target.exists():
                rename(target, tmp_path / "their-aside")
            if other_run == "stores its own":
                target.mkdir()
                (target / "model.onnx").write_text("theirs")
        return rename(self, to)

    monkeypatch.setattr(Path, "rename", racing)
    variant = Variant("int8-dynamic", staging / "model.onnx", "onnxruntime", "quantize/int8",
                      {}, CheckResult(1, 0.0, 0.0))
    _store(staging, variant, Tolerance(), target)
    assert interfered
    assert (target / "model.onnx").read_text() == "ours"
    assert sorted(p.name for p in target.iterdir()) == ["model.onnx", "variant.yaml"]
    assert os.listdir(tmp_path / "work") == []
