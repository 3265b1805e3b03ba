"""The models and configurations `benchmarks/surge_load.py` replays its trace against.

Each model gets one repository with its original and its int8-static variant, and three
configurations of it (model names in that repository):

- `untuned`: the committed config (batches up to 64, 2 ms delay, one instance, no SLO);
- `peak`: the static config `surge tune` picks for the peak load (`tune_peak`: variants
  [original, int8-static], a small grid, the 3x rate, no run-time control); without the tune
  (`surge_load.py --hand-peak`) the hand-set stand-in: int8-static with the untuned batching;
- `adaptive`: `slo_p99_ms` with the accuracy ladder [original, int8-static] (load-time probe,
  SLO batching, ladder controller), on the batching and layout `surge tune` picked for the peak,
  as `surge tune --slo-p99` writes it (`adaptive_from_tune`); with the hand-set peak, or
  `surge_load.py --adaptive-layout untuned`, on the untuned batching and layout.

Accuracy per rung: fashion's from its `variant.yaml` check (10,000 labelled test images, made by
`surge optimize` here when out/demo holds none); ResNet-18 has random weights (no labels mean
anything), so its rungs carry the top-1 agreement with the original on 256 random images as
their accuracy proxy.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
FASHION_DEMO = ROOT / "out" / "demo" / "repo" / "fashion"  # made by an earlier `surge demo`
FASHION_EXAMPLE = ROOT / "examples" / "repository" / "fashion"
CONFIGS = ("untuned", "peak", "adaptive")


@dataclass(frozen=True)
class LoadModel:
    """One model of the trace: its repository, input and ladder accuracies."""

    name: str
    repo: Path
    onnx: Path  # the original's file (for the naive server and the in-process time)
    inputs: dict[str, np.ndarray]
    accuracy: dict[str, float]  # per rung, percent
    max_accuracy_drop: float
    data: str  # what `surge tune` evaluates the variants on (a dataset name or an .npz)


def base_config(max_batch: int) -> dict[str, Any]:
    return {"max_batch_size": max_batch, "batching": {"max_queue_delay_ms": 2.0},
            "instances": 1, "threads": 0, "queue": {"max_size": 256}}


def write_configs(root: Path, source: Path, accuracy: dict[str, float], max_drop: float,
                  slo_ms: float, max_batch: int) -> None:
    """The three configurations of `source` (a model dir with 1/ and variants/) under `root`."""
    settings = {
        "untuned": base_config(max_batch),
        "peak": {**base_config(max_batch), "variant": "int8-static"},  # until tune_peak
        "adaptive": {**base_config(max_batch), "slo_p99_ms": slo_ms,
                     "ladder": ["original", "int8-static"], "max_accuracy_drop": max_drop,
                     "ladder_accuracy": accuracy},
    }
    for name, config in settings.items():
        target = root / name
        shutil.copytree(source / "1", target / "1")
        shutil.copytree(source / "variants" / "int8-static", target / "variants" / "int8-static")
        (target / "config.yaml").write_text(yaml.safe_dump({"name": name, **config}))


def fashion_source(work: Path) -> Path:
    """The default model's directory with its checked int8-static variant: the one an earlier
    `surge demo` left in out/demo, or else one made here (`surge optimize` on a copy of
    examples/repository/fashion, checked on the 10,000 test images: seconds)."""
    if (FASHION_DEMO / "variants" / "int8-static" / "variant.yaml").exists():
        return FASHION_DEMO
    from surge.api import optimize

    repo = work / "fashion-source"
    if not (repo / "fashion" / "variants" / "int8-static" / "variant.yaml").exists():
        shutil.copytree(FASHION_EXAMPLE / "1", repo / "fashion" / "1", dirs_exist_ok=True)
        shutil.copy(FASHION_EXAMPLE / "config.yaml", repo / "fashion" / "config.yaml")
        optimize(repo, "fashion", "int8-static")
    return repo / "fashion"


def fashion(work: Path, slo_ms: float) -> LoadModel:
    """The default model with its int8-static variant, checked (`fashion_source`)."""
    source = fashion_source(work)
    check_file = source / "variants" / "int8-static" / "variant.yaml"
    if not check_file.exists():
        raise SystemExit(f"{check_file} is missing: `surge optimize` kept no int8-static variant")
    check = yaml.safe_load(check_file.read_text())["check"]
    accuracy = {"original": 100 * check["reference_accuracy"],
                "int8-static": 100 * check["accuracy"]}
    root = work / "fashion-repo"
    write_configs(root, source, accuracy, 1.0, slo_ms, 64)
    x = np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32)
    return LoadModel("fashion", root, source / "1" / "model.onnx", {"image": x},
                     accuracy, 1.0, "fashion-mnist")


def resnet64(work: Path, slo_ms: float) -> LoadModel:
    """ResNet-18 at 3x64x64 (random weights) and its int8-static variant, made here."""
    import torch

    from surge.export import export_onnx
    from surge.optimize import Int8StaticConfig, ModelSource, Tolerance, apply
    from surge.zoo.resnet import resnet18

    torch.manual_seed(0)
    module = resnet18(classes=1000).eval()
    rng = np.random.default_rng(0)
    samples = rng.random((256, 3, 64, 64), dtype=np.float32)
    source_dir = work / "resnet64-source"
    onnx = export_onnx(module, (torch.from_numpy(samples[:2]),), source_dir / "1" / "model.onnx",
                       ["image"], ["logits"])
    source = ModelSource("resnet64", ["image"], ["logits"], {"image": samples}, onnx_path=onnx,
                         task="classification", work_dir=work / "resnet64-work",
                         calibration={"image": rng.random((128, 3, 64, 64), dtype=np.float32)})
    variant = apply(source, Int8StaticConfig(calibration_samples=128),
                    source_dir / "variants" / "int8-static", Tolerance(), "int8-static")
    variant.write_yaml(source_dir / "variants" / "int8-static" / "variant.yaml")
    agreement = variant.check.top1_agreement or 0.0
    accuracy = {"original": 100.0, "int8-static": round(100 * agreement, 2)}
    # The budget admits the measured agreement: with random weights the logits lie close
    # together and int8 rounding flips more top-1 answers than a trained model's would.
    max_drop = max(1.0, round(100 - accuracy["int8-static"] + 0.5, 1))
    root = work / "resnet64-repo"
    write_configs(root, source_dir, accuracy, max_drop, slo_ms, 64)
    # The tune's data: the samples labelled by the original (accuracy = agreement with it).
    data = work / "resnet64-agreement.npz"
    with torch.no_grad():
        labels = module(torch.from_numpy(samples)).argmax(1).numpy()
    np.savez(data, image=samples, labels=labels)
    return LoadModel("resnet64", root, onnx, {"image": samples[:1].copy()}, accuracy, max_drop,
                     str(data))


def tune_peak(model: LoadModel, rate: float, slo_ms: float, budget_s: float = 200.0,
              adaptive: bool = True) -> dict[str, Any]:
    """Let `surge tune` pick the `peak` config for `rate` requests/s (open loop) within the SLO
    and the accuracy budget, and write it as a static config (no SLO control, no ladder: the
    tune would add a ladder when a variant is faster); with `adaptive`, the same pick with the
    SLO and the ladder as the `adaptive` config. Returns what it picked, the seconds it took and
    its report (also left in the model's tuning folder)."""
    from surge.api import tune
    from surge.tuning import AccuracyBudget, Effort, SearchSpace
    from surge.tuning.apply import write_selection
    from surge.tuning.space import Load, Slo
    from surge.tuning.tune import TuneOptions

    # A small grid and budget: about 3 minutes a model (variants: the original, int8-static).
    options = TuneOptions(
        data=model.data, task="classification", slo=Slo(slo_ms, Load(rate=rate)),
        accuracy=AccuracyBudget(model.max_accuracy_drop),
        space=SearchSpace((16, 64), (0.0, 2.0), ((1, 2), (2, 1)), optimize=False),
        effort=Effort(budget_s, profile_s=0.1, short_run_s=2.0, full_run_s=4.0, short_runs=3,
                      finalists=1, final_rounds=1, eval_samples=1000))
    started = time.perf_counter()
    report = tune(model.repo, "peak", options)
    chosen = report.chosen or closest(report)
    write_selection(model.repo / "peak", chosen, None)
    if adaptive:
        adaptive_from_tune(model, chosen, slo_ms)
    return {"chosen": chosen.key, "met_slo": report.chosen is not None, "rate_per_s": rate,
            "seconds": time.perf_counter() - started, "report": report.to_dict()}


def adaptive_from_tune(model: LoadModel, chosen: Any, slo_ms: float) -> None:
    """The adaptive config as `surge tune` writes it with an SLO and a ladder: the tune's pick's
    batching and layout serving every rung of [original, int8-static], the SLO, the budget."""
    from surge.tuning.apply import Ladder, write_selection

    ladder = Ladder(("original", "int8-static"), model.max_accuracy_drop, dict(model.accuracy))
    write_selection(model.repo / "adaptive", chosen, slo_ms, ladder)


def closest(report: Any) -> Any:
    """When no static config meets the SLO at the peak (3x capacity: often none does), the
    tune chooses nothing; of the configurations it measured most thoroughly (the last rung of
    its search), the one closest to the SLO (lowest p99) is what a user reading its report
    would serve."""
    results = [r for r in (report.selection.candidates if report.selection else []) if r.last]
    if not results:
        raise RuntimeError(f"surge tune measured no configuration of {report.model}")
    depth = max(len(r.measurements) for r in results)
    final = [r for r in results if len(r.measurements) == depth]
    return min(final, key=lambda r: r.last.p99_ms).candidate


BUILDERS = {"fashion": fashion, "resnet64": resnet64}
