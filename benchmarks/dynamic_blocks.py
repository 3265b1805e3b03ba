"""ONNX Runtime's dynamic block scheduling (`session.dynamic_block_base`) beside a front end.

At 64 clients part of the machine is lost to operators' parallel sections waiting for an
intra-op thread that a front-end burst has preempted (docs/performance.md). ONNX Runtime can
split a parallel loop into shrinking blocks that the other threads take over
(`session.dynamic_block_base`, off by default). This measures whether that gives the time back:
ResNet-18 at 3x64x64, one session of 2 intra-op threads (threads sleep between operators, as
the served default), batches of `--batch`, images/s for each block base, side by side in
rounds, while another process takes 0, 10 or 30% of a core in bursts of 150 us (the front
end's pattern: a request's work, then idle).

    .venv/bin/python benchmarks/dynamic_blocks.py [--batch 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import CASES, export_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
BASES = (0, 1, 4, 16)  # 0: ONNX Runtime's default (static blocks)
BURST_S = 150e-6


def interferer(stop: Any, share: float) -> None:
    """Busy for BURST_S, then idle, `share` of a core on average."""
    while not stop.is_set():
        started = time.perf_counter()
        while time.perf_counter() - started < BURST_S:
            pass
        time.sleep(random.expovariate(1 / (BURST_S / share - BURST_S)))


def session(path: Path, base: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if base:
        options.add_session_config_entry("session.dynamic_block_base", str(base))
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def images_per_s(sess: Any, x: np.ndarray, seconds: float) -> float:
    feed = {sess.get_inputs()[0].name: x}
    sess.run(None, feed)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        sess.run(None, feed)
        count += x.shape[0]
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "dynamic_blocks.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = export_model(CASES["resnet64"], Path(tmp) / "model.onnx")
        x = np.random.default_rng(0).random((args.batch, 3, 64, 64), dtype=np.float32)
        sessions = {base: session(path, base) for base in BASES}
        rows = []
        for share in (0.0, 0.1, 0.3):
            stop = mp.Event()
            busy = mp.Process(target=interferer, args=(stop, share)) if share else None
            if busy is not None:
                busy.start()
            runs: dict[int, list[float]] = {base: [] for base in BASES}
            for _ in range(args.rounds):
                for base, sess in sessions.items():
                    runs[base].append(images_per_s(sess, x, args.seconds))
            stop.set()
            if busy is not None:
                busy.join()
            medians = {base: statistics.median(v) for base, v in runs.items()}
            rows.append({"interferer_share": share, "images_per_s": medians,
                         "over_default": {b: medians[b] / medians[0] for b in BASES}})
            print(f"other process {share:.0%} of a core: " + ", ".join(
                f"base {b} {medians[b]:.0f} ({medians[b] / medians[0]:.2f}x)" for b in BASES),
                flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"batch": args.batch, "rounds": args.rounds, "rows": rows},
                                   indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
