"""PyTorch engine: `torch.export` programs (`.pt2`) and trusted factories plus safetensors weights.

Nothing here unpickles arbitrary objects: weights come from safetensors or from
`torch.load(weights_only=True)`, which refuses anything but tensors and plain containers, and a
`.pt2` archive is checked entry by entry before `torch.export.load` reads it (torch_archive.py).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from surge.datatypes import torch_to_v2
from surge.errors import InputError, ModelLoadError
from surge.runtimes.base import RunnerOptions, Signature, TensorSpec, example_inputs
from surge.runtimes.torch_archive import read_checked_archive
from surge.trusted import import_object


def torch_device(device: str) -> Any:
    """The torch device a model's `device` names (auto: CUDA when there is one); ModelLoadError
    for a string torch does not parse, or a device this machine does not have."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        reason = str(exc).split(" device type at start")[0]
        raise ModelLoadError(f"device {device!r} is not a torch device ({reason})") from None
    if parsed.type == "cpu":
        return parsed
    count_devices = getattr(getattr(torch, parsed.type, None), "device_count", None)
    count = count_devices() if callable(count_devices) else 0
    if count == 0:
        raise ModelLoadError(f"device {device!r}: this machine has no {parsed.type} device "
                             f"that torch can use; use cpu or auto")
    if parsed.index is not None and parsed.index >= count:
        raise ModelLoadError(f"device {device!r}: this machine has {count} {parsed.type} "
                             f"device{'s' if count > 1 else ''} (0-{count - 1})")
    return parsed


def set_torch_threads(options: RunnerOptions) -> None:
    import torch

    if options.intra_op_threads > 0:
        torch.set_num_threads(options.intra_op_threads)
    if options.inter_op_threads > 0:
        # Can only be set once per process, before any parallel work starts.
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(options.inter_op_threads)


def load_state_dict(path: Path) -> dict[str, Any]:
    """Weights from safetensors, or a tensors-only pickle (`weights_only=True`)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except Exception as exc:
            raise ModelLoadError(f"{path}: not a valid safetensors file ({exc})") from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"{path}: refused to load: not a plain tensor file ({first_line})"
        ) from None
    if not isinstance(state, dict):
        raise ModelLoadError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


def resolve_factory(reference: str) -> Callable[..., Any]:
    """`package.module:factory` -> the callable. Only trusted code named by the operator."""
    factory: Callable[..., Any] = import_object(reference, "factory", ModelLoadError,
                                                callable_only=True)
    return factory


def build_module(reference: str, kwargs: Mapping[str, Any] | None) -> Any:
    """The module `reference`'s factory builds from `kwargs` (a config's `factory_kwargs`): an
    argument the factory does not take, or a value it refuses, fails the load in one line."""
    factory = resolve_factory(reference)
    try:
        return factory(**dict(kwargs or {}))
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"factory {reference} with factory_kwargs {dict(kwargs or {})}: "
                             f"{type(exc).__name__}: {exc}") from None


def _spec_from_value(name: str, value: Any, batched: bool) -> TensorSpec:
    import torch

    shape = []
    for i, dim in enumerate(value.shape):
        static = isinstance(dim, int) and not (batched and i == 0)
        shape.append(int(dim) if static else -1)
    dtype = value.dtype if isinstance(value, torch.Tensor) or hasattr(value, "dtype") else None
    return TensorSpec(name, torch_to_v2(dtype), tuple(shape))


def _output_names(program: Any, count: int) -> list[str]:
    """A program whose forward returns a dict names its outputs by the keys (so an exported
    variant keeps the original's output names); otherwise output / output0, output1, ..."""
    spec = program.call_spec.out_spec
    if spec is not None and spec.type is dict and len(spec.context) == count:
        return [str(key) for key in spec.context]
    return ["output"] if count == 1 else [f"output{i}" for i in range(count)]


def exported_signature(program: Any) -> Signature:
    """Signature of a `torch.export.ExportedProgram`: dims marked dynamic become -1."""
    user_inputs = list(program.graph_signature.user_inputs)
    nodes = {n.name: n for n in program.graph.nodes}
    input_vals = [nodes[name].meta["val"] for name in user_inputs]
    output_node = next(n for n in program.graph.nodes if n.op == "output")
    output_vals = [arg.meta["val"] for arg in output_node.args[0]]
    all_vals = input_vals + output_vals
    batched = bool(all_vals) and all(
        len(v.shape) > 0 and not isinstance(v.shape[0], int) for v in all_vals
    )
    # One exported input per model input; names follow the forward() parameters.
    names = [s.arg.name for s in program.graph_signature.input_specs if s.arg.name in user_inputs]
    inputs = tuple(_spec_from_value(n, v, batched) for n, v in zip(names, input_vals, strict=True))
    out_names = _output_names(program, len(output_vals))
    outputs = tuple(
        _spec_from_value(n, v, batched) for n, v in zip(out_names, output_vals, strict=True)
    )
    return Signature(inputs, outputs, batched=batched, platform="pytorch_export")


# What torch's indexing kernels say of an index past the tensor (negative ones included).
TORCH_INDEX_ERROR = "index out of range in self"

def _writable(array: np.ndarray) -> np.ndarray:
    """A contiguous array the module may change: torch ignores numpy's read-only flag, and an
    in-process instance is handed a request's own arrays, so a module changing its input in
    place would write into the request's body or the client's shared-memory region."""
    return np.ascontiguousarray(array) if array.flags.writeable else np.array(array)


class _TorchRunnerBase:
    """Shared run loop: numpy in, module forward under inference_mode, numpy out."""

    _signature: Signature
    _module: Any
    _device: Any

    @property
    def signature(self) -> Signature:
        return self._signature

    @property
    def device(self) -> str:
        """Where the module runs: 'cpu', 'cuda:0', ..."""
        return str(self._device)

    def warmup(self) -> None:
        self.run(example_inputs(self._signature, batch_size=1))

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        args = [torch.from_numpy(_writable(inputs[spec.name])).to(self._device)
                for spec in self._signature.inputs]
        with torch.inference_mode():
            try:
                result = self._module(*args)
            except IndexError as error:
                if TORCH_INDEX_ERROR not in str(error):
                    raise  # the module's own code
                # An index tensor past a table (nn.Embedding, index_select): the values fed,
                # which run_rows then finds among the batch's rows.
                raise InputError(f"PyTorch refused the input: {error}") from None
        if isinstance(result, torch.Tensor):
            result = (result,)
        elif isinstance(result, Mapping):
            result = tuple(result[name] for name in self._signature.output_names)
        return {
            spec.name: tensor.detach().cpu().numpy()
            for spec, tensor in zip(self._signature.outputs, result, strict=True)
        }


class ExportedProgramRunner(_TorchRunnerBase):
    """Runs a `torch.export` program saved with `torch.export.save` (`.pt2`)."""

    def __init__(self, path: Path, options: RunnerOptions | None = None) -> None:
        import torch

        options = options or RunnerOptions()
        self.path = Path(path)
        set_torch_threads(options)
        archive = read_checked_archive(self.path)
        try:
            program = torch.export.load(archive)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelLoadError(f"{self.path}: not a valid torch.export program ({first})") from None
        self._signature = exported_signature(program)
        self._device = torch_device(options.device)
        self._module = program.module().to(self._device)


class FactoryRunner(_TorchRunnerBase):
    """Builds a module from a trusted `package.module:factory` and loads safetensors weights.

    A plain nn.Module carries no signature, so the inputs come from the model config; the
    outputs are found by one trial forward pass when not given.
    """

    def __init__(
        self,
        factory: str,
        weights: Path,
        inputs: tuple[TensorSpec, ...],
        outputs: tuple[TensorSpec, ...] = (),
        factory_kwargs: Mapping[str, Any] | None = None,
        options: RunnerOptions | None = None,
    ) -> None:
        import torch

        options = options or RunnerOptions()
        set_torch_threads(options)
        module = build_module(factory, factory_kwargs)
        state = load_state_dict(Path(weights))
        try:
            module.load_state_dict(state)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise ModelLoadError(f"{weights}: weights do not fit {factory} ({first})") from None
        self._device = torch_device(options.device)
        self._module = module.eval().to(self._device)
        if not inputs:
            raise ModelLoadError(f"factory model {factory}: config must declare its inputs")
        batched = all(s.shape and s.shape[0] == -1 for s in inputs)
        self._signature = Signature(inputs, outputs, batched=batched, platform="pytorch_libtorch")
        if not outputs:
            self._signature = Signature(
                inputs, self._trial_outputs(), batched=batched, platform="pytorch_libtorch"
            )
        del torch

    def _trial_outputs(self) -> tuple[TensorSpec, ...]:
        probe = example_inputs(self._signature, batch_size=2)
        trial = Signature(self._signature.inputs, (TensorSpec("output", "FP32", ()),),
                          batched=self._signature.batched)
        self._signature = trial
        import torch

        args = [torch.from_numpy(probe[s.name]).to(self._device) for s in trial.inputs]
        with torch.inference_mode():
            result = self._module(*args)
        tensors = (result,) if isinstance(result, torch.Tensor) else tuple(result)
        names = ["output"] if len(tensors) == 1 else [f"output{i}" for i in range(len(tensors))]
        specs = []
        for name, tensor in zip(names, tensors, strict=True):
            shape = tuple(-1 if (trial.batched and i == 0) else d for i, d in enumerate(tensor.shape))
            specs.append(TensorSpec(name, torch_to_v2(tensor.dtype), shape))
        return tuple(specs)


def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available()) and os.environ.get("SURGE_DEVICE", "") != "cpu"
    except ImportError:  # pragma: no cover
        return False
