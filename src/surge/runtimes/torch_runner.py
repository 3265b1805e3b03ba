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
from surge.runtimes.dims import batch_limit, check_bounds, run_in_pieces
from surge.runtimes.torch_archive import read_checked_archive
from surge.runtimes.torch_program import exported_bounds, exported_signature, to_numpy, to_torch
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

        args = [to_torch(_writable(inputs[spec.name]), spec.datatype).to(self._device)
                for spec in self._signature.inputs]
        with torch.inference_mode():
            try:
                result = self._call(args)
            except IndexError as error:
                if TORCH_INDEX_ERROR not in str(error):
                    raise  # the module's own code
                # An index tensor past a table (nn.Embedding, index_select): the values fed,
                # which run_rows then finds among the batch's rows.
                raise InputError(f"PyTorch refused the input: {error}") from None
        return dict(zip(self._signature.output_names, map(to_numpy, self._leaves(result)),
                        strict=True))

    def _call(self, args: list[Any]) -> Any:
        return self._module(*args)

    def _leaves(self, result: Any) -> list[Any]:
        """The output tensors of a forward's result, in the signature's order: a dict by the
        outputs' names when it has them all, else the leaves of any nesting of tuples, lists
        and dicts (a forward returning `(a, (b, c))` has three outputs)."""
        from torch.utils import _pytree

        names = self._signature.output_names
        if isinstance(result, Mapping) and all(name in result for name in names):
            return [result[name] for name in names]
        return list(_pytree.tree_leaves(result))


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
        try:
            self._signature = exported_signature(program)
        except ModelLoadError as exc:
            raise ModelLoadError(f"{self.path}: {exc}") from None
        self._in_spec = program.call_spec.in_spec
        self._bounds = exported_bounds(program, self._signature.input_names)
        self._batch_limit = batch_limit(self._bounds) if self._signature.batched else None
        self._device = torch_device(options.device)
        self._module = program.module().to(self._device)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Inputs outside the bounds the program was exported with are refused (InputError),
        a batch above its batch bound run in pieces that fit."""
        check_bounds(self._bounds, inputs, self._signature.batched)
        return run_in_pieces(super().run, inputs, self._batch_limit)

    def _call(self, args: list[Any]) -> Any:
        """The forward called with the structure it was exported with: a dict or list of
        tensors is rebuilt from the flat inputs."""
        from torch.utils import _pytree

        if self._in_spec is None:
            return self._module(*args)
        positional, keywords = _pytree.tree_unflatten(args, self._in_spec)
        return self._module(*positional, **keywords)


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

        args = [to_torch(probe[s.name], s.datatype).to(self._device) for s in trial.inputs]
        with torch.inference_mode():
            result = self._module(*args)
        tensors = self._leaves(result)
        names = ["output"] if len(tensors) == 1 else [f"output{i}" for i in range(len(tensors))]
        if isinstance(result, Mapping) and len(result) == len(tensors):
            names = [str(key) for key in result]  # run() reads a dict result by these names
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
