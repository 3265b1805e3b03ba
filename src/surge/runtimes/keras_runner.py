"""Keras 3 engine: `.keras` files run on Keras' torch backend, loaded with safe_mode."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from surge.datatypes import numpy_to_v2
from surge.errors import ModelLoadError, SurgeError
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


def _keras_dtype(name: str, dtype: str) -> str:
    """The V2 datatype of a Keras dtype name; ModelLoadError for one without any (`string`):
    a tensor shown with another datatype would refuse the values it takes, or be fed others."""
    if str(dtype) == "bfloat16":
        return "BF16"
    try:
        return numpy_to_v2(np.dtype(str(dtype)))
    except (TypeError, SurgeError):
        raise ModelLoadError(f"tensor {name!r} has Keras dtype {dtype}, which has no V2 "
                             "datatype") from None


def _spec(name: str, tensor: Any) -> TensorSpec:
    shape = tuple(-1 if d is None else int(d) for d in tensor.shape)
    return TensorSpec(name, _keras_dtype(name, tensor.dtype), shape)


def _named_inputs(model: Any) -> list[tuple[str, Any]]:
    """The model's inputs by the names requests give: the keys of a model called with a dict
    (it must be called with that dict again), else each input tensor's own name."""
    structure = getattr(model, "input", None)
    if isinstance(structure, Mapping):
        return [(str(key), tensor) for key, tensor in structure.items()]
    return [(t.name, t) for t in model.inputs]


def keras_signature(model: Any) -> Signature:
    inputs = tuple(_spec(name, t) for name, t in _named_inputs(model))
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
        try:
            self._signature = keras_signature(self._model)
        except ModelLoadError as exc:
            raise ModelLoadError(f"{self.path}: {exc}") from None
        self._dict_inputs = isinstance(getattr(self._model, "input", None), Mapping)

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

        args = [_fed(inputs[spec.name], spec.datatype) for spec in self._signature.inputs]
        if self._dict_inputs:
            feed: Any = dict(zip(self._signature.input_names, args, strict=True))
        else:
            feed = args[0] if len(args) == 1 else args
        with torch.inference_mode():
            result = self._model(feed, training=False)
        if isinstance(result, Mapping):
            result = [result[name] for name in self._signature.output_names]
        elif not isinstance(result, list | tuple):
            result = [result]
        return {spec.name: _returned(r, spec.datatype)
                for spec, r in zip(self._signature.outputs, result, strict=True)}


def _fed(array: np.ndarray, datatype: str) -> Any:
    """What the model is called with: BF16 words as a bfloat16 tensor (Keras would cast the
    words' integer values), anything else as the array."""
    if datatype != "BF16":
        return array
    import torch

    return torch.from_numpy(np.ascontiguousarray(array).view(np.int16)).view(torch.bfloat16)


def _returned(result: Any, datatype: str) -> np.ndarray:
    """An output as an array: bfloat16 as BF16 words (uint16)."""
    import torch

    if not isinstance(result, torch.Tensor):
        return np.asarray(result)
    tensor = result.detach().cpu()
    if datatype == "BF16" or tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(np.uint16)
    return tensor.numpy()
