"""Surge beside other servers on one model, side by side in one run, as ratios of the ceiling.

ResNet-18 3x64x64 (random weights) under the same closed-loop load generator at each level:

- surge default: `surge serve` with the model's name only (every config field at its default),
  binary HTTP;
- surge tuned: one single-threaded instance per core, binary HTTP;
- surge spin-run (not in the default list): the default with `spin_wait: run`, binary HTTP;
- naive FastAPI (benchmarks/naive_server.py), V2 JSON, one forward pass per request;
- LitServe, PyTriton, BentoML and Ray Serve (benchmarks/peer_server.py), installed by this
  script into their own virtual environments (`.venv-peers`, `.venv-peers-bentoml`,
  `.venv-peers-rayserve`) on first use; a peer that cannot be installed or started is skipped,
  and the reason goes into the results.

Each level's throughput is divided by the in-process ceiling (the bare ONNX Runtime session at
its best batch and thread count) re-measured just before and after that level, because the
machine is shared. The load average goes into the results next to the figures.

    .venv/bin/python benchmarks/peers.py [--duration 8] [--levels 1,16,64,256]
        [--peers surge-default,surge-tuned,fastapi,litserve,pytriton,bentoml,rayserve]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from serving import (  # noqa: E402
    CASES,
    CORES,
    Case,
    CeilingProbe,
    bench_levels,
    export_model,
    measure_ceiling,
    run_naive,
    stop,
    surge_server,
    wait_ready,
)

from surge.server.sockets import unused_port  # noqa: E402


@dataclass(frozen=True)
class Peer:
    """What a peer server needs, pinned to the versions measured (ONNX Runtime as in Surge's
    venv), the venv it goes into (BentoML and Ray Serve pin their own web stacks), the modules
    that show it is installed, and the protocol its benchmark clients speak."""

    packages: tuple[str, ...]
    modules: str
    venv: Path
    protocol: str

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"


PEERS = {
    "litserve": Peer(("litserve==0.2.19", "onnxruntime==1.32.0", "numpy"), "litserve",
                     ROOT / ".venv-peers", "http-json"),
    "pytriton": Peer(("nvidia-pytriton==0.7.0", "onnxruntime==1.32.0", "numpy"), "pytriton",
                     ROOT / ".venv-peers", "http"),
    "bentoml": Peer(("bentoml==1.4.40", "fastapi", "onnxruntime==1.32.0", "numpy"),
                    "bentoml, fastapi", ROOT / ".venv-peers-bentoml", "http-json"),
    "rayserve": Peer(("ray[serve]==2.60.0", "onnxruntime==1.32.0", "numpy"), "ray.serve",
                     ROOT / ".venv-peers-rayserve", "http-json"),
}
SURGE_CONFIGS = {
    "surge-default": "{}\n",
    "surge-tuned": f"instances: {CORES}\nthreads: 1\nmax_batch_size: 32\n",
    "surge-spin-run": "spin_wait: run\n",
}


def ensure_peer(peer: str) -> str | None:
    """Install `peer` into its venv when it is missing; None when ready, else why not."""
    needs = PEERS[peer]
    python = needs.python
    try:
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(needs.venv)], check=True,
                           capture_output=True)
        if subprocess.run([str(python), "-c", f"import {needs.modules}"],
                          capture_output=True).returncode == 0:
            return None
        done = subprocess.run([str(python), "-m", "pip", "install", "-q", *needs.packages],
                              capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot install {peer}: {exc}"
    if done.returncode != 0:
        return f"pip install {' '.join(needs.packages)} failed: {done.stderr[-400:]}"
    return None


def run_peer(peer: str, model: Path, case: Case, levels: list[int], duration: float,
             probe: CeilingProbe) -> list[dict[str, Any]]:
    port = unused_port()
    command = [str(PEERS[peer].python), str(ROOT / "benchmarks" / "peer_server.py"),
               peer, case.name, str(model), str(port), str(CORES), str(unused_port()),
               str(unused_port())]
    log = model.with_name(f"{peer}.log")
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, timeout=300.0)
        wait_model(url, case.name, process)
        return bench_levels(url, case.name, PEERS[peer].protocol, levels, duration, process.pid,
                            probe)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}; last error: {last_error(log)}") from None
    finally:
        stop_group(process)


def last_error(log: Path) -> str:
    """The last line of a peer's output that names an error, shortened."""
    lines = [line for line in log.read_text(errors="replace").splitlines()
             if "Error" in line or "error" in line]
    return lines[-1][-300:] if lines else "(none in its output)"


def wait_model(url: str, name: str, process: subprocess.Popen[bytes],
               timeout: float = 300.0) -> None:
    """PyTriton reports the server ready before its model is: wait for the model itself."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} (model not loaded)")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/v2/models/{name}", timeout=1.0).status_code == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"model {name!r} not loaded after {timeout} s")


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """Stop a peer and the processes it started (LitServe's workers, tritonserver)."""
    stop(process)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def run_surge(config: str, model: Path, case: Case, root: Path, levels: list[int],
              duration: float, probe: CeilingProbe) -> list[dict[str, Any]]:
    directory = root / case.name / "1"
    directory.mkdir(parents=True)
    (directory / "model.onnx").write_bytes(model.read_bytes())
    (root / case.name / "config.yaml").write_text(config)
    with surge_server(root) as server:
        return bench_levels(server.url, case.name, "http", levels, duration, server.process.pid,
                            probe)


def run_one(peer: str, model: Path, case: Case, tmp: Path, args: argparse.Namespace,
            probe: CeilingProbe) -> tuple[list[dict[str, Any]], str | None]:
    """One server's rows, or no rows and why it was skipped."""
    if peer in SURGE_CONFIGS:
        return run_surge(SURGE_CONFIGS[peer], model, case, tmp / peer, args.levels,
                         args.duration, probe), None
    if peer == "fastapi":
        return run_naive(model, case, args.levels, args.duration, CORES, probe), None
    why = ensure_peer(peer)
    if why is not None:
        return [], why
    try:
        return run_peer(peer, model, case, args.levels, args.duration, probe), None
    except RuntimeError as exc:  # it did not come up
        return [], f"{peer} did not start: {exc}"


def print_table(rows: dict[str, list[dict[str, Any]]], ceiling: float) -> None:
    print(f"\nceiling {ceiling:,.1f} items/s; load average {os.getloadavg()[0]:.1f}")
    print(f"{'server':16} {'c':>4} {'req/s':>8} {'/ceiling':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for name, runs in rows.items():
        for r in runs:
            print(f"{name:16} {r['concurrency']:>4} {r['throughput']:>8.1f} "
                  f"{r['over_ceiling']:>8.2f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", default="surge-default,surge-tuned,fastapi,litserve,pytriton,"
                                           "bentoml,rayserve")
    parser.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")],
                        default=[1, 16, 64, 256])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per level")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "peers.json")
    args = parser.parse_args()
    case = CASES["resnet64"]
    rows: dict[str, list[dict[str, Any]]] = {}
    skipped: dict[str, str] = {}
    load = [os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="surge-peers-") as tmp:
        model = export_model(case, Path(tmp) / "models" / "resnet64.onnx")
        ceiling = measure_ceiling(case, model)
        probe = CeilingProbe(case, model, ceiling["batch"], ceiling["threads"])
        for peer in args.peers.split(","):
            runs, why = run_one(peer, model, case, Path(tmp), args, probe)
            if why is not None:
                skipped[peer] = why
                print(f"skipped {peer}: {why}")
            else:
                rows[peer] = runs
            load.append(os.getloadavg())
    print_table(rows, ceiling["items_per_s"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "model": case.name, "cores": CORES, "duration_s_per_level": args.duration,
        "ceiling": ceiling, "rows": rows, "skipped": skipped, "load_average": load,
    }, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
