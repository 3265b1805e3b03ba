"""TensorFlow SavedModel / TF-Keras `.h5` -> ONNX, with TensorFlow's own outputs for the check.

Run by the TensorFlow interpreter (`.venv-tf/bin/python tf_script.py ...`), never imported by
Surge: TensorFlow and tf2onnx live in their own venv so the serving venv keeps its own numpy,
protobuf and h5py. Imports only the standard library, numpy, TensorFlow, tf_keras and tf2onnx.

Writes OUTPUT (the ONNX model) and REFERENCE (.npz: `input:NAME` arrays fed to TensorFlow and
`output:NAME` arrays it returned), so the caller can measure the converted model's error.
Exit status 3 with one line on stderr when the model is refused or cannot be read.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["TF_USE_LEGACY_KERAS"] = "1"  # `.h5` files are TF-Keras (Keras 2) files

import numpy as np  # noqa: E402

# Graph ops that touch files or run Python: a served model has no business with them.
REFUSED_OPS = frozenset({
    "ReadFile", "WriteFile", "MatchingFiles", "PyFunc", "PyFuncStateless", "EagerPyFunc",
    "SaveV2", "Save", "SaveSlices", "RestoreV2", "Restore", "RestoreSlice", "ShardedFilename",
    "ImmutableConst", "DeleteFile", "RecursiveCreateDir", "WholeFileReader", "WholeFileReaderV2",
})
OPSET = 17


def fail(message: str) -> None:
    print(message, file=sys.stderr)
    sys.exit(3)


def _op_types(graph_def: Any) -> set[str]:
    ops = {node.op for node in graph_def.node}
    for function in graph_def.library.function:
        ops.update(node.op for node in function.node_def)
    return ops


def _savedmodel(path: Path) -> tuple[Any, dict[str, Any]]:
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:
        fail(f"{path}: not a readable TensorFlow SavedModel ({str(exc).splitlines()[0]})")
    if "serving_default" not in loaded.signatures:
        fail(f"{path}: the SavedModel has no 'serving_default' signature")
    function = loaded.signatures["serving_default"]
    refused = _op_types(function.graph.as_graph_def()) & REFUSED_OPS
    if refused:
        fail(f"{path}: refused to load: the graph uses file or Python ops {sorted(refused)}")
    specs = dict(function.structured_input_signature[1])
    return (lambda feed: {k: v.numpy() for k, v in function(**feed).items()}), specs


def _walk(config: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(config, dict):
        found.append(config)
        for value in config.values():
            found += _walk(value)
    elif isinstance(config, list):
        for value in config:
            found += _walk(value)
    return found


def _check_h5(path: Path) -> None:
    """Refuse `.h5` files whose config carries Python code (Lambda layers are marshalled bytecode)."""
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            raw = handle.attrs.get("model_config")
    except OSError as exc:
        fail(f"{path}: not a readable HDF5 file ({exc})")
    if raw is None:
        fail(f"{path}: an HDF5 file without a Keras model config (weights only?)")
    config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    for node in _walk(config):
        if node.get("class_name") == "Lambda" or node.get("function_type") == "lambda":
            fail(f"{path}: refused to load: a Lambda layer carries Python code")


def _keras_h5(path: Path) -> tuple[Any, dict[str, Any], Any]:
    import tensorflow as tf
    import tf_keras

    _check_h5(path)
    try:
        model = tf_keras.models.load_model(str(path), compile=False)
    except Exception as exc:
        fail(f"{path}: TF-Keras cannot load it ({str(exc).splitlines()[0]})")
    specs = {
        name: tf.TensorSpec(tensor.shape, tensor.dtype, name=name)
        for name, tensor in zip(model.input_names, model.inputs, strict=True)
    }

    def call(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = model([feed[n] for n in specs] if len(specs) > 1 else feed[next(iter(specs))],
                       training=False)
        result = result if isinstance(result, list | tuple) else [result]
        return {n: np.asarray(r) for n, r in zip(model.output_names, result, strict=True)}

    return call, specs, model


def _random_inputs(specs: dict[str, Any], batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feed: dict[str, np.ndarray] = {}
    for name, spec in specs.items():
        dims = [batch if i == 0 and d is None else (d or 1) for i, d in enumerate(spec.shape)]
        dtype = np.dtype(spec.dtype.as_numpy_dtype)
        feed[name] = (rng.random(dims).astype(dtype) if dtype.kind == "f"
                      else rng.integers(0, 10, dims).astype(dtype))
    return feed


def _real_inputs(path: Path, specs: dict[str, Any]) -> dict[str, np.ndarray]:
    data = np.load(path, allow_pickle=False)
    if isinstance(data, np.ndarray):  # a .npy file feeds the model's one input
        if len(specs) != 1:
            fail(f"{path}: the model has inputs {list(specs)}: give an .npz with one array each")
        data = {next(iter(specs)): data}
    missing = [name for name in specs if name not in data]
    if missing:
        fail(f"{path}: no array for input(s) {missing}")
    return {name: data[name].astype(np.dtype(spec.dtype.as_numpy_dtype)) for name, spec in specs.items()}


def _convert_savedmodel(source: Path, output: Path) -> None:
    command = [sys.executable, "-m", "tf2onnx.convert", "--saved-model", str(source),
               "--output", str(output), "--opset", str(OPSET)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not output.is_file():
        lines = [line for line in done.stderr.splitlines() if "Error" in line] or ["tf2onnx failed"]
        fail(f"{source}: tf2onnx cannot convert it ({lines[-1]})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--format", choices=("savedmodel", "h5"), required=True)
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--reference", type=Path, required=True)
    parser.add_argument("--real", type=Path)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    if args.format == "savedmodel":
        call, specs = _savedmodel(args.source)
        _convert_savedmodel(args.source, args.output)
    else:
        import tf2onnx

        call, specs, model = _keras_h5(args.source)
        tf2onnx.convert.from_keras(model, input_signature=list(specs.values()), opset=OPSET,
                                   output_path=str(args.output))
    arrays: dict[str, np.ndarray] = {}
    sets = {"random": _random_inputs(specs, args.batch, seed=0)}
    if args.real:
        sets["real"] = _real_inputs(args.real, specs)
    for kind, feed in sets.items():
        arrays |= {f"{kind}/input:{k}": v for k, v in feed.items()}
        arrays |= {f"{kind}/output:{k}": v for k, v in call(feed).items()}
    with tempfile.NamedTemporaryFile(dir=args.reference.parent, suffix=".npz", delete=False) as tmp:
        np.savez(tmp, **arrays)  # type: ignore[arg-type]
    Path(tmp.name).replace(args.reference)


if __name__ == "__main__":
    main()
