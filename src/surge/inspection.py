"""What `surge inspect` and `surge predict` do, as functions the API and tests can call."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from surge.datafiles import load_npy
from surge.errors import InputError, SurgeError
from surge.repository import LoadedModel, Repository
from surge.runtimes import Signature, engine_for_path, load_runner
from surge.runtimes.base import Runner


def describe_path(path: Path) -> tuple[str, Signature, str]:
    """(engine, signature, what was loaded) for a model file or a `repo/model` directory."""
    path = Path(path)
    if path.is_dir():
        loaded = Repository(path.parent).load(path.name)
        return loaded.config.resolved_engine(), loaded.signature, str(loaded.path)
    if not path.exists():
        raise SurgeError(f"{path}: no such file or directory")
    engine = engine_for_path(path)
    runner: Runner = load_runner(path)
    return engine, runner.signature, str(path)


def _load_npy(path: str) -> np.ndarray:
    return load_npy(path, "input file", npz_hint=": save each input as its own .npy "
                    "(np.save) and pass NAME=file.npy")


def _with_batch_dim(array: np.ndarray, name: str, signature: Signature) -> np.ndarray:
    spec = signature.input(name)
    if signature.batched and array.ndim == len(spec.shape) - 1:
        return array[None]
    return array


def read_inputs(signature: Signature, specs: list[str]) -> dict[str, np.ndarray]:
    """`file.npy` (one-input models) or `name=file.npy` items -> validated input arrays."""
    inputs: dict[str, np.ndarray] = {}
    for item in specs:
        name, sep, file = item.partition("=")
        if not sep:
            if len(signature.inputs) != 1:
                raise InputError(
                    f"model has inputs {signature.input_names}: pass --input NAME=file.npy"
                )
            name, file = signature.inputs[0].name, item
        inputs[name] = _with_batch_dim(_load_npy(file), name, signature)
    signature.validate_inputs(inputs)
    return inputs


def predict_files(loaded: LoadedModel, specs: list[str]) -> dict[str, np.ndarray]:
    inputs = read_inputs(loaded.signature, specs)
    return loaded.runner.run(inputs)
