"""Where the cores go while `surge serve` runs ResNet-18 3x64x64 under a closed-loop load.

One level (default 64 clients, binary HTTP) against a server in the layout `--config` names
(default: the config is the model's name only, 1 instance x all cores; tuned: one
single-threaded instance per core). While it runs:

- CPU seconds of every process from /proc: the front end, each worker, the load generator
  (this process) and the rest of the machine (other users: this machine is shared), plus the
  idle time from /proc/stat;
- py-spy samples of the front end (Python frames) and perf samples of one worker (every
  thread, native symbols), folded into named shares: HTTP parsing, request decode,
  scheduler, hand-off into shared memory, results (read, slice, answer), response encode,
  event loop; ORT compute, ORT thread spinning, copies, Python, kernel;
- the engine's own per-batch counters (worker copy in, compute, copy out).

    .venv/bin/python benchmarks/profile_serving.py [--config default|tuned] [--clients 64]
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
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from serving import CASES, TICKS, export_model, surge_server  # noqa: E402

CORES = os.cpu_count() or 2
PY_SPY = Path(sys.executable).with_name("py-spy")
CONFIGS = {
    "default": "",  # the model's name only: every field at its default
    "tuned": f"instances: {CORES}\nthreads: 1\nmax_batch_size: 32\n",
}
# First matching rule wins: (share name, substrings of a folded stack, innermost frame first).
FRONT_END_RULES = (
    ("response encode", ("encode_response", "tensor_to_bytes")),
    ("request decode", ("decode_request",)),
    ("results: read, slice, answer", ("_finished", "on_done", "_answer", "split")),
    ("hand-off into shared memory", ("dispatch (surge/workers", "pack (", "send (")),
    ("scheduler", ("surge/scheduler",)),
    ("HTTP parsing and ASGI", ("httptools", "h11", "uvicorn")),
    ("request path (app, engine)", ("surge/server", "surge/engine")),
)
# Worker samples come from perf (every thread, native symbols): (share, substrings of
# "dso symbol"). ONNX Runtime's pool threads show up only here, not in Python frames.
WORKER_RULES = (
    ("ORT thread spinning", ("SpinPause", "WorkerLoop", "sched_yield")),
    ("copies (memcpy)", ("memcpy", "memmove")),
    ("ORT compute", ("onnxruntime", "libgomp", "mlas")),
    ("Python (worker loop, pickling, numpy views)", ("libpython", "_multiarray", ".cpython")),
    ("kernel (pipe, scheduling, page faults)", ("[kernel",)),
)


# -- processes ------------------------------------------------------------------------------
def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


def process_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def machine_cpu() -> tuple[float, float]:
    """(busy, idle) CPU seconds of the whole machine since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / TICKS, idle / TICKS


def snapshot(pids: dict[str, int]) -> dict[str, float]:
    times = os.times()
    shot = {name: process_cpu(pid) for name, pid in pids.items()}
    shot["load generator"] = times.user + times.system
    shot["_busy"], shot["_idle"] = machine_cpu()
    return shot


def start_py_spy(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    command = [str(PY_SPY), "record", "--pid", str(pid), "--duration", str(int(seconds)),
               "--rate", "200", "--format", "raw", "--output", str(out), "--nonblocking"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_perf(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    if shutil.which("perf") is None:
        return None
    command = ["perf", "record", "-F", "499", "-p", str(pid), "-o", str(out), "--",
               "sleep", str(seconds)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def fold_perf(path: Path) -> dict[str, float]:
    """Shares of a worker's perf samples per WORKER_RULES (first match wins)."""
    if not path.exists():
        return {}
    report = subprocess.run(
        ["perf", "report", "-i", str(path), "--stdio", "--no-children", "--sort", "dso,sym"],
        capture_output=True, text=True, check=False).stdout
    shares: Counter[str] = Counter()
    for line in report.splitlines():
        percent, _, rest = line.strip().partition("%")
        if not rest or line.lstrip().startswith("#"):
            continue
        try:
            value = float(percent) / 100
        except ValueError:
            continue
        name = next((n for n, needles in WORKER_RULES if any(x in rest for x in needles)),
                    "other")
        shares[name] += value
    return dict(shares.most_common())


# -- folding --------------------------------------------------------------------------------
def fold(path: Path, rules: tuple[tuple[str, tuple[str, ...]], ...]) -> dict[str, float]:
    """Shares of the sampled stacks per rule (the innermost matching frame decides)."""
    counts: Counter[str] = Counter()
    if not path.exists():
        return {}
    for line in path.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if not number.isdigit():
            continue
        counts[classify(stack.split(";"), rules)] += int(number)
    total = sum(counts.values()) or 1
    return {name: count / total for name, count in counts.most_common()}


def top_frames(path: Path, count: int = 15) -> dict[str, float]:
    """Shares of the innermost Python frames: what the named shares are made of."""
    counts: Counter[str] = Counter()
    if not path.exists():
        return {}
    for line in path.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if number.isdigit():
            counts[stack.split(";")[-1]] += int(number)
    total = sum(counts.values()) or 1
    return {frame: n / total for frame, n in counts.most_common(count)}


def classify(frames: list[str], rules: tuple[tuple[str, tuple[str, ...]], ...]) -> str:
    for frame in reversed(frames):  # innermost first
        for name, needles in rules:
            if any(needle in frame for needle in needles):
                return name
    return "event loop and other"


# -- one run --------------------------------------------------------------------------------
def write_repository(root: Path, model: Path, config: str) -> Path:
    directory = root / "resnet64" / "1"
    directory.mkdir(parents=True)
    (directory / "model.onnx").write_bytes(model.read_bytes())
    (root / "resnet64" / "config.yaml").write_text(config or "{}\n")
    return root


def profile(repo: Path, args: argparse.Namespace, spy_dir: Path) -> dict[str, Any]:
    from surge.bench import run_bench

    with surge_server(repo) as running:
        server, url = running.process, running.url
        run_bench(url, "resnet64", [args.clients], 3.0, "http", warmup_s=0.0)  # warm
        workers = [p for p in children(server.pid) if "spawn_main" in _cmdline(p)]
        pids = {"front end": server.pid} | {f"worker {i}": p for i, p in enumerate(workers)}
        spies = [] if args.no_profilers else [
            start_py_spy(server.pid, args.duration, spy_dir / "front.txt"),
            start_perf(workers[0], args.duration, spy_dir / "worker.perf")]
        stats_before = httpx.get(f"{url}/v2/models/resnet64/stats").json()
        before, started = snapshot(pids), time.monotonic()
        report = run_bench(url, "resnet64", [args.clients], args.duration, "http", warmup_s=0.0)
        after, wall = snapshot(pids), time.monotonic() - started
        stats_after = httpx.get(f"{url}/v2/models/resnet64/stats").json()
        for spy in spies:
            if spy is not None:
                spy.wait(60)
    return {"run": asdict(report.runs[0]), "wall_s": wall,
            "cpu": shares(before, after, wall), "engine": engine_split(stats_before, stats_after),
            "front_end_py_spy": fold(spy_dir / "front.txt", FRONT_END_RULES),
            "front_end_top_frames": top_frames(spy_dir / "front.txt"),
            "worker_perf": fold_perf(spy_dir / "worker.perf")}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def shares(before: dict[str, float], after: dict[str, float], wall: float) -> dict[str, float]:
    """Each process's CPU seconds as a share of all cores over the run; the rest of the
    machine and its idle time too."""
    capacity = CORES * wall
    out = {name: (after[name] - before[name]) / capacity for name in before
           if not name.startswith("_")}
    busy = (after["_busy"] - before["_busy"]) / capacity
    out["other processes on the machine"] = max(0.0, busy - sum(out.values()))
    out["idle"] = (after["_idle"] - before["_idle"]) / capacity
    return out


def engine_split(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """Per-batch worker time split (ms per batch) from the engine's counters."""
    old, new = before["model_stats"][0], after["model_stats"][0]
    batches = max(1, new["execution_count"] - old["execution_count"])
    items = new["inference_count"] - old["inference_count"]
    split = {"batches": float(batches), "mean_batch": items / batches}
    for key in ("queue", "compute_input", "compute_infer", "compute_output"):
        ns = new["inference_stats"][key]["ns"] - old["inference_stats"][key]["ns"]
        split[f"{key}_ms_per_batch" if key != "queue" else "queue_ms_per_request"] = (
            ns / 1e6 / (batches if key != "queue" else max(1, items)))
    return split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="default")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--no-profilers", action="store_true", help="CPU shares only")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="surge-profile-") as tmp:
        model = export_model(CASES["resnet64"], Path(tmp) / "resnet64.onnx")
        repo = write_repository(Path(tmp) / "repo", model, CONFIGS[args.config])
        result = profile(repo, args, Path(tmp))
    result |= {"config": args.config, "clients": args.clients, "cores": CORES,
               "load_average_before": load, "load_average_after": os.getloadavg()}
    print(json.dumps(result, indent=2))
    out = args.out or ROOT / "benchmarks" / "results" / f"profile_{args.config}.json"
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
