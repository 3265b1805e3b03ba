"""Engine benchmark: ONNX Runtime vs OpenVINO on the same ONNX files, fp32 and int8, side by side.

ResNet-18 (random weights, 3x64x64) and the default model (`examples/repository/fashion`), each
as fp32 ONNX and as the int8-static QDQ variant `surge.optimize` makes. In process: items/s at
batch 1 and at the best of 8/32, rounds interleaved across engines so a noisy neighbour slows
them alike, each setting's best kept. Served: `surge serve` with `engine:` set, 64 clients.
Then what `surge tune` would choose (tuning.engines.decide, 10% noise margin) next to the
measured winner. TensorFlow native needs a TensorFlow-born model: see docs/formats.md.

    .venv/bin/python benchmarks/engines.py                       # both models, ~6 min on 2 cores
    .venv/bin/python benchmarks/engines.py --models fashion --rounds 2 --duration 5
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from surge.optimize import Int8StaticConfig, ModelSource, Tolerance, apply
from surge.runtimes import RunnerOptions, load_runner
from surge.tuning.engines import EngineFigure, decide, items_per_second

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import free_port, stop, wait_ready  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "engines.json"
ENGINES = ("onnxruntime", "openvino")
console = Console()


def resnet_source(work: Path) -> ModelSource:
    from surge.zoo.resnet import resnet18

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    return ModelSource("resnet18", ["image"], ["logits"], {"image": rng.random((64, 3, 64, 64), np.float32)},
                       module=resnet18().eval(), task="classification", work_dir=work,
                       calibration={"image": rng.random((128, 3, 64, 64), np.float32)})


def fashion_source(work: Path) -> ModelSource:
    rng = np.random.default_rng(0)
    onnx = ROOT / "examples" / "repository" / "fashion" / "1" / "model.onnx"
    return ModelSource("fashion", ["image"], ["logits"], {"image": rng.random((256, 1, 28, 28), np.float32)},
                       onnx_path=onnx, task="classification", work_dir=work,
                       calibration={"image": rng.random((256, 1, 28, 28), np.float32)})


def make_files(source: ModelSource, work: Path) -> dict[str, Path]:
    fp32 = source.ensure_onnx() if source.onnx_path is None else source.onnx_path
    int8 = apply(source, Int8StaticConfig(calibration_samples=128), work / "int8", Tolerance(), "int8-static")
    return {"fp32": Path(fp32), "int8": int8.path}


def in_process(files: dict[str, Path], rounds: int, seconds: float) -> list[dict[str, Any]]:
    runners = {(p, e): load_runner(path, RunnerOptions(), e) for p, path in files.items() for e in ENGINES}
    best: dict[tuple[str, str, int], float] = {}
    for _ in range(rounds):
        for (precision, engine), runner in runners.items():
            for batch in (1, 8, 32):
                rate = items_per_second(runner, batch, seconds)
                key = (precision, engine, batch)
                best[key] = max(best.get(key, 0.0), rate)
    return [{"precision": p, "engine": e, "batch": b, "items_per_s": r} for (p, e, b), r in best.items()]


def parity(files: dict[str, Path], source: ModelSource) -> dict[str, float]:
    """Max abs difference between the engines on the same file (the converted models' parity
    is recorded by `surge convert`; here it is engine against engine)."""
    x = {"image": source.samples["image"][:32]}
    out = {}
    for precision, path in files.items():
        a, b = (load_runner(path, RunnerOptions(), e).run(x)["logits"] for e in ENGINES)
        out[precision] = float(np.abs(a - b).max())
    return out


def served(path: Path, engine: str, duration: float, work: Path) -> dict[str, Any]:
    from surge.bench import run_bench

    repo = work / f"repo-{engine}"
    (repo / "m" / "1").mkdir(parents=True, exist_ok=True)
    (repo / "m" / "1" / "model.onnx").write_bytes(path.read_bytes())
    (repo / "m" / "config.yaml").write_text(f"engine: {engine}\nmax_batch_size: 32\n"
                                            "batching: {max_queue_delay_ms: 2.0}\n")
    http, grpc, metrics = free_port(), free_port(), free_port()
    process = subprocess.Popen([sys.executable, "-c", "from surge.cli import main; main()", "serve",
                                str(repo), "--http-port", str(http), "--grpc-port", str(grpc),
                                "--metrics-port", str(metrics)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{http}"
    try:
        wait_ready(url, process)
        run = run_bench(url, "m", [64], duration, "http", warmup_s=1.0).runs[0]
        return {"engine": engine, "throughput": run.throughput, "p99_ms": run.p99_ms, "errors": run.errors}
    finally:
        stop(process)


def run_model(name: str, rounds: int, seconds: float, duration: float, work: Path) -> dict[str, Any]:
    source = (resnet_source if name == "resnet" else fashion_source)(work)
    files = make_files(source, work)
    rows = in_process(files, rounds, seconds)
    result: dict[str, Any] = {"model": name, "in_process": rows,
                              "engine_parity_max_abs": parity(files, source)}
    result["served_fp32_c64"] = [served(files["fp32"], e, duration, work) for e in ENGINES]
    for precision in files:
        figures = [EngineFigure(r["engine"], r["batch"], r["items_per_s"]) for r in rows
                   if r["precision"] == precision]
        choice = decide(figures)
        best = {e: choice.best(e) for e in ENGINES}
        result[f"tune_choice_{precision}"] = {"engine": choice.engine, "reason": choice.reason,
                                              "faster": max(best, key=lambda e: best[e])}
    return result


def print_table(results: list[dict[str, Any]]) -> None:
    table = Table("model", "precision", "engine", "b=1 items/s", "best items/s", "served c=64 req/s",
                  "tune picks")
    for res in results:
        served_by = {s["engine"]: s for s in res["served_fp32_c64"]}
        for precision in ("fp32", "int8"):
            for engine in ENGINES:
                rows = [r for r in res["in_process"] if r["precision"] == precision and r["engine"] == engine]
                b1 = next(r["items_per_s"] for r in rows if r["batch"] == 1)
                top = max(rows, key=lambda r: r["items_per_s"])
                s = served_by[engine] if precision == "fp32" else None
                table.add_row(res["model"], precision, engine, f"{b1:,.0f}",
                              f"{top['items_per_s']:,.0f} (b={top['batch']})",
                              f"{s['throughput']:,.0f} (p99 {s['p99_ms']:.0f} ms)" if s else "-",
                              res[f"tune_choice_{precision}"]["engine"])
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet,fashion")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.0, help="per in-process point")
    parser.add_argument("--duration", type=float, default=10.0, help="per served run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = [run_model(m, args.rounds, args.seconds, args.duration, Path(tmp) / m)
                   for m in args.models.split(",")]
    print_table(results)
    RESULTS.write_text(json.dumps(results, indent=1))
    console.print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
