"""Convert a TensorFlow or Caffe model to ONNX once, check it, cache it beside the original.

`<version>/converted/model.onnx` is what Surge serves; `<version>/converted/conversion.yaml`
records the source's sha256 (an edited original is converted again), the converter and the
converted model's error against the original framework, on random and, when given, real inputs.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from surge.convert.onnx_fixups import drop_initializer_inputs, make_batch_dynamic
from surge.convert.sources import Source, find_source
from surge.convert.toolchains import run_script
from surge.errors import ModelLoadError
from surge.runtimes.base import RunnerOptions, example_inputs

CONVERTED_DIR = "converted"
CONVERTED_MODEL = "model.onnx"
RECORD_FILE = "conversion.yaml"
LOCK_FILE = ".converting.lock"
WORK_PREFIX = ".converting-"
NUMPY_MAGIC = (b"\x93NUMPY", b"PK")  # .npy, and the zip archive that an .npz file is
CONVERTER = {"savedmodel": "tf2onnx (opset 17)", "h5": "tf2onnx (opset 17)", "caffe": "caffe-onnx"}
REFERENCE = {"savedmodel": "TensorFlow", "h5": "TF-Keras",
             "caffe": "caffe-onnx's fixed-batch graph, row by row (no Caffe runtime exists to run)"}
RELATIVE_TOLERANCE = 1e-3  # of the largest reference output: fp32 reorderings, not a wrong graph


@dataclass(frozen=True)
class Parity:
    """The converted model against the original's outputs on one set of inputs."""

    inputs: str  # random | real
    rows: int
    max_abs: float
    mean_abs: float


@dataclass(frozen=True)
class Conversion:
    source: Source
    model: Path
    converter: str
    reference: str
    parity: tuple[Parity, ...]
    cached: bool = False


def _parity(kind: str, expected: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> Parity:
    errors = [np.abs(got[name].astype(np.float64) - ref.astype(np.float64))
              for name, ref in expected.items()]
    scale = max(float(np.abs(ref).max(initial=0.0)) for ref in expected.values())
    parity = Parity(kind, int(next(iter(expected.values())).shape[0]),
                    max(float(e.max(initial=0.0)) for e in errors),
                    float(np.mean([e.mean() for e in errors])))
    if parity.max_abs > RELATIVE_TOLERANCE * max(scale, 1.0):
        raise ModelLoadError(f"converted model differs from the original on {kind} inputs: "
                             f"max abs error {parity.max_abs:.3g} (largest output {scale:.3g})")
    return parity


def _onnx_runner(path: Path) -> Any:
    from surge.runtimes.onnx_runner import OnnxRunner

    return OnnxRunner(path, RunnerOptions(device="cpu", intra_op_threads=1))


def _split(data: Any, kind: str, part: str) -> dict[str, np.ndarray]:
    prefix = f"{kind}/{part}:"
    return {key[len(prefix):]: data[key] for key in data.files if key.startswith(prefix)}


def _convert_tf(source: Source, model: Path, real: Path | None, work: Path) -> tuple[Parity, ...]:
    reference = work / "reference.npz"
    args = ["--format", source.format, "--source", str(source.path), "--output", str(model),
            "--reference", str(reference), *(["--real", str(real)] if real else [])]
    run_script(source.format, args, source.path)
    runner = _onnx_runner(model)
    parity = []
    with np.load(reference, allow_pickle=False) as data:
        for kind in ("random", "real"):
            inputs = _split(data, kind, "input")
            if inputs:
                parity.append(_parity(kind, _split(data, kind, "output"), runner.run(inputs)))
    return tuple(parity)


def _rows(runner: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    outs = [runner.run({k: v[i:i + 1] for k, v in inputs.items()})
            for i in range(len(next(iter(inputs.values()))))]
    return {name: np.concatenate([o[name] for o in outs]) for name in outs[0]}


def read_real(path: Path) -> np.ndarray | dict[str, np.ndarray]:
    """The arrays of a real-inputs file: a .npy array, or a .npz file's arrays by name; refused
    unless NumPy reads every one of them without unpickling."""
    try:
        with path.open("rb") as handle:
            if not handle.read(6).startswith(NUMPY_MAGIC):
                raise ValueError("no .npy or .npz header")
        data = np.load(path, allow_pickle=False)
        if isinstance(data, np.lib.npyio.NpzFile):
            with data:
                return {key: data[key] for key in data.files}
        return np.asarray(data)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelLoadError(f"{path}: not a .npy or .npz file of plain arrays ({first})") from None


def _caffe_real(signature: Any, real: Path) -> dict[str, np.ndarray]:
    array = read_real(real)
    if not isinstance(array, np.ndarray) or len(signature.inputs) != 1:
        raise ModelLoadError(f"{real}: give real inputs of a Caffe model as one .npy array")
    spec = signature.inputs[0]
    if array.dtype.kind not in "biuf" or array.shape[1:] != tuple(spec.shape[1:]) or not array.size:
        raise ModelLoadError(f"{real}: {array.dtype} array of shape {list(array.shape)}; the Caffe "
                             f"model's input {spec.name!r} takes float rows of shape "
                             f"{list(spec.shape[1:])}")
    return {spec.name: array.astype(np.float32)}


def _caffe_inputs(signature: Any, real: Path | None) -> dict[str, tuple[str, dict[str, np.ndarray]]]:
    sets = {"random": ("random", example_inputs(signature, batch_size=1, seed=0))}
    if real is not None:
        sets["real"] = ("real", _caffe_real(signature, real))
    return sets


def _convert_caffe(source: Source, model: Path, real: Path | None, work: Path) -> tuple[Parity, ...]:
    import onnx

    raw = work / "raw.onnx"
    run_script("caffe", ["--prototxt", str(source.files[0]), "--caffemodel", str(source.files[1]),
                         "--output", str(raw)], source.path)
    graph = onnx.load(str(raw))
    drop_initializer_inputs(graph)
    onnx.save(graph, str(raw))
    fixed = _onnx_runner(raw)
    if not make_batch_dynamic(graph):
        shutil.copyfile(raw, model)
        return ()
    onnx.save(graph, str(model))
    dynamic = _onnx_runner(model)
    parity = []
    for kind, inputs in _caffe_inputs(fixed.signature, real).values():
        if kind == "random":  # a few rows in one batch: proves the batch dim is really free
            inputs = {k: np.concatenate([v] + [np.random.default_rng(i).random(v.shape, np.float32)
                                               for i in range(3)]) for k, v in inputs.items()}
        try:
            parity.append(_parity(kind, _rows(fixed, inputs), dynamic.run(inputs)))
        except Exception:  # the graph bakes its batch in elsewhere: serve it unbatched
            shutil.copyfile(raw, model)
            return ()
    return tuple(parity)


_CONVERT = {"savedmodel": _convert_tf, "h5": _convert_tf, "caffe": _convert_caffe}


def _record(conversion: Conversion, fingerprint: str) -> dict[str, Any]:
    return {
        "source": str(conversion.source.path.name),
        "format": conversion.source.format,
        "source_sha256": fingerprint,
        "converter": conversion.converter,
        "reference": conversion.reference,
        "parity": [asdict(p) for p in conversion.parity],
    }


def _cached(source: Source, fingerprint: str) -> Conversion | None:
    out = source.path.parent / CONVERTED_DIR
    try:
        record = yaml.safe_load((out / RECORD_FILE).read_text())
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(record, dict) or record.get("source_sha256") != fingerprint \
            or not (out / CONVERTED_MODEL).is_file():
        return None
    try:
        parity = tuple(Parity(**p) for p in record.get("parity") or [])
    except TypeError:  # an edited record: convert again
        return None
    return Conversion(source, out / CONVERTED_MODEL, str(record.get("converter")),
                      str(record.get("reference")), parity, cached=True)


def _publish(work: Path, out: Path) -> None:
    """Swap the finished conversion in with renames, so a reader never sees half of one."""
    work.chmod(0o755)  # mkdtemp made it private; the conversion is as readable as its source
    old = out.with_name(f".{CONVERTED_DIR}-old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    work.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def convert(source: Source, real: Path | None = None, force: bool = False) -> Conversion:
    """The checked ONNX conversion of `source`, made now or taken from the cache."""
    if real is not None:
        read_real(real)
    fingerprint = source.fingerprint()
    cached = None if force or real is not None else _cached(source, fingerprint)
    if cached is not None:
        return cached
    with _conversion_lock(source.path.parent):
        cached = None if force or real is not None else _cached(source, fingerprint)
        return cached or _convert_now(source, real, fingerprint)


@contextlib.contextmanager
def _conversion_lock(directory: Path) -> Iterator[None]:
    """One conversion at a time per version directory (two workers loading the model, or a
    `surge convert` beside a server): the second waits and finds the first one's result. Work
    directories left by a conversion that was killed are removed under it."""
    try:
        handle = (directory / LOCK_FILE).open("a")
    except OSError as exc:
        raise ModelLoadError(f"{directory}: cannot write its conversion ({exc.strerror})") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        for stale in directory.glob(f"{WORK_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)
        yield


def _convert_now(source: Source, real: Path | None, fingerprint: str) -> Conversion:
    directory = source.path.parent
    try:
        work = Path(tempfile.mkdtemp(prefix=WORK_PREFIX, dir=directory))
    except OSError as exc:
        raise ModelLoadError(f"{directory}: cannot write its conversion ({exc.strerror})") from None
    try:
        parity = _CONVERT[source.format](source, work / CONVERTED_MODEL, real, work)
        for scratch in ("raw.onnx", "reference.npz"):
            (work / scratch).unlink(missing_ok=True)
        conversion = Conversion(source, directory / CONVERTED_DIR / CONVERTED_MODEL,
                                CONVERTER[source.format], REFERENCE[source.format], parity)
        (work / RECORD_FILE).write_text(yaml.safe_dump(_record(conversion, fingerprint), sort_keys=False))
        _publish(work, directory / CONVERTED_DIR)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return conversion


def converted_model(directory: Path) -> Path | None:
    """The ONNX file serving a TensorFlow or Caffe model in `directory` (converted on first use);
    None when the directory holds no convertible model."""
    source = find_source(directory)
    return None if source is None else convert(source).model
