"""The detector end to end: accuracy by variant, engine throughput, serving under load, training.

Writes benchmarks/results/detection.json, PNG plots under docs/img/, and the generated section of
docs/detection.md (between its `results:begin` / `results:end` markers). Every number in one
table comes from this run, side by side, on the same cores.

1. accuracy: each variant of the model on the test canvases (COCO mAP@0.5, mAP@[.5:.95],
   precision/recall/F1 at IoU 0.5 at the score threshold that maximises F1 on validation),
   and the per-class AP@0.5 table of the original;
2. engine: in-process ONNX Runtime images/s at batch 1 and 32 (2 threads) per variant;
3. serving: `surge serve` in a subprocess loaded by `surge bench` (binary HTTP) at concurrency
   1, 8, 32, 128 for several serving configurations (variant x max batch x instances);
4. training: the recipe's samples/s per epoch (training.json), and the trainer's runs by
   parallelism and precision when their metrics.jsonl files are given.

    .venv/bin/python benchmarks/detection.py --data out/fashion-det
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from surge.repository.config import read_config, write_config  # noqa: E402
from surge.repository.repository import MODEL_FILES  # noqa: E402
from surge.runtimes import RunnerOptions, load_runner  # noqa: E402
from surge.tasks.coco import detections_to_coco  # noqa: E402
from surge.tasks.coco_metrics import best_f1_threshold, coco_map, detection_prf  # noqa: E402
from surge_examples.detection.coco import load_split, to_coco  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "detection.md"
IMAGES = ROOT / "docs" / "img"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
LEVELS = (1, 8, 32, 128)
console = Console()


# -- 1. accuracy ---------------------------------------------------------------------------------
def predict(runner: Any, images: np.ndarray, batch: int = 64) -> tuple[np.ndarray, ...]:
    parts = [runner.run({"image": images[i:i + batch]}) for i in range(0, len(images), batch)]
    return tuple(np.concatenate([p[name] for p in parts]) for name in ("boxes", "scores", "labels"))


def accuracy(runner: Any, val: tuple[dict, np.ndarray], test: tuple[dict, np.ndarray]) -> dict:
    """Threshold chosen on validation, everything else measured on test."""
    val_dets = detections_to_coco(*predict(runner, val[1]))
    chosen = best_f1_threshold(val[0], val_dets, np.arange(0.05, 0.95, 0.025).tolist())
    test_dets = detections_to_coco(*predict(runner, test[1]))
    report = coco_map(test[0], test_dets)
    prf = detection_prf(test[0], test_dets, chosen.score_threshold, 0.5)
    return {"map50": report.map50, "map": report.map, "map75": report.map75,
            "threshold": chosen.score_threshold, "val_f1": chosen.f1,
            "precision": prf.precision, "recall": prf.recall, "f1": prf.f1,
            "per_class_ap50": report.per_class_ap50}


def engine_speed(path: Path, images: np.ndarray, threads: int, seconds: float) -> dict:
    runner = load_runner(path, RunnerOptions(intra_op_threads=threads))
    runner.warmup()
    out = {}
    for batch in (1, 32):
        x = images[:batch]
        runner.run({"image": x})
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            runner.run({"image": x})
            done += batch
        out[f"batch{batch}_images_s"] = done / (time.perf_counter() - started)
    return out


def variants(repo: Path, model: str) -> list[tuple[str, str | None, Path]]:
    """(label, variant name, model file) for the original and each variant on disk."""
    # The original file itself: loading `model` would serve the config's selected variant.
    versions = sorted((repo / model).glob("[0-9]*/model.onnx"), key=lambda p: int(p.parent.name))
    found = [("fp32", None, versions[-1])]
    for entry in sorted((repo / model / "variants").glob("*/variant.yaml")):
        files = [entry.parent / name for name in MODEL_FILES if (entry.parent / name).is_file()]
        if files:
            found.append((entry.parent.name, entry.parent.name, files[0]))
    return found


# -- 3. serving ----------------------------------------------------------------------------------
def serving_repo(source: Path, model: str, work: Path, name: str, **changes: Any) -> Path:
    """A one-model repository whose config differs from `source`'s by `changes`."""
    target = work / name
    shutil.copytree(source / model, target / model, symlinks=True,
                    ignore=shutil.ignore_patterns("tuning", "*.safetensors"))
    config = read_config(source / model / "config.yaml")
    data = config.model_dump()
    for key, value in changes.items():
        if key == "batching":
            data["batching"] = {**data["batching"], **value}
        else:
            data[key] = value
    write_config(target / model / "config.yaml", type(config).model_validate(data))
    return target


def serve_and_bench(repo: Path, model: str, duration: str) -> list[dict]:
    """`surge serve` on `repo` (ports the system chooses; its log in the repository) loaded by
    `surge bench` at each level."""
    from surge.tuning.serving import serving

    surge = [sys.executable, "-c", "from surge.cli import main; main()"]
    with serving(repo, model, timeout_s=180) as server:
        report = Path(tempfile.mkstemp(suffix=".json")[1])
        subprocess.run([*surge, "bench", server.url, "--model", model,
                        "--concurrency", ",".join(map(str, LEVELS)), "--duration", duration,
                        "--json", str(report)], check=True, capture_output=True)
        return list(json.loads(report.read_text())["runs"])


def serving_configs(repo: Path, model: str, selected: str | None,
                    served_variants: list[str]) -> list[tuple[str, dict]]:
    """Untuned baseline first, then what changes what, then the tuned configuration (if any)."""
    configs: list[tuple[str, dict]] = [
        ("fp32 batch 1 (untuned)", {"variant": None, "max_batch_size": 1, "instances": 1,
                                    "threads": 0, "batching": {"enabled": False}}),
        ("fp32 batch 32", {"variant": None, "max_batch_size": 32, "instances": 1, "threads": 0,
                           "batching": {"enabled": True, "max_queue_delay_ms": 2.0}}),
        ("fp32 batch 32, 2 instances x 1 thread",
         {"variant": None, "max_batch_size": 32, "instances": 2, "threads": 1,
          "batching": {"enabled": True, "max_queue_delay_ms": 2.0}}),
    ]
    for label, variant, _ in variants(repo, model)[1:]:
        if label not in served_variants:
            continue
        configs.append((f"{label} batch 32", {"variant": variant, "max_batch_size": 32,
                                              "instances": 1, "threads": 0,
                                              "batching": {"enabled": True}}))
    if selected:
        configs.append((f"tuned: {selected}", {}))
    return configs


# -- 4. training ---------------------------------------------------------------------------------
def training_rows(repo: Path, model: str, trainer_runs: list[Path]) -> list[dict]:
    rows = []
    summary = repo / model / "training.json"
    if summary.is_file():  # the committed weights' run: `surge train` epochs as metrics.jsonl
        data = json.loads(summary.read_text())
        for epoch in data["history"]:
            rows.append({"run": f"{data['recipe']} (committed weights)",
                         "parallelism": epoch["parallelism"], "precision": epoch["precision"],
                         "processes": epoch["world_size"], "epoch": epoch["epoch"],
                         "samples_per_s": epoch["samples_per_s"], "epoch_s": epoch["epoch_s"]})
    for path in trainer_runs:
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if "samples_per_s" in record:
                rows.append({"run": str(path.parent.name), "parallelism": record["parallelism"],
                             "precision": record["precision"],
                             "processes": record["world_size"], "epoch": record["epoch"],
                             "samples_per_s": record["samples_per_s"],
                             "epoch_s": record["epoch_s"]})
    return rows


def train_step_speed(data: Path, width: int, steps: int) -> list[dict]:
    """Samples/s of the recipe's training step (batch 32) by precision and threads, measured
    back to back in this process on the same canvases."""
    import torch

    from surge_examples.detection.model import centernet
    from surge_examples.detection.training import CenterNetLoss, load_tensors

    images, targets = load_tensors(data / "val", limit=32 * (steps + 2))
    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for precision in ("fp32", "bf16"):
            torch.manual_seed(0)
            net, loss_fn = centernet(width=width), CenterNetLoss()
            optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
            for step in range(steps + 2):
                if step == 2:  # two warm-up steps
                    started = time.perf_counter()
                x, y = images[step * 32:(step + 1) * 32], targets[step * 32:(step + 1) * 32]
                with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
                    maps = net(x)
                loss = loss_fn(maps, y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            seconds = time.perf_counter() - started
            rows.append({"run": f"train step, {threads} thread(s)", "parallelism": "none",
                         "precision": precision, "processes": 1, "epoch": "-",
                         "samples_per_s": steps * 32 / seconds, "epoch_s": None})
    return rows


# -- rendering -----------------------------------------------------------------------------------
def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def render(results: dict) -> str:
    acc = results["accuracy"]
    parts = [f"Measured {results['date']} on {results['machine']}; test set: "
             f"{results['test_canvases']} canvases, {results['test_objects']} objects.", "",
             "### Accuracy by variant (test set)", "",
             _table(["variant", "mAP@0.5", "mAP@[.5:.95]", "threshold (val)", "precision",
                     "recall", "F1@0.5", "engine img/s b1", "engine img/s b32"],
                    [[name, f"{r['map50']:.4f}", f"{r['map']:.4f}", f"{r['threshold']:.2f}",
                      f"{r['precision']:.4f}", f"{r['recall']:.4f}", f"{r['f1']:.4f}",
                      f"{r['batch1_images_s']:.0f}", f"{r['batch32_images_s']:.0f}"]
                     for name, r in acc.items()]),
             "", "### Per-class AP@0.5 (fp32, test set)", "",
             _table(["class", "AP@0.5"], [[c, f"{v:.4f}"] for c, v in
                                          acc["fp32"]["per_class_ap50"].items()])]
    if results.get("serving"):
        rows = []
        for label, runs in results["serving"].items():
            for run in runs:
                rows.append([label, str(run["concurrency"]), f"{run['throughput']:.1f}",
                             f"{run['p50_ms']:.1f}", f"{run['p99_ms']:.1f}",
                             str(sum(run["errors"].values()))])
        parts += ["", "### Serving (surge serve + surge bench, binary HTTP, one image/request)",
                  "", _table(["configuration", "clients", "images/s", "p50 ms", "p99 ms",
                              "errors"], rows), "",
                  "![throughput](img/detection_serving_throughput.png)",
                  "![p99](img/detection_serving_p99.png)"]
        ratio = results.get("speedup_at_32")
        if ratio:
            parts += ["", f"At 32 clients the tuned configuration serves **{ratio:.2f}x** the "
                          "images/s of the untuned fp32 batch-1 configuration (same run)."]
    if results.get("training"):
        parts += ["", "### Training throughput", "",
                  _table(["run", "parallelism", "precision", "processes", "epoch", "samples/s",
                          "epoch s"],
                         [[r["run"], r["parallelism"], r["precision"], str(r["processes"]),
                           str(r["epoch"]), f"{r['samples_per_s']:.1f}",
                           "-" if r["epoch_s"] is None else f"{r['epoch_s']:.0f}"]
                          for r in results["training"]])]
    return "\n".join(parts)


def plot_serving(serving: dict[str, list[dict]]) -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    for key, title, name in (("throughput", "images/s", "throughput"),
                             ("p99_ms", "p99 latency (ms)", "p99")):
        fig, ax = plt.subplots(figsize=(7, 4))
        for label, runs in serving.items():
            ax.plot([r["concurrency"] for r in runs], [r[key] for r in runs], marker="o",
                    label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(title)
        if key == "p99_ms":
            ax.axhline(100, color="grey", linestyle="--", linewidth=1, label="SLO 100 ms")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(IMAGES / f"detection_serving_{name}.png", dpi=110)
        plt.close(fig)


def write_doc(markdown: str) -> None:
    text = DOC.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    DOC.write_text(text[:start] + "\n" + markdown + "\n" + text[end:])


# -- main ----------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "out" / "fashion-det")
    parser.add_argument("--repo", type=Path, default=ROOT / "examples" / "repository")
    parser.add_argument("--model", default="detector")
    parser.add_argument("--duration", default="4s", help="surge bench time per level")
    parser.add_argument("--engine-seconds", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-serving", action="store_true")
    parser.add_argument("--serve-variants", default="int8-static",
                        help="variants served at batch 32 besides fp32 (comma-separated)")
    parser.add_argument("--train-steps", type=int, default=20,
                        help="timed training steps per precision/threads setting (0: skip)")
    parser.add_argument("--trainer-runs", type=Path, nargs="*", default=[],
                        help="metrics.jsonl files of `surge train` runs to tabulate")
    args = parser.parse_args()

    val_split, test_split = load_split(args.data / "val"), load_split(args.data / "test")
    val, test = (to_coco(val_split), val_split.images), (to_coco(test_split), test_split.images)
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{os.cpu_count()} CPU cores (shared)", "test_canvases": len(test_split),
        "test_objects": len(test_split.labels), "accuracy": {},
    }
    for label, _variant, path in variants(args.repo, args.model):
        runner = load_runner(path, RunnerOptions(intra_op_threads=args.threads))
        row = accuracy(runner, val, test)
        row.update(engine_speed(path, test_split.images, args.threads, args.engine_seconds))
        results["accuracy"][label] = row
        console.print(f"{label}: mAP@0.5 {row['map50']:.4f} F1 {row['f1']:.4f} "
                      f"b32 {row['batch32_images_s']:.0f} img/s")

    if not args.skip_serving:
        selected = read_config(args.repo / args.model / "config.yaml")
        report = args.repo / args.model / "tuning" / "report.json"
        # Only a configuration `surge tune` chose (and wrote) is served as "tuned".
        tuned = report.is_file() and json.loads(report.read_text()).get("chosen") is not None
        label = (f"{selected.variant or 'fp32'} batch {selected.max_batch_size}, "
                 f"{selected.instances} inst x {selected.threads or 'auto'} thr") if tuned else None
        results["serving"] = {}
        with tempfile.TemporaryDirectory() as work:
            for name, changes in serving_configs(args.repo, args.model, label,
                                                 args.serve_variants.split(",")):
                repo = serving_repo(args.repo, args.model, Path(work), f"r{len(results['serving'])}",
                                    **changes)
                runs = serve_and_bench(repo, args.model, args.duration)
                results["serving"][name] = runs
                console.print(f"{name}: " + ", ".join(
                    f"c{r['concurrency']} {r['throughput']:.0f}/s p99 {r['p99_ms']:.0f}ms"
                    for r in runs))
        base = results["serving"]["fp32 batch 1 (untuned)"]
        if label:
            best = results["serving"][f"tuned: {label}"]
            at32 = {r["concurrency"]: r["throughput"] for r in best}[32]
            results["speedup_at_32"] = at32 / {r["concurrency"]: r["throughput"] for r in base}[32]
        plot_serving(results["serving"])

    results["training"] = training_rows(args.repo, args.model, args.trainer_runs)
    if args.train_steps:
        width = int(json.loads((args.repo / args.model / "training.json").read_text())["width"])
        results["training"] += train_step_speed(args.data, width, args.train_steps)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "detection.json").write_text(json.dumps(results, indent=2))
    write_doc(render(results))
    table = Table("variant", "mAP@0.5", "mAP", "F1@0.5", "img/s b32", title="detector (test)")
    for name, row in results["accuracy"].items():
        table.add_row(name, f"{row['map50']:.4f}", f"{row['map']:.4f}", f"{row['f1']:.4f}",
                      f"{row['batch32_images_s']:.0f}")
    console.print(table)
    console.print(f"wrote {RESULTS / 'detection.json'} and {DOC}")


if __name__ == "__main__":
    main()
