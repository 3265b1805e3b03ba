"""Export the trained model into a Surge model repository and check that Surge can serve it."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from surge.datatypes import numpy_to_v2
from surge.errors import ConfigError, ModelLoadError
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


def write_config_once(model_dir: Path, config: ModelConfig) -> None:
    """A hand-tuned serving config already in the repository wins over a generated one."""
    if not (model_dir / CONFIG_FILE).exists():
        write_config(model_dir / CONFIG_FILE, config)


def target(config: TrainConfig) -> tuple[Path, str, Path, int]:
    """(repository, model name, model directory, version) the export writes to."""
    export = config.export
    assert export.repo is not None
    repo = Path(export.repo)
    name = check_name(export.name)
    model_dir = repo / name
    if export.version is not None:
        return repo, name, model_dir, export.version
    # The next version free in both `name` and `torch_name`, which share the number.
    return repo, name, model_dir, max(next_version(repo / n) for n in export_names(config))


def export_names(config: TrainConfig) -> list[str]:
    """The models the export writes: `export.name`, and `export.torch_name` when set."""
    export = config.export
    return [check_name(name) for name in filter(None, (export.name, export.torch_name))]


def refuse_file(path: Path, instead: str) -> None:
    """The export makes directories where a file would stop it only after training."""
    if path.is_file():
        raise ConfigError(f"export: {path} is a file, not a {instead}; move it or export "
                          "elsewhere")


def check_target(config: TrainConfig) -> None:
    """Refuse an export that would fail on or silently replace what is in the repository: a
    file where one of its models or `export.version` goes, or that version (of `name` or
    `torch_name`) already holding files without `export.overwrite`. Without a version the
    export goes to the next free one, which needs only its model directories."""
    export = config.export
    if export.repo is None:
        return
    repo = Path(export.repo)
    names = export_names(config)
    for name in names:
        refuse_file(repo / name, "model directory")
    if export.version is None:
        return
    for name in names:
        version_dir = repo / name / str(export.version)
        if export.overwrite:  # replaces a version's files, not a file in its place
            refuse_file(version_dir, "version directory")
        elif version_dir.is_file() or (version_dir.is_dir() and any(version_dir.iterdir())):
            raise ConfigError(
                f"export: {version_dir} already holds a model; pass export.overwrite=true to "
                f"replace it, or another export.version (or none: the next free version)")


@contextmanager
def removed_if_failed(config: TrainConfig, repo: Path, version: int) -> Iterator[None]:
    """Remove the version folders and generated `config.yaml` files the block created when it
    fails (a check against PyTorch, or Ctrl-C): left behind, a new version would be the
    newest, which `surge serve` serves as if it were good, and a config.yaml written for the
    failed export would win over the next export's own. What was there before
    (`export.overwrite`, a hand-tuned config) is left alone."""
    created = [path for n in export_names(config)
               for path in (repo / n / str(version), repo / n / CONFIG_FILE)
               if not path.exists()]
    try:
        yield
    except BaseException:
        for path in created:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        raise


def write_metrics(model_dir: Path, metrics: dict[str, Any], version: int) -> None:
    (model_dir / "metrics.json").write_text(json.dumps({**metrics, "version": version},
                                                       indent=2) + "\n")


def serving_config(config: TrainConfig, name: str, **fields: Any) -> ModelConfig:
    """The model config of a new export (the recipe's labels, max batch and task)."""
    parameters = {"task": config.task}
    return ModelConfig(name=name, max_batch_size=config.export.max_batch_size,
                       labels=config.export.labels, parameters=parameters, **fields)


def publish(model: nn.Module, config: TrainConfig, metrics: dict[str, Any],
            example: torch.Tensor) -> Published:
    """Write ONNX/.pt2 (and optionally safetensors) files, configs and metrics.json; verify.
    `example` (two inputs) is what the exports are traced and checked with."""
    check_target(config)  # again: the version may have appeared while the model trained
    repo, name, model_dir, version = target(config)
    model = model.eval().cpu()
    with torch.inference_mode():
        expected = model(example).numpy()
    with removed_if_failed(config, repo, version):
        files = _write_version(model, config, repo, version, example, expected)
    write_metrics(model_dir, metrics, version)
    return Published(repo, name, version, tuple(files))


def _write_version(model: nn.Module, config: TrainConfig, repo: Path, version: int,
                   example: torch.Tensor, expected: np.ndarray) -> list[Path]:
    """The version's files of `export.name` (and `export.torch_name`), each checked."""
    export, name = config.export, check_name(config.export.name)
    version_dir = repo / name / str(version)
    files: list[Path] = []
    if "onnx" in export.formats:
        files.append(export_onnx(model, (example,), version_dir / "model.onnx",
                                 [config.model.input_name], [config.model.output_name]))
    if "pt2" in export.formats:
        files.append(export_pt2(model, (example,), version_dir / "model.pt2"))
    write_config_once(repo / name, serving_config(config, name))
    verify(repo, name, version, config.model.input_name, example.numpy(), expected)
    if export.torch_name:
        files.append(_publish_weights(model, config, repo, version, example.numpy(), expected))
    return files


def write_torch_model(module: nn.Module, config: TrainConfig, repo: Path, version: int,
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
    write_config_once(model_dir, serving_config(config, name, engine="torch_factory",
                                                **model_config))
    return name, path


def _publish_weights(model: nn.Module, config: TrainConfig, repo: Path, version: int,
                     example: np.ndarray, expected: np.ndarray) -> Path:
    """The same weights for the torch_factory engine: the builder plus a safetensors file."""
    from surge.tasks import resolve_builder

    datatype = numpy_to_v2(example.dtype)
    name, path = write_torch_model(model, config, repo, version, {
        "factory": resolve_builder(config.model.builder),
        "factory_kwargs": config.model.kwargs,
        "inputs": [TensorConfig(name=config.model.input_name, datatype=datatype,
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
