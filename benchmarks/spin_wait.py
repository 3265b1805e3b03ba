"""How a served instance's engine threads wait (`spin_wait`: false / run / true), side by side.

For each model (the default fashion CNN, ResNet-18 at 3x64x64) the original, one instance of
`--threads` intra-op threads in a worker process, no batching delay, served three ways: `false`
(threads sleep between operators), `run` (they spin between operators while a batch computes
and sleep between batches: ONNX Runtime's force_spinning_stop) and `true` (they always spin).
The Engine runs in this process (no sockets); the three configs take turns `--rounds` times:

- one closed-loop client: p50 latency and requests/s;
- open loop, Poisson arrivals at half the capacity measured first (64 closed-loop clients,
  `false`): p50 from each request's scheduled arrival and from when it was sent;
- 64 closed-loop clients: requests/s.

`--busy N` runs N processes that spin on a core each for the whole run (another job sharing
the machine), so the run shows what each way costs where the server does not have the cores
to itself.

    .venv/bin/python benchmarks/spin_wait.py [--models fashion,resnet64] [--rounds 2] [--busy 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from in_process import closed_loop_capacity, measure, refused  # noqa: E402
from load_models import BUILDERS, LoadModel  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WAYS: dict[str, bool | str] = {"false": False, "run": "run", "true": True}


def write_config(model: LoadModel, way: str, threads: int) -> str:
    """The original, one instance of `threads` threads, no batching delay, `spin_wait` = way."""
    name = f"spin-{way}"
    target = model.repo / name
    if not target.exists():
        shutil.copytree(model.repo / "untuned" / "1", target / "1")
    config = {"name": name, "max_batch_size": 16, "batching": {"max_queue_delay_ms": 0.0},
              "instances": 1, "threads": threads, "spin_wait": WAYS[way]}
    (target / "config.yaml").write_text(yaml.safe_dump(config))
    return name


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each figure over the rounds (nested dicts alike)."""
    out: dict[str, Any] = {}
    for key, value in runs[0].items():
        out[key] = (medians([r[key] for r in runs]) if isinstance(value, dict)
                    else float(statistics.median(r[key] for r in runs)))
    return out


def run_model(model: LoadModel, args: argparse.Namespace) -> dict[str, Any]:
    names = {way: write_config(model, way, args.threads) for way in WAYS}
    capacity = asyncio.run(closed_loop_capacity(model, names["false"], args.seconds))
    rounds: dict[str, list[dict[str, Any]]] = {way: [] for way in WAYS}
    for _ in range(args.rounds):
        for way, name in names.items():
            rounds[way].append(asyncio.run(measure(model, name, capacity / 2, args)))
    row = {"model": model.name, "threads": args.threads, "capacity_per_s": capacity,
           **{way: medians(rounds[way]) for way in WAYS}, "rounds": rounds}
    print_row(row)
    return row


def print_row(row: dict[str, Any]) -> None:
    print(f"\n== {row['model']}, 1 instance x {row['threads']} threads "
          f"(capacity {row['capacity_per_s']:.0f}/s with spin_wait false)")
    base = row["false"]
    for way in WAYS:
        r = row[way]
        half = r["half_load"]
        print(f"  spin_wait {way:5}  1 client p50 {r['one_client']['p50_ms']:6.3f} ms "
              f"({r['one_client']['p50_ms'] / base['one_client']['p50_ms']:.2f}x) | half load "
              f"p50 {half['p50_ms']:6.2f} ms ({half['p50_ms'] / base['half_load']['p50_ms']:.2f}x;"
              f" from send {half['p50_from_send_ms']:5.2f}{refused(half)}) | 64 clients "
              f"{r['clients_64_per_s']:6.0f}/s "
              f"({r['clients_64_per_s'] / base['clients_64_per_s']:.2f}x)")


def spin_forever() -> None:
    while True:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="fashion,resnet64")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="intra-op threads of the one instance (default: the cores)")
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--busy", type=int, default=0,
                        help="processes spinning on a core each meanwhile (another job)")
    parser.add_argument("--out", type=Path, default=RESULTS / "spin_wait.json")
    args = parser.parse_args()
    unknown = sorted(set(args.models.split(",")) - set(BUILDERS))
    if unknown or args.threads < 1 or args.rounds < 1 or args.busy < 0:
        parser.error(f"--models from {sorted(BUILDERS)}, --threads/--rounds >= 1, --busy >= 0 "
                     f"(got models {args.models!r}, threads {args.threads}, rounds "
                     f"{args.rounds}, busy {args.busy})")
    busy = [multiprocessing.Process(target=spin_forever, daemon=True) for _ in range(args.busy)]
    for process in busy:
        process.start()
    load_before = os.getloadavg()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            rows = [run_model(BUILDERS[name](Path(tmp), 50.0), args)
                    for name in args.models.split(",")]
    finally:
        for process in busy:
            process.kill()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"load_average_before": load_before,
                                    "load_average_after": os.getloadavg(), "busy": args.busy,
                                    "seconds": args.seconds, "rows": rows}, indent=1))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
