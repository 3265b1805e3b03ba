"""Export the trained model into a Surge model repository and check that Surge can serve it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from surge.errors import ModelLoadError
from surge.export import export_onnx, export_pt2
from surge.repository import Repository
from surge.repository.config import CONFIG_FILE, ModelConfig, TensorConfig, write_config
from surge.repository.repository import check_name
from surge.train.config import TrainConfig


@dataclass(frozen=True)
class Published:
    """Where the model went and what it scored."""

    repo: Path
    name: str
    version: int
    files: tuple[Path, ...]


def next_version(model_dir: Path) -> int:
    numbers = [int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(numbers, default=0) + 1


def _write_config_once(model_dir: Path, config: ModelConfig) -> None:
    """A hand-tuned serving config already in the repository wins over a generated one."""
    if not (model_dir / CONFIG_FILE).exists():
        write_config(model_dir / CONFIG_FILE, config)


def _target(config: TrainConfig) -> tuple[Path, str, Path, int]:
    """(repository, model name, model directory, version) the export writes to."""
    assert config.export.repo is not None
    repo = Path(config.export.repo)
    name = check_name(config.export.name)
    model_dir = repo / name
    return repo, name, model_dir, config.export.version or next_version(model_dir)


def publish(model: nn.Module, config: TrainConfig, metrics: dict[str, Any]) -> Published:
    """Write ONNX/.pt2 (and optionally safetensors) files, configs and metrics.json; verify."""
    export = config.export
    repo, name, model_dir, version = _target(config)
    model = model.eval().cpu()
    example = torch.rand(2, *config.model.input_shape)
    with torch.inference_mode():
        expected = model(example).numpy()
    files: list[Path] = []
    version_dir = model_dir / str(version)
    if "onnx" in export.formats:
        files.append(export_onnx(model, (example,), version_dir / "model.onnx",
                                 [config.model.input_name], [config.model.output_name]))
    if "pt2" in export.formats:
        files.append(export_pt2(model, (example,), version_dir / "model.pt2"))
    _write_config_once(model_dir, ModelConfig(
        name=name, max_batch_size=export.max_batch_size, labels=export.labels))
    (model_dir / "metrics.json").write_text(json.dumps({**metrics, "version": version},
                                                       indent=2) + "\n")
    verify(repo, name, version, config.model.input_name, example.numpy(), expected)
    if export.torch_name:
        files.append(_publish_weights(model, config, repo, version, example.numpy(), expected))
    return Published(repo, name, version, tuple(files))


def publish_detector(model: nn.Module, config: TrainConfig, metrics: dict[str, Any]) -> Published:
    """Write the detector with its decoding as ONNX (image -> boxes, scores, labels); verify."""
    from surge.detection.export import export_detector
    from surge.detection.model import CenterNet, Detector

    if not isinstance(model, CenterNet):
        raise ModelLoadError(f"task detection exports a CenterNet, not {type(model).__name__}")
    export = config.export
    repo, name, model_dir, version = _target(config)
    detector = Detector(model.eval().cpu()).eval()
    size = config.model.input_shape[-1]
    example = np.random.default_rng(0).integers(0, 256, (2, size, size), dtype=np.uint8)
    with torch.inference_mode():
        expected = [t.numpy() for t in detector(torch.from_numpy(example))]
    path = export_detector(detector, model_dir / str(version) / "model.onnx", size)
    _write_config_once(model_dir, ModelConfig(
        name=name, max_batch_size=export.max_batch_size, labels=export.labels))
    (model_dir / "metrics.json").write_text(json.dumps({**metrics, "version": version},
                                                       indent=2) + "\n")
    _verify_detector(repo, name, version, example, expected[1])
    files = [path]
    if export.torch_name:
        files.append(_publish_detector_weights(detector, config, repo, version, example,
                                               expected[1]))
    return Published(repo, name, version, tuple(files))


def _verify_detector(repo: Path, name: str, version: int, example: np.ndarray,
                     scores: np.ndarray) -> None:
    from surge.detection.export import INPUT_NAME

    loaded = Repository(repo).load(name, version)
    got = loaded.runner.run({INPUT_NAME: example})
    # Scores decide which peaks top-K keeps, so they are compared; near-ties may swap boxes.
    if not np.allclose(got["scores"], scores, atol=1e-3, rtol=1e-3):
        raise ModelLoadError(f"{loaded.path}: exported detector differs from the trained one")


def _write_torch_model(module: nn.Module, config: TrainConfig, repo: Path, version: int,
                       model_config: dict[str, Any]) -> tuple[str, Path]:
    """`module`'s weights as safetensors in `export.torch_name`'s version directory, with a
    torch_factory config (fields from `model_config`) unless one exists; -> (name, file)."""
    from safetensors.torch import save_file

    assert config.export.torch_name is not None
    name = check_name(config.export.torch_name)
    model_dir = repo / name
    path = model_dir / str(version) / "model.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))
    _write_config_once(model_dir, ModelConfig(
        name=name, engine="torch_factory", max_batch_size=config.export.max_batch_size,
        labels=config.export.labels, **model_config))
    return name, path


def _publish_detector_weights(detector: nn.Module, config: TrainConfig, repo: Path, version: int,
                              example: np.ndarray, scores: np.ndarray) -> Path:
    """The detector (decoding included) for the torch_factory engine: safetensors + factory."""
    from surge.detection.export import INPUT_NAME

    size, k = config.model.input_shape[-1], scores.shape[1]
    name, path = _write_torch_model(detector, config, repo, version, {
        "factory": "surge.detection.model:detector",
        "factory_kwargs": {**config.model.kwargs, "k": k},
        "inputs": [TensorConfig(name=INPUT_NAME, datatype="UINT8", shape=[-1, size, size])],
        "outputs": [TensorConfig(name="boxes", datatype="FP32", shape=[-1, k, 4]),
                    TensorConfig(name="scores", datatype="FP32", shape=[-1, k]),
                    TensorConfig(name="labels", datatype="INT64", shape=[-1, k])],
    })
    _verify_detector(repo, name, version, example, scores)
    return path


def _publish_weights(model: nn.Module, config: TrainConfig, repo: Path, version: int,
                     example: np.ndarray, expected: np.ndarray) -> Path:
    """The same weights for the torch_factory engine: the builder plus a safetensors file."""
    name, path = _write_torch_model(model, config, repo, version, {
        "factory": config.model.builder,
        "factory_kwargs": config.model.kwargs,
        "inputs": [TensorConfig(name=config.model.input_name, datatype="FP32",
                                shape=[-1, *config.model.input_shape])],
        "outputs": [TensorConfig(name=config.model.output_name, datatype="FP32",
                                 shape=[-1, *expected.shape[1:]])],
    })
    verify(repo, name, version, config.model.input_name, example, expected)
    return path


def verify(repo: Path, name: str, version: int, input_name: str, example: np.ndarray,
           expected: np.ndarray) -> None:
    """Load the exported model the way `surge serve` does and compare it with PyTorch."""
    loaded = Repository(repo).load(name, version)
    got = next(iter(loaded.runner.run({input_name: example}).values()))
    if not np.allclose(got, expected, atol=1e-3, rtol=1e-3):
        raise ModelLoadError(
            f"{loaded.path}: exported model differs from the trained one "
            f"(max abs diff {float(np.abs(got - expected).max()):.3g})"
        )
