"""What `surge inspect` and `surge predict` do, as functions the API and tests can call."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from surge.datafiles import load_npy
from surge.errors import InputError, InvalidNameError, SurgeError
from surge.repository import LoadedModel, Repository
from surge.repository.config import CONFIG_FILE
from surge.repository.repository import MODEL_FILES, VARIANT_FILE, check_version
from surge.runtimes import Signature, engine_for_path, load_runner
from surge.runtimes.base import Runner


def describe_path(path: Path) -> tuple[str, Signature, str]:
    """(engine, signature, what was loaded) for a model file or a `repo/model` directory."""
    path = Path(path)
    if path.is_dir():
        # `.` and `..` name their folder (abspath normalizes them; it follows no symlink)
        where = Path(os.path.abspath(path))
        check_model_dir(path if path.name == where.name else where)
        loaded = Repository(where.parent).load(where.name)
        return loaded.config.resolved_engine(), loaded.signature, str(loaded.path)
    if not path.exists():
        raise SurgeError(f"{path}: no such file or directory")
    engine = engine_for_path(path)
    runner: Runner = load_runner(path)
    return engine, runner.signature, str(path)


def check_model_dir(path: Path) -> None:
    """Refuse, saying what to pass instead, a folder `surge inspect` cannot take for a model: a
    version folder, a variant folder or a model repository (loading it as a model would say
    `model '1' has no servable version`). A folder that looks like a model loads as one."""
    with contextlib.suppress(OSError):  # a folder that cannot be listed: the load says why
        _check_model_dir(path)


def _check_model_dir(path: Path) -> None:
    if _looks_like_model(path):
        return
    files = [path / f for f in MODEL_FILES if (path / f).is_file()]
    the_file = f" or the model file {files[0]}" if files else ""
    model = path.parent
    if (path / VARIANT_FILE).is_file():
        raise SurgeError(f"{path} is variant {path.name!r} of model {model.parent.name!r}: "
                         f"inspect {model.parent}{the_file}")
    if _is_version(path.name) and (files or _looks_like_model(model)):
        raise SurgeError(f"{path} is a version folder of model {model.name!r}: inspect "
                         f"{model}{the_file}")
    models = [name for name in Repository(path).model_names() if _looks_like_model(path / name)]
    if models:
        listed = ", ".join(models[:10]) + (f", ... ({len(models)} in all)" if models[10:] else "")
        raise SurgeError(f"{path} is a model repository (models: {listed}): inspect "
                         f"{path / 'NAME'}")


def _looks_like_model(path: Path) -> bool:
    """A model folder: a config or a version folder in it."""
    return (path / CONFIG_FILE).is_file() or any(
        _is_version(p.name) and p.is_dir() for p in path.iterdir())


def _is_version(name: str) -> bool:
    try:
        check_version(name)
    except InvalidNameError:
        return False
    return True


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
        name, file = _input_item(signature, item)
        if name in inputs:  # the last file would silently win over the first
            raise InputError(f"--input {item!r}: input {name!r} is given twice; pass one file "
                             "for each input")
        inputs[name] = _with_batch_dim(_load_npy(file), name, signature)
    signature.validate_inputs(inputs)
    return inputs


def _input_item(signature: Signature, item: str) -> tuple[str, str]:
    """(input name, file) of one `--input` item."""
    name, sep, file = item.partition("=")
    if not sep:
        if len(signature.inputs) != 1:
            raise InputError(
                f"model has inputs {signature.input_names}: pass --input NAME=file.npy"
            )
        name, file = signature.inputs[0].name, item
    if not file.strip():  # Path("") is ".", refused as "a directory" the user never named
        raise InputError(f"--input {item!r} names no file: pass --input file.npy or "
                         "NAME=file.npy")
    return name, file


def predict_files(loaded: LoadedModel, specs: list[str]) -> dict[str, np.ndarray]:
    inputs = read_inputs(loaded.signature, specs)
    return loaded.runner.run(inputs)
