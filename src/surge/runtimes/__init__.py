"""Model engines behind one Runner interface."""

from __future__ import annotations

from pathlib import Path

from surge.errors import ModelLoadError
from surge.runtimes.base import Runner, RunnerOptions, Signature, TensorSpec, example_inputs

__all__ = [
    "ENGINE_BY_SUFFIX",
    "Runner",
    "RunnerOptions",
    "Signature",
    "TensorSpec",
    "check_device",
    "engine_for_path",
    "engine_loads",
    "example_inputs",
    "load_runner",
]

ENGINE_BY_SUFFIX = {".onnx": "onnxruntime", ".pt2": "torch_export", ".keras": "keras",
                    ".tflite": "tflite", ".xml": "openvino"}
# Engines that also load files of another engine's suffix: OpenVINO reads ONNX natively.
ALSO_LOADS = {"openvino": (".onnx",)}


def engine_loads(engine: str, path: Path) -> bool:
    """Whether `engine` can load a file with `path`'s suffix."""
    suffix = Path(path).suffix
    return ENGINE_BY_SUFFIX.get(suffix) == engine or suffix in ALSO_LOADS.get(engine, ())


def engine_for_path(path: Path) -> str:
    engine = ENGINE_BY_SUFFIX.get(Path(path).suffix)
    if engine is None:
        known = ", ".join(ENGINE_BY_SUFFIX)
        raise ModelLoadError(f"{path}: unknown model file type; expected one of {known}")
    return engine


def check_device(engine: str, path: Path, device: str) -> None:
    """The device check `engine`'s runner makes when it loads `path`, made without loading it
    (`surge models`). Torch parses its devices itself (importing it costs seconds: only for a
    device other than auto or cpu)."""
    engine = ENGINE_BY_SUFFIX.get(Path(path).suffix, "") if engine == "auto" else engine
    if engine == "tflite" and device not in ("auto", "cpu"):
        raise ModelLoadError(f"{path}: the LiteRT engine runs on cpu, not {device!r}")
    if engine in ("torch_export", "torch_factory") and device not in ("auto", "cpu"):
        from surge.runtimes.torch_runner import torch_device

        torch_device(device)
    if engine == "onnxruntime":
        from surge.runtimes.onnx_runner import parse_device

        parse_device(device)
    elif engine == "openvino":
        from surge.runtimes.openvino_runner import check_openvino_device

        check_openvino_device(Path(path), device)


def load_runner(path: Path, options: RunnerOptions | None = None, engine: str | None = None) -> Runner:
    """Load a self-describing model file (.onnx, .pt2, .keras, .tflite, .xml) into its engine."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: " + ("not a regular file" if path.exists() else
                                            "model file not found"))
    engine = engine or engine_for_path(path)
    if engine == "onnxruntime":
        from surge.runtimes.onnx_runner import OnnxRunner

        return OnnxRunner(path, options)
    if engine == "torch_export":
        from surge.runtimes.torch_runner import ExportedProgramRunner

        return ExportedProgramRunner(path, options)
    if engine == "keras":
        from surge.runtimes.keras_runner import KerasRunner

        return KerasRunner(path, options)
    if engine == "tflite":
        from surge.runtimes.tflite_runner import TfliteRunner

        return TfliteRunner(path, options)
    if engine == "openvino" and engine_loads(engine, path):
        from surge.runtimes.openvino_runner import OpenVinoRunner

        return OpenVinoRunner(path, options)
    raise ModelLoadError(f"{path}: engine {engine!r} cannot load a file by itself")
