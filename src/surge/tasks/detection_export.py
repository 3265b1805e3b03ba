"""Publish a trained detection network: its detector (network + decoding) as ONNX, and as a
torch_factory twin when the recipe asks for one; each checked by loading it as serving does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from surge.datatypes import numpy_to_v2
from surge.errors import ModelLoadError
from surge.repository import Repository
from surge.repository.config import TensorConfig
from surge.tasks.detection import BOXES, LABELS, SCORES, DetectionModel
from surge.tasks.export import export_boxes_model
from surge.train.config import TrainConfig
from surge.train.publish import (
    Published,
    removed_if_failed,
    serving_config,
    target,
    write_config_once,
    write_metrics,
    write_torch_model,
)


def publish_detector(net: DetectionModel, config: TrainConfig, metrics: dict[str, Any],
                     example: torch.Tensor) -> Published:
    """Write the detector with its decoding as ONNX (input -> boxes, scores, labels); verify."""
    repo, name, model_dir, version = target(config)
    module: Any = net
    module.eval().cpu()
    detector = net.detector().eval()
    with torch.inference_mode():
        expected = [t.numpy() for t in detector(example)]
    k = expected[1].shape[1]
    with removed_if_failed(config, repo, version):
        files = [export_boxes_model(detector, example, model_dir / str(version) / "model.onnx",
                                    config.model.input_name, k)]
        write_config_once(model_dir, serving_config(config, name))
        verify_detector(repo, name, version, config.model.input_name, example.numpy(),
                        expected[1])
        if config.export.torch_name:
            files.append(_publish_weights(net, detector, config, repo, version,
                                          example.numpy(), expected[1]))
    write_metrics(model_dir, metrics, version)
    return Published(repo, name, version, tuple(files))


def verify_detector(repo: Path, name: str, version: int, input_name: str, example: np.ndarray,
                    scores: np.ndarray) -> None:
    loaded = Repository(repo).load(name, version)
    got = loaded.runner.run({input_name: example})
    # Scores decide which peaks top-K keeps, so they are compared; near-ties may swap boxes.
    if not np.allclose(got[SCORES], scores, atol=1e-3, rtol=1e-3):
        raise ModelLoadError(f"{loaded.path}: exported detector differs from the trained one")


def _publish_weights(net: DetectionModel, detector: torch.nn.Module, config: TrainConfig,
                     repo: Path, version: int, example: np.ndarray, scores: np.ndarray) -> Path:
    """The detector (decoding included) for the torch_factory engine: safetensors + factory."""
    factory, kwargs = net.detector_factory()
    k = scores.shape[1]
    input_shape = [-1, *example.shape[1:]]
    name, path = write_torch_model(detector, config, repo, version, {
        "factory": factory,
        "factory_kwargs": kwargs,
        "inputs": [TensorConfig(name=config.model.input_name,
                                datatype=numpy_to_v2(example.dtype), shape=input_shape)],
        "outputs": [TensorConfig(name=BOXES, datatype="FP32", shape=[-1, k, 4]),
                    TensorConfig(name=SCORES, datatype="FP32", shape=[-1, k]),
                    TensorConfig(name=LABELS, datatype="INT64", shape=[-1, k])],
    })
    verify_detector(repo, name, version, config.model.input_name, example, scores)
    return path
