"""OpenVINO engine: OpenVINO IR (`model.xml` + `model.bin`) or an `.onnx` file, on Intel CPUs."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from surge.datatypes import numpy_to_v2
from surge.errors import ModelLoadError, SurgeError
from surge.runtimes.base import RunnerOptions, Signature, TensorSpec, example_inputs
from surge.runtimes.dims import DimBounds, batch_limit, check_bounds, run_in_pieces


def import_openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise ModelLoadError("the OpenVINO engine needs OpenVINO: pip install 'surge[openvino]'") from None
    return openvino


def _datatype(port: Any, name: str) -> str:
    """The V2 datatype of a port: bf16 is BF16 (OpenVINO's numpy view of it is float16, whose
    bits mean other numbers), anything numpy has its V2 name; ModelLoadError for the rest."""
    element = port.get_element_type()
    if element.get_type_name() == "bf16":
        return "BF16"
    try:
        return numpy_to_v2(np.dtype(element.to_dtype()))
    except (SurgeError, TypeError, RuntimeError):
        raise ModelLoadError(f"tensor {name!r} has element type {element.get_type_name()}, "
                             "which has no V2 datatype") from None


def _spec(port: Any, index: int, kind: str) -> TensorSpec:
    names = sorted(port.get_names())
    name = names[0] if names else f"{kind}{index}"
    shape = tuple(-1 if d.is_dynamic else d.get_length() for d in port.get_partial_shape())
    return TensorSpec(name, _datatype(port, name), shape)


def _bounds(port: Any) -> DimBounds | None:
    """A port's dimension bounds, when a dynamic one has any (`Dimension(1, 4)`)."""
    dims = list(port.get_partial_shape())
    if not any(d.is_dynamic and (d.get_min_length() > 0 or d.get_max_length() >= 0)
               for d in dims):
        return None
    return DimBounds(tuple(d.get_min_length() for d in dims),
                     tuple(None if d.get_max_length() < 0 else d.get_max_length() for d in dims))


def openvino_signature(model: Any) -> Signature:
    inputs = tuple(_spec(p, i, "input") for i, p in enumerate(model.inputs))
    outputs = tuple(_spec(p, i, "output") for i, p in enumerate(model.outputs))
    batched = bool(inputs) and all(s.shape and s.shape[0] == -1 for s in inputs + outputs)
    return Signature(inputs, outputs, batched=batched, platform="openvino")


def check_openvino_device(path: Path, device: str) -> None:
    if device not in ("auto", "cpu"):
        raise ModelLoadError(f"{path}: the OpenVINO engine runs on cpu, not {device!r}")


def _read(core: Any, path: Path) -> Any:
    if path.suffix == ".xml" and not path.with_suffix(".bin").is_file():
        raise ModelLoadError(f"{path}: OpenVINO IR needs its weights file {path.with_suffix('.bin').name}")
    try:
        return core.read_model(str(path))
    except Exception as exc:
        raise ModelLoadError(f"{path}: OpenVINO cannot read it ({_reason(exc)[:300]})") from None


def _reason(exc: Exception) -> str:
    """The line of an OpenVINO error that says what is wrong: its messages start with lines
    naming the C++ source that threw ("Exception from src/inference/src/cpp/core.cpp:84:")."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    said = [line for line in lines if not line.startswith("Exception from ")]
    return (said or lines or [type(exc).__name__])[0]


class OpenVinoRunner:
    """Compiles a model for OpenVINO's CPU plugin; one infer request per calling thread."""

    def __init__(self, path: Path, options: RunnerOptions | None = None) -> None:
        options = options or RunnerOptions()
        self.path = Path(path)
        check_openvino_device(self.path, options.device)  # the config's fault before the host's
        ov = import_openvino()
        core = ov.Core()
        model = _read(core, self.path)
        if any(port.get_partial_shape().rank.is_dynamic for port in model.inputs):
            raise ModelLoadError(f"{self.path}: an input of dynamic rank cannot be served; "
                                 "give the model's inputs a rank")
        try:
            self._signature = openvino_signature(model)
        except ModelLoadError as exc:
            raise ModelLoadError(f"{self.path}: {exc}") from None
        self._bounds = {spec.name: bounds for spec, port in zip(
            self._signature.inputs, model.inputs, strict=True) if (bounds := _bounds(port))}
        self._batch_limit = batch_limit(self._bounds) if self._signature.batched else None
        # The CPU plugin runs fp32 models in bf16 on CPUs with AMX or AVX-512 BF16 unless told
        # otherwise; served outputs must match the model's own precision (variants are the way
        # to trade accuracy for speed, checked and recorded).
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if options.intra_op_threads:
            config["INFERENCE_NUM_THREADS"] = options.intra_op_threads
        try:
            self._compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:
            raise ModelLoadError(f"{self.path}: OpenVINO cannot compile it ({exc})") from None
        self._local = threading.local()

    @property
    def signature(self) -> Signature:
        return self._signature

    @property
    def device(self) -> str:
        return "cpu"

    def warmup(self) -> None:
        self.run(example_inputs(self._signature, batch_size=1))

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Inputs outside the bounds of the model's dimensions are refused (InputError), a
        batch above its batch bound run in pieces that fit."""
        check_bounds(self._bounds, inputs, self._signature.batched)
        return run_in_pieces(self._infer, inputs, self._batch_limit)

    def _infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        request.infer({spec.name: _tensor(inputs[spec.name], spec.datatype)
                       for spec in self._signature.inputs if spec.name in inputs})
        return {spec.name: _array(request.get_output_tensor(i).data, spec.datatype)
                for i, spec in enumerate(self._signature.outputs)}


def _tensor(array: np.ndarray, datatype: str) -> Any:
    """What OpenVINO is fed: BF16 words as a bf16 tensor, anything else as a contiguous array."""
    array = np.ascontiguousarray(array)
    if datatype != "BF16":
        return array
    ov = import_openvino()
    return ov.Tensor(array, array.shape, ov.Type.bf16)


def _array(data: np.ndarray, datatype: str) -> np.ndarray:
    """A copy of an output: bf16 as BF16 words (OpenVINO shows them as float16)."""
    return np.array(data.view(np.uint16) if datatype == "BF16" else data)
