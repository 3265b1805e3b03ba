"""TFLite engine: `.tflite` flat buffers run in the LiteRT interpreter (`ai-edge-litert`).

An int8/uint8 tensor that carries per-tensor quantization parameters is served as FP32: inputs
are quantized with the model's own scale and zero point before they enter the interpreter and
outputs are dequantized after, so clients send and get the same floats as for the fp32 model.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from surge.datatypes import numpy_to_v2
from surge.errors import InputError, ModelLoadError
from surge.runtimes.base import RunnerOptions, Signature, TensorSpec, example_inputs

TFLITE_MAGIC = b"TFL3"  # flatbuffer file identifier, bytes 4..8


@dataclass(frozen=True)
class Quantization:
    """How one tensor's integers map to reals: real = (q - zero_point) * scale."""

    dtype: np.dtype[Any]
    scale: float
    zero_point: int

    def quantize(self, values: np.ndarray, name: str = "") -> np.ndarray:
        """The integers for `values` (input `name`), rounded and saturated; InputError for a
        NaN, which no integer stands for (the cast would make it an arbitrary one)."""
        if values.dtype.kind == "f" and np.isnan(values).any():
            raise InputError(f"input {name!r} holds NaN, which its {self.dtype} quantized tensor "
                             "cannot represent")
        info = np.iinfo(self.dtype)
        scaled = np.round(values.astype(np.float32) / self.scale) + self.zero_point
        return np.clip(scaled, info.min, info.max).astype(self.dtype)

    def dequantize(self, values: np.ndarray) -> np.ndarray:
        return ((values.astype(np.float32) - self.zero_point) * self.scale).astype(np.float32)


def _quantization(detail: Mapping[str, Any]) -> Quantization | None:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    dtype = np.dtype(detail["dtype"])
    if dtype.kind not in "iu" or not scale:
        return None
    if len(detail.get("quantization_parameters", {}).get("scales", [])) > 1:
        raise ModelLoadError(f"tensor {detail['name']!r}: per-channel quantized model inputs and "
                             "outputs are not supported")
    return Quantization(dtype, float(scale), int(zero_point))


def _spec(name: str, detail: Mapping[str, Any]) -> TensorSpec:
    shape = tuple(int(d) for d in detail.get("shape_signature", detail["shape"]))
    dtype = np.dtype(np.float32) if _quantization(detail) else np.dtype(detail["dtype"])
    return TensorSpec(name, numpy_to_v2(dtype), shape)


def _check_file(path: Path) -> None:
    with path.open("rb") as handle:
        head = handle.read(8)
    if head[4:8] != TFLITE_MAGIC:
        raise ModelLoadError(f"{path}: not a TFLite flat buffer (no TFL3 identifier)")


class TfliteRunner:
    """Runs a `.tflite` model's serving signature in the LiteRT interpreter on CPU."""

    def __init__(self, path: Path, options: RunnerOptions | None = None) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise ModelLoadError("TFLite models need LiteRT: pip install 'surge[tflite]'") from None
        options = options or RunnerOptions()
        self.path = Path(path)
        _check_file(self.path)
        try:
            self._interpreter = Interpreter(model_path=str(self.path),
                                            num_threads=options.intra_op_threads or None)
            self._interpreter.allocate_tensors()  # ops this LiteRT lacks (Flex) fail here
            self._runner = self._interpreter.get_signature_runner()
        except (ValueError, RuntimeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelLoadError(f"{self.path}: LiteRT cannot load it ({first[:300]})") from None
        inputs, outputs = self._runner.get_input_details(), self._runner.get_output_details()
        self._quantized = {name: q for name, d in (*inputs.items(), *outputs.items())
                           if (q := _quantization(d)) is not None}
        specs_in = tuple(_spec(n, d) for n, d in inputs.items())
        specs_out = tuple(_spec(n, d) for n, d in outputs.items())
        batched = all(s.shape and s.shape[0] == -1 for s in specs_in + specs_out)
        self._signature = Signature(specs_in, specs_out, batched=batched, platform="tflite")
        self._lock = threading.Lock()  # one interpreter holds one set of tensors at a time

    @property
    def signature(self) -> Signature:
        return self._signature

    @property
    def device(self) -> str:
        return "cpu"

    @property
    def quantized(self) -> tuple[str, ...]:
        """Names of the tensors whose int8/uint8 values are (de)quantized at the boundary."""
        return tuple(self._quantized)

    def warmup(self) -> None:
        self.run(example_inputs(self._signature, batch_size=1))

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {name: (self._quantized[name].quantize(array, name) if name in self._quantized
                       else np.ascontiguousarray(array)) for name, array in inputs.items()}
        with self._lock:  # the runner resizes its tensors to each batch
            results = self._runner(**feed)
        return {
            spec.name: (self._quantized[spec.name].dequantize(results[spec.name])
                        if spec.name in self._quantized else np.array(results[spec.name]))
            for spec in self._signature.outputs
        }
