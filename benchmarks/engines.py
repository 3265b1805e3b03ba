"""Engine benchmark: ONNX Runtime vs OpenVINO vs TensorFlow native, fp32 and int8, side by side.

ResNet-18 (random weights, 3x64x64) and the default model (`examples/repository/fashion`, its
trained weights). ONNX Runtime and OpenVINO run the same ONNX files: fp32 and the int8-static QDQ
variant `surge.optimize` makes. TensorFlow runs the same network built in Keras with the torch
weights copied in (benchmarks/engines_tf.py in `.venv-tf`, a subprocess answering in JSON lines):
fp32 in a `tf.function`; int8 as TensorFlow does it, a full-integer TFLite file from its converter
(calibrated on the same rows as the QDQ variant) run by LiteRT; the fp32 TFLite file too.

In process: items/s at batch 1 and at the best of 8/32, every engine on the same number of
threads, rounds interleaved across engines (TensorFlow's process takes its turn in each) so a
noisy neighbour slows them alike, each setting's best kept. Served: `surge serve`, 64 clients.
Surge serves TFLite natively (LiteRT) but a TensorFlow SavedModel as its ONNX conversion
(`surge convert`, then ONNX Runtime): that conversion is a row of its own, in process and served;
TensorFlow itself is not served. Parity: every file on its engine against TensorFlow's own fp32
outputs on the same 32 rows. Then what `surge tune` would choose between the ONNX engines
(tuning.engines.decide, 10% noise margin).

    .venv/bin/python benchmarks/engines.py                       # both models, ~17 min on 2 busy cores
    .venv/bin/python benchmarks/engines.py --models fashion --rounds 2 --duration 5
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from surge.convert import convert, find_source
from surge.convert.pipeline import RELATIVE_TOLERANCE
from surge.convert.toolchains import interpreter
from surge.optimize import Int8StaticConfig, ModelSource, Tolerance, apply
from surge.platform import available_cores
from surge.runtimes import Runner, RunnerOptions, load_runner
from surge.tuning.engines import BATCH_SIZES, EngineFigure, decide, items_per_second

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import surge_server  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "engines.json"
TF_SCRIPT = Path(__file__).resolve().parent / "engines_tf.py"
FASHION = ROOT / "examples" / "repository" / "fashion"
FASHION_WEIGHTS = ROOT / "examples" / "repository" / "fashion-torch" / "1" / "model.safetensors"
ONNX_ENGINES = ("onnxruntime", "openvino")  # what `surge tune` chooses between for an ONNX model
TENSORFLOW, CONVERTED, LITERT = "tensorflow", "tf2onnx", "litert"
ENGINE_NAMES = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO", TENSORFLOW: "TensorFlow",
                CONVERTED: "TF SavedModel -> ONNX, ONNX Runtime", LITERT: "TFLite on LiteRT"}
MODEL_FILE = {".onnx": "model.onnx", ".tflite": "model.tflite", ".savedmodel": "model.savedmodel"}
PARITY_ROWS = 32
CALIBRATION_ROWS = 128
console = Console(width=200)


@dataclass(frozen=True)
class Candidate:
    """One precision on one engine: the file measured in process and what `surge serve` gets."""

    precision: str  # fp32 | int8
    engine: str  # a key of ENGINE_NAMES
    path: Path | None  # what the runner loads; None: TensorFlow, measured in its own process
    served: Path | None  # the file or SavedModel put in the served version directory
    served_as: str


def resnet_source(work: Path) -> ModelSource:
    from surge.zoo.resnet import resnet18

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    return ModelSource("resnet18", ["image"], ["logits"], {"image": rng.random((64, 3, 64, 64), np.float32)},
                       module=resnet18().eval(), task="classification", work_dir=work,
                       calibration={"image": rng.random((CALIBRATION_ROWS, 3, 64, 64), np.float32)})


def fashion_source(work: Path) -> ModelSource:
    rng = np.random.default_rng(0)
    return ModelSource("fashion", ["image"], ["logits"], {"image": rng.random((256, 1, 28, 28), np.float32)},
                       onnx_path=FASHION / "1" / "model.onnx", task="classification", work_dir=work,
                       calibration={"image": rng.random((256, 1, 28, 28), np.float32)})


def torch_weights(source: ModelSource) -> dict[str, np.ndarray]:
    """The state dict the ONNX files were made from, for the Keras copy of the network."""
    if source.module is not None:
        return {k: v.detach().numpy() for k, v in source.module.state_dict().items()}
    from safetensors.numpy import load_file

    return load_file(str(FASHION_WEIGHTS))  # `fashion`'s ONNX file was exported from these


def onnx_files(source: ModelSource, work: Path) -> dict[str, Path]:
    fp32 = source.ensure_onnx() if source.onnx_path is None else source.onnx_path
    config = Int8StaticConfig(calibration_samples=CALIBRATION_ROWS)
    int8 = apply(source, config, work / "int8", Tolerance(), "int8-static")
    return {"fp32": Path(fp32), "int8": int8.path}


class TensorFlowProcess:
    """benchmarks/engines_tf.py in `.venv-tf`: builds the Keras network and its files, then
    measures TensorFlow's items/s on request (one JSON line each way)."""

    def __init__(self, arch: str, source: ModelSource, work: Path, threads: int) -> None:
        python = interpreter("tf")
        if python is None:
            raise SystemExit("TensorFlow native needs .venv-tf (scripts/setup.sh) or SURGE_TF_PYTHON")
        work.mkdir(parents=True, exist_ok=True)
        np.savez(work / "weights.npz", **torch_weights(source))  # type: ignore[arg-type]
        assert source.calibration is not None
        np.savez(work / "samples.npz", image=source.samples["image"][:PARITY_ROWS],
                 calibration=source.calibration["image"][:CALIBRATION_ROWS])
        normalize: list[str] = []
        if arch == "fashion":
            from surge_examples.fashion.model import MEAN, STD

            normalize = ["--mean", str(MEAN), "--std", str(STD)]
        self.log = work / "tensorflow.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [str(python), str(TF_SCRIPT), "--arch", arch, "--weights", str(work / "weights.npz"),
                 "--samples", str(work / "samples.npz"), "--out", str(work), "--threads", str(threads),
                 *normalize], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)
        self.files = self._receive()

    def _receive(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            tail = self.log.read_text().strip().splitlines()[-3:]
            raise RuntimeError(f"{TF_SCRIPT.name} exited {self.process.wait()}: {' | '.join(tail)}")
        return dict(json.loads(line))

    def items_per_second(self, batch: int, seconds: float) -> float:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"batch": batch, "seconds": seconds}) + "\n")
        self.process.stdin.flush()
        return float(self._receive()["items_per_s"])

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(60)


def candidates(onnx: dict[str, Path], tf: dict[str, Any], conversion: Path) -> list[Candidate]:
    """The ONNX files on both ONNX engines; TensorFlow's Keras model (not served: Surge serves
    a SavedModel as its conversion, the next row); the TFLite files on LiteRT."""
    savedmodel = Path(tf["savedmodel"])
    rows = [Candidate(p, e, onnx[p], onnx[p], f"{p} ONNX ({e})")
            for p in ("fp32", "int8") for e in ONNX_ENGINES]
    rows.append(Candidate("fp32", TENSORFLOW, None, None, "- (its SavedModel: next row)"))
    rows.append(Candidate("fp32", CONVERTED, conversion, savedmodel, "the SavedModel, converted once"))
    rows += [Candidate(p, LITERT, Path(tf[f"tflite_{p}"]), Path(tf[f"tflite_{p}"]), f"{p} TFLite, natively")
             for p in ("fp32", "int8")]
    return rows


def in_process(runners: dict[tuple[str, str], Runner], tf: TensorFlowProcess, rounds: int,
               seconds: float) -> list[dict[str, Any]]:
    """Every (precision, engine) at every batch size, round by round; TensorFlow in its
    process takes its turn in each round like the others."""
    best: dict[tuple[str, str, int], float] = {}
    for _ in range(rounds):
        for key, runner in runners.items():
            for batch in BATCH_SIZES:
                rate = items_per_second(runner, batch, seconds)
                best[(*key, batch)] = max(best.get((*key, batch), 0.0), rate)
        for batch in BATCH_SIZES:
            rate = tf.items_per_second(batch, seconds)
            best[("fp32", TENSORFLOW, batch)] = max(best.get(("fp32", TENSORFLOW, batch), 0.0), rate)
    return [{"precision": p, "engine": e, "batch": b, "items_per_s": r} for (p, e, b), r in best.items()]


def max_abs(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max())


def serving_repo(work: Path, name: str, served: Path, engine: str | None) -> Path:
    """A one-model repository `work/repo-NAME` serving `served` as Surge serves its format
    (made again over itself, it keeps a SavedModel's cached conversion)."""
    repo = work / f"repo-{name}"
    version = repo / "m" / "1"
    version.mkdir(parents=True, exist_ok=True)
    target = version / MODEL_FILE[served.suffix]
    if served.is_dir():
        shutil.copytree(served, target, dirs_exist_ok=True)
    else:
        shutil.copyfile(served, target)
    config = f"engine: {engine}\n" if engine else ""
    (repo / "m" / "config.yaml").write_text(f"{config}max_batch_size: 32\n"
                                            "batching: {max_queue_delay_ms: 2.0}\n")
    return repo


def convert_savedmodel(savedmodel: Path, work: Path) -> tuple[Path, dict[str, Any]]:
    """Convert as `surge convert` does, in the repository that will serve it (the server then
    finds the conversion cached): the ONNX file and what the conversion recorded."""
    source = find_source(serving_repo(work, f"fp32-{CONVERTED}", savedmodel, None) / "m" / "1")
    assert source is not None
    conversion = convert(source)
    return conversion.model, {"converter": conversion.converter,
                              "recorded": [asdict(p) for p in conversion.parity]}


def served(repo: Path, duration: float) -> dict[str, Any]:
    from surge.bench import run_bench

    with surge_server(repo) as server:  # on ports the system chooses
        run = run_bench(server.url, "m", [64], duration, "http", warmup_s=1.0).runs[0]
    return {"throughput": run.throughput, "p99_ms": run.p99_ms, "errors": run.errors}


def tune_choices(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per precision: the ONNX engine `surge tune` would pick on these figures, and the faster."""
    out = {}
    for precision in ("fp32", "int8"):
        choice = decide([EngineFigure(r["engine"], r["batch"], r["items_per_s"]) for r in rows
                         if r["precision"] == precision and r["engine"] in ONNX_ENGINES])
        best = {e: choice.best(e) for e in ONNX_ENGINES}
        out[f"tune_choice_{precision}"] = {"engine": choice.engine, "reason": choice.reason,
                                           "faster": max(best, key=lambda e: best[e])}
    return out


@dataclass(frozen=True)
class Measured:
    """One model's in-process figures and parity, and the candidates to serve next."""

    result: dict[str, Any]
    candidates: list[Candidate]


def check_same_function(onnx: np.ndarray, reference: np.ndarray) -> None:
    """The figures compare engines only if they run one function: stop if the Keras copy of the
    network and the ONNX file disagree beyond fp32 reordering (the tolerance `surge convert` uses)."""
    error, scale = max_abs(onnx, reference), float(np.abs(reference).max())
    if error > RELATIVE_TOLERANCE * max(scale, 1.0):
        raise SystemExit(f"the Keras network differs from the ONNX file: max abs {error:.3g} "
                         f"(largest output {scale:.3g}); its weights were not copied right")


def load_runners(cands: list[Candidate]) -> dict[tuple[str, str], Runner]:
    options = RunnerOptions(intra_op_threads=available_cores())  # every engine on the same threads
    return {(c.precision, c.engine): load_runner(c.path, options, c.engine if c.engine in ONNX_ENGINES
                                                 else None) for c in cands if c.path is not None}


def measure(name: str, rounds: int, seconds: float, work: Path) -> Measured:
    """In-process figures and each file's parity against TensorFlow's own outputs."""
    source = (resnet_source if name == "resnet" else fashion_source)(work)
    onnx = onnx_files(source, work)
    tf = TensorFlowProcess(name, source, work / "tensorflow", available_cores())
    try:
        converted, conversion = convert_savedmodel(Path(tf.files["savedmodel"]), work)
        cands = candidates(onnx, tf.files, converted)
        runners = load_runners(cands)
        samples = {"image": source.samples["image"][:PARITY_ROWS]}
        reference = np.load(tf.files["reference"])
        logits = {key: runner.run(samples)["logits"] for key, runner in runners.items()}
        check_same_function(logits[("fp32", "onnxruntime")], reference)  # before minutes of timing
        rows = in_process(runners, tf, rounds, seconds)
    finally:
        tf.close()
    result: dict[str, Any] = {
        "model": name, "threads": available_cores(), "in_process": rows,
        "tf_reference_max_abs": float(np.abs(reference).max()),
        "parity_vs_tf_max_abs": {f"{p}/{e}": max_abs(v, reference) for (p, e), v in logits.items()},
        "engine_parity_max_abs": {p: max_abs(logits[(p, "onnxruntime")], logits[(p, "openvino")])
                                  for p in ("fp32", "int8")},
        "conversion": conversion, **tune_choices(rows),
    }
    return Measured(result, cands)


def run_model(name: str, rounds: int, seconds: float, duration: float, work: Path) -> dict[str, Any]:
    measured = measure(name, rounds, seconds, work)
    measured.result["served_c64"] = [
        {"precision": c.precision, "engine": c.engine, "served_as": c.served_as,
         **served(serving_repo(work, f"{c.precision}-{c.engine}", c.served,
                               c.engine if c.engine in ONNX_ENGINES else None), duration)}
        for c in measured.candidates if c.served is not None]
    measured.result["candidates"] = [{"precision": c.precision, "engine": c.engine, "served_as": c.served_as}
                                     for c in measured.candidates]
    return measured.result


def table_row(res: dict[str, Any], candidate: dict[str, Any]) -> list[str]:
    precision, engine = candidate["precision"], candidate["engine"]
    rows = [r for r in res["in_process"] if r["precision"] == precision and r["engine"] == engine]
    b1 = next(r["items_per_s"] for r in rows if r["batch"] == 1)
    top = max(rows, key=lambda r: r["items_per_s"])
    served = next((s for s in res["served_c64"] if (s["precision"], s["engine"]) == (precision, engine)),
                  None)
    parity = res["parity_vs_tf_max_abs"].get(f"{precision}/{engine}")
    return [res["model"], precision, ENGINE_NAMES[engine], f"{b1:,.0f}",
            f"{top['items_per_s']:,.0f} (b={top['batch']})",
            f"{served['throughput']:,.0f} (p99 {served['p99_ms']:.0f} ms)" if served else "-",
            candidate["served_as"], "(reference)" if parity is None else f"{parity:.2g}"]


def print_table(results: list[dict[str, Any]]) -> None:
    table = Table("model", "precision", "engine", "b=1 items/s", "best items/s", "served c=64 req/s",
                  "served as", "max abs vs TF")
    for res in results:
        for candidate in res["candidates"]:
            table.add_row(*table_row(res, candidate))
    console.print(table)
    for res in results:
        picks = "; ".join(f"{p}: {res[f'tune_choice_{p}']['reason']}" for p in ("fp32", "int8"))
        console.print(f"{res['model']}: TensorFlow's largest output {res['tf_reference_max_abs']:.3g}, "
                      f"conversion recorded {res['conversion']['recorded']}; surge tune: {picks}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet,fashion")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.0, help="per in-process point")
    parser.add_argument("--duration", type=float, default=10.0, help="per served run")
    parser.add_argument("--json", type=Path, default=RESULTS, help="where to write the results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = [run_model(m, args.rounds, args.seconds, args.duration, Path(tmp) / m)
                   for m in args.models.split(",")]
    print_table(results)
    args.json.write_text(json.dumps(results, indent=1))
    console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
