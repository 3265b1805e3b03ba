"""The gRPC server alternatives that benchmarks/frontend.py measures against binary HTTP.

`python benchmarks/grpc_variants.py VARIANT REPO --http-port P --grpc-port P --metrics-port P`
serves REPO as `surge serve` does (HTTP and metrics unchanged) with the gRPC front end started
by VARIANT:

- h2: the shipped server (Surge's HTTP/2 on the event loop, `surge.server.grpc_h2`);
- aio: grpc.aio as `surge serve --grpc-server grpcio` serves it
  (`surge.server.grpc_server.start_grpc_server`);
- aio-tuned: grpc.aio with throughput-oriented channel arguments (optimization target
  throughput, no BDP probing, 1,000 concurrent streams, one completion queue poller);
- aio-lean: grpc.aio whose ModelInfer skips request ids, the request log and the trailing
  metadata (what Surge's own handler costs beyond decode, infer and encode);
- sync-pool: the synchronous grpc server, a thread pool of 4 handlers that decode and encode
  in their threads and hand each request to the event loop with run_coroutine_threadsafe;
- grpclib: grpclib 0.4 (pure-Python gRPC on the `h2` HTTP/2 stack) on the server's event loop
  (not a dependency of Surge: install it beside the benchmark, e.g. `pip install --target DIR
  grpclib` and PYTHONPATH=DIR).
"""

from __future__ import annotations

import argparse
import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import uvloop
from google.protobuf import json_format

from surge.engine import Engine
from surge.protocol.grpc_codec import decode_infer_request, encode_infer_response
from surge.protocol.grpc_gen import grpc_service_pb2 as pb
from surge.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc
from surge.protocol.metadata import model_metadata
from surge.repository import Repository
from surge.server import process
from surge.server.grpc_listener import start_grpc_h2_server
from surge.server.grpc_server import MAX_MESSAGE_BYTES, InferenceServicer, start_grpc_server

TUNED = [("grpc.optimization_target", "throughput"), ("grpc.http2.bdp_probe", 0),
         ("grpc.max_concurrent_streams", 1000), ("grpc.so_reuseport", 0)]


async def _infer(engine: Any, request: Any) -> Any:
    decoded = decode_infer_request(request)
    outputs = await engine.infer(request.model_name, None, decoded.inputs,
                                 outputs=decoded.output_names)
    handle = engine.model(request.model_name, None)
    return encode_infer_response(request.model_name, handle.version, decoded, outputs)


class LeanServicer(InferenceServicer):
    async def ModelInfer(self, request: Any, context: Any) -> Any:  # noqa: N802
        return await _infer(self.engine, request)


class SyncServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, engine: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.engine, self.loop = engine, loop

    def ModelMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        handle = self.engine.model(request.name, None)
        return json_format.ParseDict(model_metadata(handle), pb.ModelMetadataResponse())

    def ModelInfer(self, request: Any, context: Any) -> Any:  # noqa: N802
        decoded = decode_infer_request(request)
        future = asyncio.run_coroutine_threadsafe(self.engine.infer(
            request.model_name, None, decoded.inputs, outputs=decoded.output_names), self.loop)
        outputs = future.result()
        return encode_infer_response(request.model_name, 1, decoded, outputs)


def _aio(options: list[tuple[str, Any]], servicer_class: type) -> Any:
    async def start(engine: Any, host: str, port: int, **_: Any) -> Any:
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                                          *options])
        servicer = servicer_class(engine)
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
        bound = server.add_insecure_port(f"{host}:{port}")
        await server.start()
        return server, servicer, bound

    return start


class _SyncServer:
    """grpc.server behind the aio server's stop() signature."""

    def __init__(self, server: Any) -> None:
        self.server = server

    async def stop(self, grace: float) -> None:
        await asyncio.to_thread(lambda: self.server.stop(grace).wait())


async def _start_sync(engine: Any, host: str, port: int, **_: Any) -> Any:
    server = grpc.server(ThreadPoolExecutor(max_workers=4), options=[
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)])
    servicer = SyncServicer(engine, asyncio.get_running_loop())
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    server.start()
    return _SyncServer(server), InferenceServicer(engine), bound


class _GrpclibService:
    """ModelInfer and ModelMetadata on grpclib (pure-Python HTTP/2 on asyncio, `h2`)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    async def infer(self, stream: Any) -> None:
        await stream.send_message(await _infer(self.engine, await stream.recv_message()))

    async def metadata(self, stream: Any) -> None:
        request = await stream.recv_message()
        handle = self.engine.model(request.name, None)
        await stream.send_message(json_format.ParseDict(model_metadata(handle),
                                                        pb.ModelMetadataResponse()))

    def __mapping__(self) -> dict[str, Any]:
        from grpclib.const import Cardinality, Handler

        prefix = "/inference.GRPCInferenceService/"
        return {
            prefix + "ModelInfer": Handler(self.infer, Cardinality.UNARY_UNARY,
                                           pb.ModelInferRequest, pb.ModelInferResponse),
            prefix + "ModelMetadata": Handler(self.metadata, Cardinality.UNARY_UNARY,
                                              pb.ModelMetadataRequest, pb.ModelMetadataResponse),
        }


class _GrpclibServer:
    def __init__(self, server: Any) -> None:
        self.server = server

    async def stop(self, grace: float) -> None:
        self.server.close()
        await self.server.wait_closed()


async def _start_grpclib(engine: Any, host: str, port: int, **_: Any) -> Any:
    from grpclib.server import Server

    server = Server([_GrpclibService(engine)])
    await server.start(host, port)
    return _GrpclibServer(server), InferenceServicer(engine), port


VARIANTS = {"aio": start_grpc_server, "aio-tuned": _aio(TUNED, InferenceServicer),
            "aio-lean": _aio([], LeanServicer), "sync-pool": _start_sync,
            "grpclib": _start_grpclib, "h2": start_grpc_h2_server}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", choices=sorted(VARIANTS))
    parser.add_argument("repo")
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    args = parser.parse_args()
    stack = "surge" if args.variant == "h2" else "grpcio"
    if stack == "grpcio":
        process.start_grpc_server = VARIANTS[args.variant]  # the grpcio stack's start, replaced
    options = process.ServeOptions(http_port=args.http_port, grpc_port=args.grpc_port,
                                   metrics_port=args.metrics_port, grpc_server=stack)
    uvloop.run(process.serve_until_signal(Engine(Repository(args.repo)), options))


if __name__ == "__main__":
    main()
