"""The variant round trip: optimize -> repository -> load by name -> run, through the Python API
and the CLI, on a small Fashion-MNIST model trained here for a few seconds."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file
from tests.cli_runner import run_cli
from tests.unit.tiny_models import make_repo

from surge.errors import ConfigError
from surge.optimize import Tolerance, parse_variants
from surge.optimize.pipeline import OptimizeOptions, optimize_model
from surge.repository import Repository
from surge_examples.fashion.data import load_fashion_mnist, to_model_input
from surge_examples.fashion.model import fashion_cnn

CONFIG = """\
engine: torch_factory
factory: surge_examples.fashion.model:fashion_cnn
factory_kwargs: {width: 4, hidden: 16}
inputs:
  - {name: image, datatype: FP32, shape: [-1, 1, 28, 28]}
outputs:
  - {name: logits, datatype: FP32, shape: [-1, 10]}
max_batch_size: 64
labels: [t-shirt, trouser, pullover, dress, coat, sandal, shirt, sneaker, bag, boot]
parameters: {task: classification, dataset: fashion-mnist}  # the check data comes from here
"""
FAST = OptimizeOptions(finetune_epochs=0, check_rows=1000)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A width-4 FashionCNN trained for 150 steps (about 70% test accuracy)."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 spinning threads on a busy 2-core box train 10x slower
    model = fashion_cnn(width=4, hidden=16)
    images, labels = load_fashion_mnist("train")
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    for _ in range(150):
        idx = rng.integers(0, len(images), 64)
        loss = torch.nn.functional.cross_entropy(
            model(torch.from_numpy(to_model_input(images[idx]))), torch.from_numpy(labels[idx]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.set_num_threads(threads)
    path = tmp_path_factory.mktemp("weights") / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.eval().state_dict().items()}, str(path))
    return path


@pytest.fixture
def repo(tmp_path: Path, weights: Path) -> Path:
    model_dir = tmp_path / "repo" / "tiny"
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "1" / "model.safetensors").write_bytes(weights.read_bytes())
    (model_dir / "config.yaml").write_text(CONFIG)
    return tmp_path / "repo"


def test_variants_are_made_checked_stored_and_served_by_name(repo: Path) -> None:
    configs = parse_variants("int8-static,int8-dynamic,bf16,fp16,lowrank-0.9,prune-50")
    outcomes = optimize_model(repo, "tiny", configs, FAST)
    assert [o.name for o in outcomes] == list(configs)
    repository = Repository(repo)
    batch = to_model_input(load_fashion_mnist("test")[0][:3])
    reference = repository.load("tiny").runner.run({"image": batch})["logits"]
    for outcome in outcomes:
        assert outcome.variant is not None
        check = outcome.variant.check
        assert check.samples == FAST.check_rows
        assert check.reference_accuracy is not None
        if not outcome.kept:  # reported, never silently stored
            assert check.failures
            assert not (repo / "tiny" / "variants" / outcome.name).exists()
            continue
        assert check.passed
        info = yaml.safe_load((repo / "tiny" / "variants" / outcome.name / "variant.yaml").read_text())
        assert info["check"]["passed"] is True
        assert info["size_bytes"] > 0
        assert info["source"] == "tiny"
        assert info["file"] in ("model.onnx", "model.pt2")
        loaded = repository.load(f"tiny@{outcome.name}")
        assert loaded.variant == outcome.name
        assert loaded.path.name == info["file"]
        out = loaded.runner.run({"image": batch})["logits"]
        assert out.shape == (3, 10)
        assert out.dtype == np.float32
        assert np.abs(out - reference).max() < 0.5 * np.abs(reference).max()
    kept = {o.name for o in outcomes if o.kept}
    assert {"int8-static", "int8-dynamic", "bf16", "fp16"} <= kept
    assert set(repository.variants("tiny")) == kept
    static = next(o for o in outcomes if o.name == "int8-static").variant
    assert static is not None
    assert static.method == "quantize/int8-static"
    assert static.details["calibration_rows"] == 256  # Fashion-MNIST training images by default


def test_failing_variant_is_kept_only_when_asked(repo: Path) -> None:
    strict = replace(FAST, tolerance=Tolerance(max_abs=0.0))
    outcome, = optimize_model(repo, "tiny", parse_variants("bf16"), strict)
    assert not outcome.kept
    assert outcome.variant is not None
    assert outcome.variant.check.failures[0].startswith("max abs error")
    assert outcome.variant.size_bytes > 0  # still reported after the rejected file is gone
    assert not outcome.variant.path.exists()
    assert Repository(repo).variants("tiny") == []
    keep = replace(strict, keep_failed=True)
    outcome, = optimize_model(repo, "tiny", parse_variants("bf16"), keep)
    info = Repository(repo).variant_info("tiny", "bf16")
    assert outcome.kept
    assert info["kept_despite_failing"] is True
    assert info["check"]["passed"] is False
    assert info["tolerance"] == "max_abs=0.0"


def test_cli_optimize_then_predict(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["optimize", str(repo), "--model", "tiny", "--variants",
                              "int8-dynamic,prune-50", "--finetune-epochs", "0",
                              "--check-rows", "1000",
                              "--tolerance", "top1=0.95,accuracy_drop=1"], capsys)
    assert code == 0, err
    assert "not kept (outside tolerance): prune-50 — rerun" in " ".join(out.split())
    assert Repository(repo).variants("tiny") == ["int8-dynamic"]
    np.save(repo / "x.npy", np.zeros((2, 1, 28, 28), np.float32))
    code, out, err = run_cli(["predict", str(repo), "--model", "tiny@int8-dynamic",
                              "--input", str(repo / "x.npy")], capsys)
    assert code == 0, err
    assert "class" in out


def test_onnx_model_with_calibration_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_repo(tmp_path / "r")
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(0).random((32, 4), dtype=np.float32))
    code, _, err = run_cli(["optimize", str(root), "--model", "tiny", "--variants",
                            "int8-static,fp16", "--calib", str(calib), "--tolerance",
                            "max_abs=0.1"], capsys)
    assert code == 0, err
    loaded = Repository(root).load("tiny@int8-static")
    out = loaded.runner.run({"x": np.ones((2, 4), np.float32)})["y"]
    np.testing.assert_allclose(out, 3.0, atol=0.05)


@pytest.mark.parametrize(("variants", "extra", "message"), [
    ("int4", [], "error: unknown variant 'int4'; known:"),
    ("prune-150", [], "error: variant 'prune-150': prune ratio 150% is out of range (1-99)"),
    ("int8-static", [], "error: variant 'int8-static' needs calibration data: pass --calib"),
    ("prune-30", [], "error: variant 'prune-30' needs the PyTorch model, but 'tiny' is only an ONNX"),
    ("int8-static", ["--calib", "missing.npy"], "error: calibration data 'missing.npy' not found"),
    ("onnx", ["--tolerance", "speed=1"], "error: bad tolerance 'speed=1'"),
])
def test_bad_requests_give_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           variants: str, extra: list[str], message: str) -> None:
    root = make_repo(tmp_path / "r")
    code, _, err = run_cli(["optimize", str(root), "--model", "tiny", "--variants", variants,
                            *extra], capsys)
    assert code == 2
    assert err.startswith(message)
    assert err.count("\n") == 1
    assert not (root / "tiny" / "variants").exists() or not any(
        (root / "tiny" / "variants").iterdir())


def test_wrong_calibration_shape_is_named(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "r")
    np.save(tmp_path / "bad.npy", np.zeros((8, 5), np.float32))
    with pytest.raises(ConfigError, match=r"input 'x' expects FP32 \[-1, 4\], got FP32 \[8, 5\]"):
        optimize_model(root, "tiny", parse_variants("int8-static"),
                       OptimizeOptions(calibration=tmp_path / "bad.npy"))


def test_onnx_model_takes_pytorch_verbs_from_its_torch_twin(repo: Path) -> None:
    """An ONNX model plus --torch-model (a torch_factory model with the same weights)."""
    from safetensors.torch import load_file

    from surge.export import export_onnx

    module = fashion_cnn(width=4, hidden=16)
    module.load_state_dict(load_file(str(repo / "tiny" / "1" / "model.safetensors")))
    export_onnx(module, (torch.zeros(1, 1, 28, 28),), repo / "served" / "1" / "model.onnx",
                ["image"], ["logits"])
    # checked on the test images, as the twin would be: on random pixels the agreement of a
    # model this small after pruning is a coin toss (0.23 after a package update, 0.5 before)
    (repo / "served" / "config.yaml").write_text(
        "labels: [a, b, c, d, e, f, g, h, i, j]\n"
        "parameters: {task: classification, dataset: fashion-mnist}\n")
    options = replace(FAST, torch_model="tiny", tolerance=Tolerance(min_top1=0.5))
    outcome, = optimize_model(repo, "served", parse_variants("prune-30"), options)
    assert outcome.kept
    assert outcome.variant is not None
    assert outcome.variant.details["params"] < outcome.variant.details["params_original"]
    out = Repository(repo).load("served@prune-30").runner.run(
        {"image": np.zeros((2, 1, 28, 28), np.float32)})
    assert out["logits"].shape == (2, 10)


def test_a_variant_that_fails_to_build_is_reported_and_the_rest_go_on(
        repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from surge.optimize import Bf16Config, registry

    def broken(*_: object) -> None:
        raise RuntimeError("export failed\nsecond line")

    monkeypatch.setitem(registry._MAKERS, Bf16Config, broken)
    bf16, dynamic = optimize_model(repo, "tiny", parse_variants("bf16,int8-dynamic"), FAST)
    assert (bf16.kept, bf16.variant, bf16.error) == (False, None,
                                                     "failed: RuntimeError: export failed")
    assert dynamic.kept
    assert Repository(repo).variants("tiny") == ["int8-dynamic"]
