"""The PyTorch module an optimization starts from: the model's own (torch_factory), or for an ONNX
model its twin (`--torch-model NAME`, a torch_factory model with the same weights). Either is
checked before any work: the twin's signature against the served model's, and the module run
on a few sample rows, its outputs against the served signature (and the twin's against the
served ONNX file). A twin that takes or gives anything else made variants that failed late with
an engine's error, or, with another class count, were kept and served outputs the model's
signature does not have."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from surge.errors import ConfigError, ModelLoadError, first_line
from surge.optimize.source import ModelSource, run_module, run_onnx
from surge.repository import Repository
from surge.repository.config import ORIGINAL
from surge.runtimes import RunnerOptions, Signature
from surge.runtimes.base import TensorSpec, shapes_fit

PROBE_ROWS = 8
SAME_WEIGHTS = 1e-2
"""Largest difference between the twin's and the ONNX file's outputs, relative to the outputs'
largest magnitude (at least 1), still taken for the same weights: fp32 exports differ by ~1e-6,
other weights by the outputs' own size."""


def factory_module(repo: Repository, name: str) -> Any:
    """The torch_factory model `name` built from its factory with its version's weights."""
    from surge.runtimes.torch_runner import build_module, load_state_dict

    config = repo.config(name)
    module = build_module(str(config.factory), config.factory_kwargs)
    path = repo.model_file(name)
    try:
        module.load_state_dict(load_state_dict(path))
    except RuntimeError as exc:  # other keys or shapes: torch's message spans many lines
        first = first_line(exc)
        raise ModelLoadError(f"{path}: weights do not fit {config.factory} ({first})") from None
    return module.eval()


def twin_module(repo: Repository, twin: str, name: str, signature: Signature,
                given_as: str = "--torch-model") -> Any:
    """The module of `--torch-model twin`, refused unless its signature is `name`'s."""
    config = repo.config(twin)
    if config.resolved_engine() != "torch_factory" or not config.factory:
        raise ConfigError(f"{given_as} {twin!r} is not a torch_factory model")
    theirs = repo.load(f"{twin}@{ORIGINAL}", options=RunnerOptions(device="cpu")).signature
    # undeclared outputs are named output, output0, ... by a trial run: their names say nothing
    why = signature_mismatch(signature, theirs, compare_output_names=bool(config.outputs))
    if why:
        raise ConfigError(f"{given_as} {twin!r} does not fit model {name!r}: {why} "
                          f"({name}: {describe(signature)}; {twin}: {describe(theirs)})")
    return factory_module(repo, twin)


def describe(signature: Signature) -> str:
    """`x FP32 [-1, 4] -> y FP32 [-1, 4]`."""
    def side(specs: Sequence[TensorSpec]) -> str:
        return ", ".join(f"{s.name} {s.describe()}" for s in specs)
    return f"{side(signature.inputs)} -> {side(signature.outputs)}"


def signature_mismatch(ours: Signature, theirs: Signature,
                       compare_output_names: bool = True) -> str:
    """The first way `theirs` differs from `ours` (names, order, datatypes, shapes; -1 fits any
    size), as `input 'x' expects FP32 [-1, 4], got INT64 [-1, 8]`; '' when none."""
    for kind, want, got, by_name in (("input", ours.inputs, theirs.inputs, True),
                                     ("output", ours.outputs, theirs.outputs,
                                      compare_output_names)):
        want_names, got_names = [s.name for s in want], [s.name for s in got]
        if (by_name and want_names != got_names) or len(want) != len(got):
            return f"{kind}s {want_names} expected, got {got_names}"
        for a, b in zip(want, got, strict=True):
            if not a.fits(b):
                return f"{kind} {a.name!r} expects {a.describe()}, got {b.describe()}"
    return ""


def probe(source: ModelSource, signature: Signature, what: str) -> None:
    """Run `source.module` on a few sample rows: it must run, give outputs of the served
    signature's shapes and, beside an ONNX file, the ONNX file's values."""
    rows = {n: a[:PROBE_ROWS] for n, a in source.samples.items()}
    try:
        got = run_module(source.module, rows, source.input_names, source.output_names)
    except Exception as exc:  # whatever the module raises on inputs it was not made for
        first = first_line(exc)
        raise ConfigError(f"{what} cannot run the inputs of {source.name!r} ({describe(signature)}): "
                          f"{type(exc).__name__}: {first}") from None
    for spec in signature.outputs:
        if not shapes_fit(spec.shape, got[spec.name].shape):
            raise ConfigError(f"{what}: output {spec.name!r} expects {spec.describe()}, got "
                              f"{list(got[spec.name].shape)} on the inputs of {source.name!r}")
    if source.onnx_path is None:
        return
    served = run_onnx(source.onnx_path, rows)
    peak = max(1.0, *(float(np.abs(a).max(initial=0.0)) for a in served.values()))
    diff = max((float(np.abs(got[n] - served[n]).max(initial=0.0)) for n in served if n in got),
               default=0.0)
    if not diff <= SAME_WEIGHTS * peak:  # NaN too
        raise ConfigError(f"{what} does not compute what {source.name!r} does (outputs differ "
                          f"by up to {diff:.3g} on {len(served[next(iter(served))])} sample rows): "
                          "it needs the same weights")
