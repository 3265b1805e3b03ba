"""Other serving frameworks around the same ONNX model, for benchmarks/peers.py.

Runs in its own virtual environment (`.venv-peers`, made by peers.py), so it imports nothing
from Surge. Each server answers the V2 routes the load generator needs: readiness, model
metadata and inference, with dynamic batching up to MAX_BATCH after at most DELAY_S, ONNX
Runtime on THREADS intra-op threads (as the in-process ceiling runs it).

- litserve: LitServe's LitAPI with its own batching; V2 JSON tensors (the load generator's
  `http-json` protocol), one inference worker;
- pytriton: NVIDIA PyTriton: Triton's C++ HTTP front end and dynamic batcher in front of a
  Python model; V2 binary tensors (`http`);
- bentoml: a BentoML service (benchmarks/peer_bentoml.py) with its adaptive batcher, one
  worker; V2 JSON;
- rayserve: a Ray Serve deployment (one replica, FastAPI ingress, `@serve.batch`) on a local
  Ray cluster started here; V2 JSON.

Usage: python benchmarks/peer_server.py litserve|pytriton|bentoml|rayserve MODEL_NAME MODEL.onnx \
       PORT THREADS \
       GRPC_PORT METRICS_PORT (the ports Triton also opens; peers.py chooses all three)
"""


import os
import signal
import sys
import sysconfig
from typing import Any

import numpy as np
import onnxruntime as ort

try:
    from litserve import LitAPI
except ImportError:  # only PyTriton installed
    LitAPI = object

MAX_BATCH = 32
DELAY_S = 0.002  # Surge's default max_queue_delay_ms


def session(path: str, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def metadata(name: str, sess: ort.InferenceSession) -> dict[str, Any]:
    def spec(item: Any) -> dict[str, Any]:
        return {"name": item.name, "datatype": "FP32",
                "shape": [-1 if not isinstance(d, int) else d for d in item.shape]}

    return {"name": name, "versions": ["1"], "platform": "onnxruntime_onnx",
            "inputs": [spec(i) for i in sess.get_inputs()],
            "outputs": [spec(o) for o in sess.get_outputs()]}


class OnnxApi(LitAPI):  # type: ignore[misc,valid-type]
    """LitServe's API around the ONNX session; module level: LitServe pickles it into its
    inference worker process."""

    def __init__(self, name: str, path: str, threads: int, **options: Any) -> None:
        super().__init__(**options)
        self.name, self.path, self.threads = name, path, threads

    def setup(self, device: str) -> None:
        self.session = session(self.path, self.threads)
        self.input = self.session.get_inputs()[0].name

    # No annotations on these two: LitServe reads them as the route's request and response
    # types (the default is its plain JSON request and response).
    def decode_request(self, request):  # type: ignore[no-untyped-def]
        tensor = request["inputs"][0]
        return np.asarray(tensor["data"], np.float32).reshape(tensor["shape"][1:])

    def predict(self, x: Any) -> Any:
        return self.session.run(None, {self.input: np.stack(list(x))})[0]

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        return list(output)

    def encode_response(self, output):  # type: ignore[no-untyped-def]
        return {"model_name": self.name, "model_version": "1", "outputs": [
            {"name": "logits", "datatype": "FP32", "shape": [1, *output.shape],
             "data": output.reshape(-1).tolist()}]}


def run_litserve(name: str, path: str, port: int, threads: int, *_: int) -> None:
    import litserve as ls

    api = OnnxApi(name, path, threads, max_batch_size=MAX_BATCH, batch_timeout=DELAY_S,
                  api_path=f"/v2/models/{name}/infer")
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1)
    meta = metadata(name, session(path, 1))
    server.app.add_api_route("/v2/health/ready", lambda: {}, methods=["GET"])
    server.app.add_api_route(f"/v2/models/{name}", lambda: meta, methods=["GET"])
    server.run(port=port, host="127.0.0.1", generate_client_file=False)


def stub_runtime_path(environ: dict[str, str]) -> str:
    """LD_LIBRARY_PATH for Triton's Python backend stub: this interpreter's own libpython first.

    The stub links `libpython3.X.so.1.0` by name only (its RPATH holds just PyTriton's CUDA
    libraries), so the loader picks the system's copy (Debian's 3.11.2 here), while the standard
    library it imports is this interpreter's (pyenv's 3.11.7: PyTriton puts the venv's bin, and
    so its `python3` and pyvenv.cfg, first on PATH, where the embedded runtime looks for home).
    3.11.7's `multiprocessing.resource_tracker` calls `RLock._recursion_count()`, which the
    3.11.2 runtime's C RLock lacks, so PyTriton's tensor store fails to start and the model never
    loads. Loading the interpreter's own libpython keeps runtime and standard library one version.
    """
    library = sysconfig.get_config_var("INSTSONAME") or ""
    directory = sysconfig.get_config_var("LIBDIR") or ""
    current = environ.get("LD_LIBRARY_PATH", "")
    if not library or not os.path.exists(os.path.join(directory, library)):
        return current  # a static interpreter: nothing of its own to offer the stub
    return os.pathsep.join(part for part in (directory, current) if part)


def stop_on_sigterm() -> None:
    """Make SIGTERM (how peers.py stops a peer) stop PyTriton as Ctrl+C does: through its
    context manager, which stops tritonserver and removes its workspace (22 MB under
    ~/.cache/pytriton) and shared-memory region, instead of leaving them behind on every run."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def run_pytriton(name: str, path: str, port: int, threads: int, grpc_port: int,
                 metrics_port: int) -> None:
    # PyTriton starts tritonserver (and so the stub) with a copy of this environment.
    os.environ["LD_LIBRARY_PATH"] = stub_runtime_path(dict(os.environ))
    stop_on_sigterm()
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    sess = session(path, threads)
    inp, out = sess.get_inputs()[0], sess.get_outputs()[0]

    @batch  # type: ignore[misc]
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        return {out.name: sess.run(None, {inp.name: inputs[inp.name]})[0]}

    config = TritonConfig(http_address="127.0.0.1", http_port=port, grpc_port=grpc_port,
                          metrics_port=metrics_port)
    with Triton(config=config) as triton:
        triton.bind(
            model_name=name, infer_func=infer,
            inputs=[Tensor(name=inp.name, dtype=np.float32, shape=tuple(inp.shape[1:]))],
            outputs=[Tensor(name=out.name, dtype=np.float32, shape=tuple(out.shape[1:]))],
            config=ModelConfig(max_batch_size=MAX_BATCH, batcher=DynamicBatcher(
                max_queue_delay_microseconds=int(DELAY_S * 1e6))),
            strict=False,
        )
        triton.serve()


def run_bentoml(name: str, path: str, port: int, threads: int, *_: int) -> None:
    """`bentoml serve` in this process's place (its arbiter stops the worker on SIGTERM)."""
    here = os.path.dirname(os.path.abspath(__file__))
    os.environ.update(PEER_MODEL_NAME=name, PEER_MODEL_PATH=path, PEER_THREADS=str(threads),
                      BENTOML_DO_NOT_TRACK="true")
    bentoml = os.path.join(os.path.dirname(sys.executable), "bentoml")
    os.execv(bentoml, [bentoml, "serve", "peer_bentoml:Onnx", "--working-dir", here,
                       "--host", "127.0.0.1", "--port", str(port)])


def run_rayserve(name: str, path: str, port: int, threads: int, *_: int) -> None:
    import ray
    from fastapi import FastAPI, Request
    from ray import serve

    app, meta = FastAPI(), metadata(name, session(path, 1))

    @serve.deployment(num_replicas=1, max_ongoing_requests=2 * MAX_BATCH)
    @serve.ingress(app)
    class Onnx:
        def __init__(self) -> None:
            self.session = session(path, threads)
            self.input = self.session.get_inputs()[0].name

        @app.get("/v2/health/ready")
        def ready(self) -> dict[str, Any]:
            return {}

        @app.get(f"/v2/models/{name}")
        def model(self) -> dict[str, Any]:
            return meta

        @app.post(f"/v2/models/{name}/infer")
        async def infer(self, request: Request) -> dict[str, Any]:
            tensor = (await request.json())["inputs"][0]
            image = np.asarray(tensor["data"], np.float32).reshape(tensor["shape"][1:])
            row = await self.batched(image)
            return {"model_name": name, "model_version": "1", "outputs": [
                {"name": "logits", "datatype": "FP32", "shape": [1, *row.shape],
                 "data": row.tolist()}]}

        @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=DELAY_S)
        async def batched(self, images: list[np.ndarray]) -> list[np.ndarray]:
            return list(self.session.run(None, {self.input: np.stack(images)})[0])

    stop_on_sigterm()
    ray.init(include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(Onnx.bind(), route_prefix="/")  # type: ignore[attr-defined]
        signal.pause()
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    framework, model_name, model_path, *numbers = sys.argv[1:8]
    runner = {"litserve": run_litserve, "pytriton": run_pytriton, "bentoml": run_bentoml,
              "rayserve": run_rayserve}[framework]
    port, threads, grpc_port, metrics_port = (int(n) for n in numbers)
    runner(model_name, model_path, port, threads, grpc_port, metrics_port)
