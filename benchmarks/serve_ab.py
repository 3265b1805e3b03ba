"""One served model, two source trees, side by side: `surge serve` started from this tree's
`src` and from another (`--src`, e.g. a checkout of an earlier commit), alternately, each
driven by the same `surge bench` loads (closed loop at 1 client, and an open loop of Poisson
arrivals at `--rate`). Prints p50 / p99 / requests/s per tree and round; saves the JSON.

    .venv/bin/python benchmarks/serve_ab.py --src /tmp/old/src [--repo examples/repository]
        [--model fashion] [--rate 1500] [--seconds 15] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def serve(src: Path, repo: Path, model: str, work: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`surge serve` of `model` with `src` first on the path; (process, HTTP URL) once ready."""
    endpoints = work / "endpoints.json"
    endpoints.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=str(src))
    process = subprocess.Popen(
        [sys.executable, "-c", "from surge.cli import main; main()", "serve", str(repo),
         "--models", model, "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0",
         "--endpoints-file", str(endpoints)],
        env=env, stdout=subprocess.DEVNULL, stderr=(work / "server.log").open("ab"))
    deadline = time.monotonic() + 180
    while not endpoints.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the server from {src} did not start: see {work / 'server.log'}")
        time.sleep(0.2)
    return process, json.loads(endpoints.read_text())["http"]


def bench(url: str, model: str, load: list[str], seconds: float, work: Path) -> dict[str, Any]:
    out = work / "bench.json"
    subprocess.run([sys.executable, "-c", "from surge.cli import main; main()", "bench", url,
                    "--model", model, *load, "--duration", f"{seconds}s", "--json", str(out)],
                   check=True, stdout=subprocess.DEVNULL, env=dict(os.environ,
                                                                   PYTHONPATH=str(ROOT / "src")))
    run = json.loads(out.read_text())["runs"][0]
    return {key: run[key] for key in ("throughput", "p50_ms", "p99_ms", "ok", "errors",
                                      "sent_late")}


def measure(src: Path, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    process, url = serve(src, Path(args.repo), args.model, work)
    try:
        return {"one_client": bench(url, args.model, ["--concurrency", "1"], args.seconds, work),
                "open_loop": bench(url, args.model, ["--rate", f"{args.rate:g}/s", "--poisson"],
                                   args.seconds, work)}
    finally:
        process.terminate()
        process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", required=True, help="the other source tree's `src` folder")
    parser.add_argument("--repo", default=str(ROOT / "examples" / "repository"))
    parser.add_argument("--model", default="fashion")
    parser.add_argument("--rate", type=float, default=1500.0, help="open-loop arrivals per s")
    parser.add_argument("--seconds", type=float, default=15.0, help="per load")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default="serve_ab.json", help="under benchmarks/results/")
    args = parser.parse_args()
    trees = {"this": ROOT / "src", "other": Path(args.src).resolve()}
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for name, src in trees.items():
                figures = measure(src, args, Path(tmp))
                results.append({"round": round_, "tree": name, "src": str(src), **figures})
                print(f"round {round_} {name:5}: 1 client p50 "
                      f"{figures['one_client']['p50_ms']:.2f} ms, "
                      f"{figures['one_client']['throughput']:,.0f}/s; {args.rate:g}/s open loop "
                      f"p50 {figures['open_loop']['p50_ms']:.2f} ms, p99 "
                      f"{figures['open_loop']['p99_ms']:.2f} ms", flush=True)
    out = ROOT / "benchmarks" / "results" / args.out
    out.write_text(json.dumps({"model": args.model, "rate": args.rate, "seconds": args.seconds,
                               "load_average": os.getloadavg(), "results": results}, indent=2))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
