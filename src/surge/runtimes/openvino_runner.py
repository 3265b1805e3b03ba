"""OpenVINO engine: OpenVINO IR (`model.xml` + `model.bin`) or an `.onnx` file, on Intel CPUs."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from surge.datatypes import numpy_to_v2
from surge.errors import ModelLoadError
from surge.runtimes.base import RunnerOptions, Signature, TensorSpec, example_inputs


def import_openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise ModelLoadError("the OpenVINO engine needs OpenVINO: pip install 'surge[openvino]'") from None
    return openvino


def _spec(port: Any, index: int, kind: str) -> TensorSpec:
    names = sorted(port.get_names())
    shape = tuple(-1 if d.is_dynamic else d.get_length() for d in port.get_partial_shape())
    dtype = np.dtype(port.get_element_type().to_dtype())
    return TensorSpec(names[0] if names else f"{kind}{index}", numpy_to_v2(dtype), shape)


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
        self._signature = openvino_signature(model)
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
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        request.infer({name: np.ascontiguousarray(array) for name, array in inputs.items()})
        return {spec.name: np.array(request.get_output_tensor(i).data)
                for i, spec in enumerate(self._signature.outputs)}
