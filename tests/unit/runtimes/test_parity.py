"""ONNX Runtime and PyTorch run the same default-model weights to the same outputs."""

from pathlib import Path

import numpy as np
import pytest

from surge.repository import Repository
from surge_examples.fashion.data import load_fashion_mnist, to_model_input


@pytest.mark.parametrize("batch", [1, 7])
def test_onnx_and_torch_engines_agree(example_repo: Path, batch: int) -> None:
    repo = Repository(example_repo)
    onnx_model = repo.load("fashion")
    torch_model = repo.load("fashion-torch")
    images, _ = load_fashion_mnist("test")
    x = to_model_input(images[:batch])
    got_onnx = onnx_model.runner.run({"image": x})["logits"]
    got_torch = torch_model.runner.run({"image": x})["logits"]
    assert got_onnx.shape == got_torch.shape == (batch, 10)
    # On a GPU, PyTorch's convolutions run in TF32 (10-bit mantissa) by default.
    tolerance = 1e-4 if torch_model.runner.device == "cpu" else 5e-3
    np.testing.assert_allclose(got_onnx, got_torch, atol=tolerance, rtol=tolerance)


def test_default_model_signature(example_repo: Path) -> None:
    sig = Repository(example_repo).load("fashion").signature
    assert sig.batched
    assert sig.max_batch_size == 64
    assert [(s.name, s.datatype, s.shape) for s in sig.inputs] == [("image", "FP32", (-1, 1, 28, 28))]
    assert [(s.name, s.datatype, s.shape) for s in sig.outputs] == [("logits", "FP32", (-1, 10))]


def test_default_model_is_accurate(example_repo: Path) -> None:
    images, labels = load_fashion_mnist("test")
    runner = Repository(example_repo).load("fashion").runner
    logits = runner.run({"image": to_model_input(images[:2000])})["logits"]
    assert (logits.argmax(1) == labels[:2000]).mean() >= 0.90
