"""ONNX Runtime engine: the execution provider the device asks for, the CPU provider as fallback."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from surge.datatypes import ORT_TO_V2
from surge.errors import InputError, ModelLoadError
from surge.runtimes.base import RunnerOptions, Signature, TensorSpec, example_inputs
from surge.runtimes.int8_weights import served_bytes

log = logging.getLogger(__name__)
CPU_EP = "CPUExecutionProvider"
# device kind -> the providers it asks for, in ONNX Runtime's order of preference
DEVICE_PROVIDERS = {
    "auto": ("CUDAExecutionProvider",),
    "cpu": (),
    "cuda": ("CUDAExecutionProvider",),
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider"),
    "openvino": ("OpenVINOExecutionProvider",),
}
PROVIDER_PACKAGE = {"CUDAExecutionProvider": "onnxruntime-gpu (pip install 'surge[gpu]')",
                    "TensorrtExecutionProvider": "onnxruntime-gpu with TensorRT",
                    "OpenVINOExecutionProvider": "onnxruntime-openvino"}


def parse_device(device: str) -> tuple[str, int]:
    """'tensorrt:1' -> ('tensorrt', 1); the kinds are DEVICE_PROVIDERS' keys."""
    kind, _, index = device.partition(":")
    if kind not in DEVICE_PROVIDERS or (index and not index.isdigit()) or (
            index and kind not in ("cuda", "tensorrt")):
        raise ModelLoadError(f"device {device!r} is not one of auto, cpu, cuda[:N], tensorrt[:N], "
                             "openvino")
    return kind, int(index or 0)


def select_providers(device: str, available: list[str]) -> list[tuple[str, dict[str, str]]]:
    """The providers to ask ONNX Runtime for, each with its options, the CPU provider last."""
    kind, index = parse_device(device)
    chosen = [p for p in DEVICE_PROVIDERS[kind] if p in available]
    missing = [p for p in DEVICE_PROVIDERS[kind] if p not in available]
    if missing and kind != "auto":
        log.warning("device %s: %s not available in this ONNX Runtime (needs %s); falling back to %s",
                    device, ", ".join(missing), PROVIDER_PACKAGE[missing[0]],
                    ", ".join([*chosen, CPU_EP]))
    per_device = {"device_id": str(index)}
    return [(p, per_device if p in ("CUDAExecutionProvider", "TensorrtExecutionProvider") else {})
            for p in chosen] + [(CPU_EP, {})]


def _spec(arg: object) -> TensorSpec:
    """A session input or output (NodeArg): `tensor(float)`, dims as ints, names or None."""
    kind, shape = arg.type, arg.shape  # type: ignore[attr-defined]
    datatype = ORT_TO_V2.get(kind, "FP32")
    dims = tuple(d if isinstance(d, int) else -1 for d in (shape or ()))
    return TensorSpec(arg.name, datatype, dims)  # type: ignore[attr-defined]


def session_signature(session: object) -> Signature:
    """Names, datatypes and shapes as the session reads them from the graph (initializers are
    no inputs); dim 0 symbolic everywhere = batched. Read from the session, not with the onnx
    package, whose import costs each worker a second of CPU (ml_dtypes)."""
    inputs = tuple(_spec(v) for v in session.get_inputs())  # type: ignore[attr-defined]
    outputs = tuple(_spec(v) for v in session.get_outputs())  # type: ignore[attr-defined]
    tensors = inputs + outputs
    batched = bool(tensors) and all(t.shape and t.shape[0] == -1 for t in tensors)
    return Signature(inputs, outputs, batched=batched, platform="onnxruntime_onnx")


def _model(path: Path, providers: list[str]) -> str | bytes:
    """What the session loads: the file, or on a CPU without VNNI the model with its int8
    weights as uint8 (`surge.runtimes.int8_weights`; CPU kernels only)."""
    rewritten = served_bytes(path) if providers == [CPU_EP] else None
    return rewritten if rewritten is not None else str(path)


class OnnxRunner:
    """Runs an `.onnx` file in an ONNX Runtime InferenceSession."""

    def __init__(self, path: Path, options: RunnerOptions | None = None) -> None:
        import onnxruntime as ort
        from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument, InvalidProtobuf

        options = options or RunnerOptions()
        self.path = Path(path)
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = options.intra_op_threads
        session_options.inter_op_num_threads = options.inter_op_threads
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        spin = "1" if options.spin_wait else "0"  # "run" spins too, and stops when a run returns
        session_options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        session_options.add_session_config_entry("session.inter_op.allow_spinning", spin)
        if options.spin_wait == "run":
            session_options.add_session_config_entry("session.force_spinning_stop", "1")
        providers = select_providers(options.device, ort.get_available_providers())
        names = [p for p, _ in providers]
        try:
            self._session = ort.InferenceSession(
                _model(self.path, names), session_options, providers=names,
                provider_options=[o for _, o in providers],
            )
        except InvalidProtobuf as exc:
            raise ModelLoadError(f"{self.path}: not a valid ONNX model ({exc})") from None
        except Exception as exc:
            raise ModelLoadError(f"{self.path}: ONNX Runtime cannot load it ({exc})") from None
        self._signature = session_signature(self._session)
        log.info("%s: ONNX Runtime runs it on %s (device %s)", self.path.name,
                 ", ".join(self._session.get_providers()), options.device)
        self._output_names = self._signature.output_names
        self._invalid_argument = InvalidArgument  # ONNX Runtime's INVALID_ARGUMENT status
        # Every run takes these options, so that `interrupt` can stop it. One for all runs, not
        # one a run: a runner's runs are sequential (one instance, one thread), and a fresh
        # RunOptions costs 0.2 us where reusing one costs nothing (docs/serving-engine.md).
        self._run_options = ort.RunOptions()
        self._bytes_inputs = {s.name for s in self._signature.inputs if s.datatype == "BYTES"}
        self._bytes_outputs = {s.name for s in self._signature.outputs if s.datatype == "BYTES"}

    @property
    def signature(self) -> Signature:
        return self._signature

    @property
    def device(self) -> str:
        """'cuda' when a GPU provider (CUDA, TensorRT) runs the session, else 'cpu'."""
        gpu = {"CUDAExecutionProvider", "TensorrtExecutionProvider"}
        return "cuda" if gpu & set(self._session.get_providers()) else "cpu"

    def warmup(self) -> None:
        self.run(example_inputs(self._signature, batch_size=1))

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = dict(inputs)
        for name in self._bytes_inputs & feed.keys():
            feed[name] = _to_str(name, feed[name])  # ONNX Runtime strings are str; V2 BYTES are bytes
        try:
            computed = self._session.run(self._output_names, feed, self._run_options)
        except self._invalid_argument as error:
            # ONNX Runtime's INVALID_ARGUMENT at run time is about the values fed (an index past
            # a Gather's table, a shape computed from the input): bad input, not a broken model
            # (that fails its warm-up). Other failures stay the model's.
            raise InputError(f"ONNX Runtime refused the input: {error}") from None
        results = dict(zip(self._output_names, computed, strict=True))
        for name in self._bytes_outputs:
            results[name] = _to_bytes(results[name])
        return results

    def interrupt(self) -> None:
        """Make the run under way (and any run until `resume`) fail; from any thread. ONNX
        Runtime checks the flag between operators, a Loop's iterations included."""
        self._run_options.terminate = True

    def resume(self) -> None:
        self._run_options.terminate = False


def _to_str(name: str, array: np.ndarray) -> np.ndarray:
    out = np.empty(array.shape, dtype=object)
    try:
        out.ravel()[:] = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in array.ravel()]
    except UnicodeDecodeError:
        raise InputError(f"input {name!r}: ONNX string tensors take UTF-8 text only") from None
    return out


def _to_bytes(array: np.ndarray) -> np.ndarray:
    out = np.empty(array.shape, dtype=object)
    out.ravel()[:] = [
        v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in array.ravel()
    ]
    return out
