"""The committed int8 variants served as their files are and with their int8 weights as uint8
(`surge/runtimes/int8_weights.py`), side by side on this CPU: batch time and how far each
answers from the float original.

On a CPU with VNNI the int8 files are exact; without it their uint8 x int8 products saturate,
and the shift serves them with uint8 x uint8 kernels instead. This shows what the shift costs
in time and what it gives back in answers: the largest difference from the float original's
outputs (for the detector, whose outputs are decoded boxes, `--detection` measures mAP
instead). One intra-op thread; the ways alternate over `--rounds` rounds of `--seconds` each;
medians.

    .venv/bin/python benchmarks/int8_weights.py [--rounds 5] [--seconds 1] [--batch 64]
        [--detection out/fashion-det]   # also the detector's mAP both ways (`surge data
                                        # fashion-detection OUT` makes the canvases)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from surge.platform import lacks_vnni
from surge.runtimes import int8_weights
from surge.runtimes.base import example_inputs
from surge.runtimes.onnx_runner import session_signature

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
VARIANTS = {  # variant file -> its original's
    "credit-mlp@int8-dynamic": "examples/finance/repository/credit-mlp",
    "price-forecaster@int8-dynamic": "examples/finance/repository/price-forecaster",
    "dlrm@int8-dynamic": "examples/recommendation/repository/dlrm",
    "detector@int8-static": "examples/repository/detector",
}


def session(model: str | bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


@contextlib.contextmanager
def vnni_lacking(lacks: bool) -> Iterator[None]:
    """The runners made meanwhile load as on a CPU with (False) or without VNNI, on any CPU."""
    real, int8_weights.lacks_vnni = int8_weights.lacks_vnni, lambda: lacks
    try:
        yield
    finally:
        int8_weights.lacks_vnni = real


def shifted_bytes(path: Path) -> bytes | None:
    """What a CPU without VNNI serves for `path` (None: the file as it is)."""
    with vnni_lacking(True):
        return int8_weights.served_bytes(path)


def batch_ms(runner: ort.InferenceSession, feed: dict[str, np.ndarray], seconds: float) -> float:
    """Median time of one run over `seconds` of back-to-back runs."""
    times = []
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        start = time.perf_counter()
        runner.run(None, feed)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def largest_error(runner: ort.InferenceSession, reference: list[np.ndarray],
                  feed: dict[str, np.ndarray]) -> float:
    outputs = runner.run(None, feed)
    return max(float(np.abs(np.asarray(o, np.float64) - np.asarray(r, np.float64)).max())
               for o, r in zip(outputs, reference, strict=True)
               if np.issubdtype(np.asarray(r).dtype, np.floating))


def measure(name: str, original_dir: str, args: argparse.Namespace) -> dict[str, Any] | None:
    model, _, variant = name.partition("@")
    path = ROOT / original_dir / "variants" / variant / "model.onnx"
    shifted = shifted_bytes(path)
    if shifted is None:
        return None
    original = session(str(ROOT / original_dir / "1" / "model.onnx"))
    ways = {"as_file": session(str(path)), "uint8_weights": session(shifted), "fp32": original}
    signature = session_signature(ways["as_file"])
    feed = example_inputs(signature, batch_size=args.batch)
    reference = original.run(None, feed)
    times: dict[str, list[float]] = {way: [] for way in ways}
    for _ in range(args.rounds):
        for way, runner in ways.items():
            times[way].append(batch_ms(runner, feed, args.seconds))
    row = {way: {"batch_ms": statistics.median(times[way]),
                 "max_abs_error": largest_error(runner, reference, feed)}
           for way, runner in ways.items()}
    row["time_ratio"] = row["uint8_weights"]["batch_ms"] / row["as_file"]["batch_ms"]
    del row["fp32"]["max_abs_error"]
    return row


def detection_accuracy(data: Path) -> dict[str, dict[str, float]]:
    """mAP@0.5, mAP@[.5:.95] and F1 of the detector's original and of its int8-static variant
    both ways, on the canvases in `data` (benchmarks/detection.py's measure)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from detection import accuracy

    from surge.runtimes import RunnerOptions, load_runner
    from surge_examples.detection.coco import load_split, to_coco

    val_split, test_split = load_split(data / "val"), load_split(data / "test")
    val, test = (to_coco(val_split), val_split.images), (to_coco(test_split), test_split.images)
    directory = ROOT / VARIANTS["detector@int8-static"]
    rows = {}
    for label, path, shift in (("original", directory / "1" / "model.onnx", False),
                               ("int8-static as file", directory / "variants" / "int8-static"
                                / "model.onnx", False),
                               ("int8-static uint8 weights", directory / "variants"
                                / "int8-static" / "model.onnx", True)):
        with vnni_lacking(shift):
            runner = load_runner(path, RunnerOptions(intra_op_threads=2))
        row = accuracy(runner, val, test)
        rows[label] = {key: row[key] for key in ("map50", "map", "f1")}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out", type=Path, default=RESULTS / "int8_weights.json")
    parser.add_argument("--detection", type=Path, default=None)
    args = parser.parse_args()
    rows = {name: row for name, directory in VARIANTS.items()
            if (row := measure(name, directory, args)) is not None}
    print(f"CPU without VNNI: {lacks_vnni()}; batch {args.batch}, 1 thread, "
          f"{args.rounds} rounds")
    print(f"{'variant':32} {'fp32 ms':>9} {'as file ms':>11} {'uint8 ms':>9} {'ratio':>6} "
          f"{'err as file':>12} {'err uint8':>10}")
    for name, row in rows.items():
        print(f"{name:32} {row['fp32']['batch_ms']:9.3f} {row['as_file']['batch_ms']:11.3f} "
              f"{row['uint8_weights']['batch_ms']:9.3f} {row['time_ratio']:6.2f} "
              f"{row['as_file']['max_abs_error']:12.4f} "
              f"{row['uint8_weights']['max_abs_error']:10.4f}")
    accuracy = detection_accuracy(args.detection) if args.detection else None
    for label, figures in (accuracy or {}).items():
        print(f"detector {label}: mAP@0.5 {figures['map50']:.4f}, mAP {figures['map']:.4f}, "
              f"F1 {figures['f1']:.4f}")
    args.out.write_text(json.dumps({"lacks_vnni": lacks_vnni(), "batch": args.batch,
                                    "rounds": args.rounds, "rows": rows,
                                    "detector_accuracy": accuracy}, indent=2) + "\n")


if __name__ == "__main__":
    main()
