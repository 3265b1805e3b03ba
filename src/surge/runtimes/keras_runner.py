"""Keras 3 engine: `.keras` files run on Keras' torch backend, loaded with safe_mode."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from surge.errors import ModelLoadError
from surge.runtimes.base import RunnerOptions, Signature, TensorSpec, example_inputs
from surge.runtimes.torch_runner import set_torch_threads


def import_keras() -> Any:
    """Import keras on the torch backend; fail clearly if another backend is already active."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except ImportError:
        raise ModelLoadError("Keras models need the 'keras' package: pip install 'surge[keras]'") from None
    if keras.backend.backend() != "torch":
        raise ModelLoadError(
            f"Keras runs on backend {keras.backend.backend()!r}; Surge needs KERAS_BACKEND=torch"
        )
    return keras


def _keras_dtype(dtype: str) -> str:
    table = {"float32": "FP32", "float16": "FP16", "float64": "FP64", "bfloat16": "BF16",
             "int32": "INT32", "int64": "INT64", "uint8": "UINT8", "int8": "INT8", "bool": "BOOL"}
    return table.get(str(dtype), "FP32")


def _spec(name: str, tensor: Any) -> TensorSpec:
    shape = tuple(-1 if d is None else int(d) for d in tensor.shape)
    return TensorSpec(name, _keras_dtype(tensor.dtype), shape)


def keras_signature(model: Any) -> Signature:
    inputs = tuple(_spec(t.name, t) for t in model.inputs)
    names = list(getattr(model, "output_names", None) or [])
    if len(names) != len(model.outputs):
        names = [f"output{i}" for i in range(len(model.outputs))]
    outputs = tuple(_spec(n, t) for n, t in zip(names, model.outputs, strict=True))
    batched = all(s.shape and s.shape[0] == -1 for s in inputs + outputs)
    return Signature(inputs, outputs, batched=batched, platform="keras")


def check_keras_archive(path: Path) -> None:
    """Refuse a .keras file that is not a zip archive: Keras itself says "File not found"."""
    try:
        with path.open("rb") as handle:
            archive = zipfile.is_zipfile(handle)
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not archive:
        raise ModelLoadError(f"{path}: not a Keras zip archive (a .keras file is the zip that "
                             "model.save() writes)")


class KerasRunner:
    """Runs a functional or sequential Keras 3 model on the torch backend."""

    def __init__(self, path: Path, options: RunnerOptions | None = None) -> None:
        options = options or RunnerOptions()
        self.path = Path(path)
        if self.path.suffix == ".keras":
            check_keras_archive(self.path)
        set_torch_threads(options)
        keras = import_keras()
        try:
            self._model = keras.saving.load_model(str(self.path), safe_mode=True, compile=False)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelLoadError(f"{self.path}: Keras cannot load it ({first})") from None
        self._signature = keras_signature(self._model)

    @property
    def signature(self) -> Signature:
        return self._signature

    @property
    def device(self) -> str:
        """The torch device holding the weights (Keras puts them on the GPU when there is one)."""
        weights = self._model.weights
        return str(weights[0].value.device) if weights else "cpu"

    def warmup(self) -> None:
        self.run(example_inputs(self._signature, batch_size=1))

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        args = [inputs[spec.name] for spec in self._signature.inputs]
        with torch.inference_mode():
            result = self._model(args[0] if len(args) == 1 else args, training=False)
        if not isinstance(result, list | tuple):
            result = [result]
        return {
            spec.name: (r.detach().cpu().numpy() if isinstance(r, torch.Tensor) else np.asarray(r))
            for spec, r in zip(self._signature.outputs, result, strict=True)
        }
