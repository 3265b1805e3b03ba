"""The model an optimization starts from: an fp32 ONNX file and/or a PyTorch module, its tensor
names, sample inputs for the checks, and calibration data for static quantization."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from surge.errors import ConfigError

Inputs = dict[str, np.ndarray]


@dataclass
class ModelSource:
    """Everything the verbs need to know about the original model.

    `module` is needed by the PyTorch verbs (prune, low_rank, bf16); `onnx_path` by the ONNX
    Runtime verbs (quantize, fp16). `ensure_onnx` exports the module when only it is given.
    """

    name: str
    input_names: list[str]
    output_names: list[str]
    samples: Inputs
    """Inputs every variant is checked on (a few hundred rows is plenty)."""
    module: Any = None
    onnx_path: Path | None = None
    task: str | None = None
    """The task (surge.tasks) whose measures the checks report; None = raw errors only."""
    labels: np.ndarray | None = None
    """Targets of `samples` (class ids), for the task's measures next to agreement."""
    calibration: Inputs | None = None
    """Representative inputs for static quantization; None = none given."""
    finetune: Any = None
    """Default fine-tune for pruned copies: a callable(module) -> None, or None."""
    work_dir: Path | None = None
    _reference: Inputs | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.module is None and self.onnx_path is None:
            raise ConfigError(f"model {self.name!r}: give a PyTorch module or an ONNX file")
        missing = [n for n in self.input_names if n not in self.samples]
        if missing:
            raise ConfigError(f"model {self.name!r}: sample inputs lack {missing}")

    def require_module(self, what: str) -> Any:
        if self.module is None:
            raise ConfigError(
                f"{what} needs the PyTorch model, but {self.name!r} is only an ONNX file; "
                "pass --torch-model NAME (a torch_factory model with the same weights)"
            )
        return self.module

    def example(self, rows: int = 2) -> tuple[Any, ...]:
        """Torch tensors for tracing/export: the first `rows` sample rows of each input."""
        import torch

        return tuple(torch.from_numpy(np.ascontiguousarray(self.samples[n][:rows]))
                     for n in self.input_names)

    def reference_outputs(self) -> Inputs:
        """The original's outputs on `samples` (computed once)."""
        if self._reference is None:
            self._reference = (
                run_module(self.module, self.samples, self.input_names, self.output_names)
                if self.module is not None else run_onnx(self.onnx_path, self.samples)  # type: ignore[arg-type]
            )
        return self._reference

    def ensure_onnx(self) -> Path:
        """The fp32 ONNX file, exported from the module with a dynamic batch dim if needed."""
        if self.onnx_path is None:
            from surge.export import export_onnx

            base = self.work_dir or Path.cwd()
            self.onnx_path = export_onnx(
                self.module.eval(), self.example(), base / f".{self.name}-fp32.onnx",
                self.input_names, self.output_names,
            )
        return self.onnx_path


def run_module(module: Any, inputs: Mapping[str, np.ndarray], input_names: list[str],
               output_names: list[str], batch_size: int = 256) -> Inputs:
    """Run a PyTorch module on numpy inputs in batches; outputs by name."""
    import torch

    module = module.eval()
    rows = len(next(iter(inputs.values())))
    chunks: dict[str, list[np.ndarray]] = {n: [] for n in output_names}
    with torch.inference_mode():
        for start in range(0, rows, batch_size):
            args = [torch.from_numpy(np.ascontiguousarray(inputs[n][start:start + batch_size]))
                    for n in input_names]
            result = module(*args)
            tensors = _as_tuple(result, output_names)
            for name, tensor in zip(output_names, tensors, strict=True):
                chunks[name].append(tensor.float().numpy())
    return {n: np.concatenate(c) for n, c in chunks.items()}


def _as_tuple(result: Any, output_names: list[str]) -> tuple[Any, ...]:
    if isinstance(result, Mapping):
        return tuple(result[n] for n in output_names)
    if isinstance(result, tuple | list):
        return tuple(result)
    return (result,)


def run_onnx(path: Path, inputs: Mapping[str, np.ndarray], threads: int = 1) -> Inputs:
    from surge.runtimes import RunnerOptions, load_runner

    runner = load_runner(path, RunnerOptions(intra_op_threads=threads))
    return run_runner(runner, inputs)


def run_runner(runner: Any, inputs: Mapping[str, np.ndarray], batch_size: int = 256) -> Inputs:
    """Run any Runner over many rows in batches and concatenate the outputs."""
    rows = len(next(iter(inputs.values())))
    chunks: dict[str, list[np.ndarray]] = {}
    for start in range(0, rows, batch_size):
        batch = {n: np.ascontiguousarray(a[start:start + batch_size]) for n, a in inputs.items()}
        for name, value in runner.run(batch).items():
            chunks.setdefault(name, []).append(np.asarray(value, dtype=np.float32))
    return {n: np.concatenate(c) for n, c in chunks.items()}
