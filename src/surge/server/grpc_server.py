"""The V2 gRPC front end (`inference.GRPCInferenceService`) on grpc.aio."""
# ruff: noqa: N802  (method names are the gRPC service's RPC names)

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NamedTuple, TypeVar

import grpc
from google.protobuf import json_format

import surge
from surge.engine import InferenceEngine
from surge.engine.timing import request_timing
from surge.errors import NotFoundError, ServingError, SurgeError
from surge.protocol.errors import grpc_code, http_error
from surge.protocol.grpc_codec import decode_infer_request, encode_infer_response
from surge.protocol.grpc_gen import grpc_service_pb2 as pb
from surge.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc
from surge.protocol.metadata import model_config, model_metadata, model_statistics
from surge.protocol.types import SERVER_NAME, extensions
from surge.repository import check_name, check_version
from surge.server import log_settings, trace_settings
from surge.server import shared_memory_api as shm
from surge.server.grpc_calls import past_deadline
from surge.server.keys import ApiKey, ForbiddenError, KeyRing, Scope, UnauthenticatedError
from surge.server.limits import ConnectionLimits
from surge.server.log_settings import LOGGING_EXTENSION
from surge.server.model_control import RepositoryControl, load_answered
from surge.server.observe import REQUEST_ID_HEADER, RequestIds, RequestLog, RequestRecord
from surge.server.outcome import RequestObserver, infer_routed, outcome_of, served_by
from surge.server.repository_load import check_unload_parameters, config_override
from surge.server.shared_memory import SharedMemoryRegistry

log = logging.getLogger(__name__)

T = TypeVar("T")


class ShuttingDownError(ServingError):
    """A new request arrived while the server drains (HTTP 503, gRPC UNAVAILABLE)."""

    status = 503


MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def _version(text: str) -> int | None:
    return check_version(text) if text else None


_BY_STATUS = {401: grpc.StatusCode.UNAUTHENTICATED, 403: grpc.StatusCode.PERMISSION_DENIED}


def _code(error: Exception) -> grpc.StatusCode:
    return _BY_STATUS.get(getattr(error, "status", 0)) or grpc_code(error)


async def _abort(context: grpc.aio.ServicerContext, error: Exception, request_id: str = "") -> None:
    _, message = http_error(error)
    trailer = ((REQUEST_ID_HEADER, request_id),) if request_id else ()
    await context.abort(_code(error), message, trailer)


def _guarded(
    method: Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[T]],
) -> Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[T]]:
    """Turn Surge errors into gRPC status codes; unexpected ones into INTERNAL."""

    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> T:
        try:
            if method.__name__ not in _OPEN_METHODS:
                self.authorize(context, _SCOPES.get(method.__name__, Scope.READ),
                               method.__name__)
            return await method(self, request, context)
        except SurgeError as exc:
            await _abort(context, exc)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            log.exception("unhandled error in %s", method.__name__)
            await _abort(context, exc)
        raise AssertionError("unreachable: context.abort raises")

    wrapper.__name__ = method.__name__
    return wrapper


_OPEN_METHODS = frozenset({"ServerLive", "ServerReady"})  # health stays open, as over HTTP
_SCOPES = {"ModelInfer": Scope.INFER, "RepositoryModelLoad": Scope.ADMIN,
           "RepositoryModelUnload": Scope.ADMIN,
           **{f"{kind}SharedMemory{change}": Scope.ADMIN for kind in ("System", "Cuda")
              for change in ("Register", "Unregister")}}  # every other RPC needs Scope.READ


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Serves the V2 gRPC protocol over an Engine."""

    def __init__(self, engine: InferenceEngine, api_key: str | None = None, *,
                 keys: KeyRing | None = None, request_log: RequestLog | None = None,
                 repository_api: bool = True,
                 shared_memory: SharedMemoryRegistry | None = None,
                 control: RepositoryControl | None = None) -> None:
        self.engine = engine
        self.control = control or RepositoryControl(engine)  # loads and unloads
        self.shared_memory = shared_memory  # registered regions (None: --shared-memory none)
        self.accepting = True
        self._keys = keys if keys is not None else KeyRing([ApiKey(api_key)] if api_key else [])
        self._log = request_log or RequestLog()
        self._ids = RequestIds()
        self.repository_api = repository_api  # load/unload requests allowed (explicit control)
        self._observer = RequestObserver(engine.metrics, served_by(engine), "grpc")

    def authorize(self, context: grpc.aio.ServicerContext, needed: Scope = Scope.READ,
                  method: str = "") -> None:
        """Require `authorization: Bearer <key>` metadata granting `needed` when keys are set;
        a refusal is written to the access log."""
        if not self._keys:
            return
        values = (_as_bytes(value) for key, value in context.invocation_metadata() or ()
                  if key == "authorization")
        try:
            self._keys.check(values, needed, header="authorization")
        except (UnauthenticatedError, ForbiddenError) as exc:
            self._log.refused("grpc", context.peer() or "", method, _code(exc).name)
            raise

    @_guarded
    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=self.engine.live())

    @_guarded
    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.accepting and self.engine.ready())

    @_guarded
    async def ModelReady(self, request: Any, context: Any) -> Any:
        name, version = check_name(request.name), _version(request.version)
        ready = self.engine.model_ready(name, version)
        if not ready and name not in {e["name"] for e in self.engine.index()}:
            raise NotFoundError(f"model {name!r} is not in the repository")
        return pb.ModelReadyResponse(ready=ready)

    @_guarded
    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=surge.__version__,
            extensions=[*extensions(self.shared_memory is not None), LOGGING_EXTENSION,
                        trace_settings.TRACE_EXTENSION])

    @_guarded
    async def LogSettings(self, request: Any, context: Any) -> Any:
        if request.settings:  # a change of the server's log; reading it needs Scope.READ
            self.authorize(context, Scope.ADMIN, "LogSettings")
        return await log_settings.grpc_answer(request)

    @_guarded
    async def TraceSetting(self, request: Any, context: Any) -> Any:
        if request.settings:  # a change of what the server traces; reading needs Scope.READ
            self.authorize(context, Scope.ADMIN, "TraceSetting")
        return trace_settings.grpc_answer(trace_settings.settings_of(self._log), self.engine,
                                          request)

    @_guarded
    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        handle = self.engine.model(check_name(request.name), _version(request.version))
        return json_format.ParseDict(model_metadata(handle), pb.ModelMetadataResponse())

    @_guarded
    async def ModelConfig(self, request: Any, context: Any) -> Any:
        handle = self.engine.model(check_name(request.name), _version(request.version))
        config = json_format.ParseDict(model_config(handle), pb.ModelConfig())
        return pb.ModelConfigResponse(config=config)

    @_guarded
    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        response = pb.ModelStatisticsResponse()
        for name, version in self._stat_targets(request):
            entry = model_statistics(name, version, self.engine.stats(name, version))
            # `latency` (the latency model) has no field in the V2 message: HTTP only.
            json_format.ParseDict(entry, response.model_stats.add(), ignore_unknown_fields=True)
        return response

    def _stat_targets(self, request: Any) -> list[tuple[str, int]]:
        if request.name:
            handle = self.engine.model(check_name(request.name), _version(request.version))
            return [(handle.name, handle.version)]
        # Each ready row's own version (the newest was listed once per version served).
        ready = [e for e in self.engine.index() if e.get("state") == "READY"]
        return [(e["name"], self.engine.model(e["name"], _row_version(e)).version)
                for e in ready]

    @_guarded
    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        response = pb.RepositoryIndexResponse()
        for entry in self.engine.index():
            if request.ready and entry.get("state") != "READY":
                continue
            response.models.add(
                name=entry["name"], version=str(entry.get("version") or ""),
                state=str(entry.get("state", "")), reason=str(entry.get("reason") or ""),
            )
        return response

    @_guarded
    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        name = check_name(request.model_name)
        self._check_model_control("load")
        config = config_override({key: _parameter(value)
                                  for key, value in request.parameters.items()})
        await load_answered(self.control, name, config)
        return pb.RepositoryModelLoadResponse()

    @_guarded
    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        name = check_name(request.model_name)
        self._check_model_control("unload")
        check_unload_parameters({key: _parameter(value)
                                 for key, value in request.parameters.items()})
        await self.control.unload(name)
        return pb.RepositoryModelUnloadResponse()

    # -- the shared-memory extension (surge/server/shared_memory_api.py) ------------------
    @_guarded
    async def SystemSharedMemoryStatus(self, request: Any, context: Any) -> Any:
        return shm.system_status(self.shared_memory, request)

    @_guarded
    async def SystemSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        return shm.system_register(self.shared_memory, request, context.peer())

    @_guarded
    async def SystemSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
        return shm.system_unregister(self.shared_memory, request)

    @_guarded
    async def CudaSharedMemoryStatus(self, request: Any, context: Any) -> Any:
        return shm.cuda_status(self.shared_memory, request)

    @_guarded
    async def CudaSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        return shm.cuda_register(self.shared_memory, request)

    @_guarded
    async def CudaSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
        return shm.cuda_unregister(self.shared_memory, request)

    def _check_model_control(self, action: str) -> None:
        if not self.repository_api:
            raise LoadRefusedError(f"model {action} requests are refused: the server follows "
                                   "its repository (--model-control poll)")

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        # Not @_guarded: the hot path counts outcomes itself. A client cancel cancels this
        # coroutine, and with it the engine's await, which removes the request from the queue.
        # Checked before anything is counted, as over HTTP: a request without the key, or with a
        # name that is not a model name (`_logged_infer`), leaves no trace in the per-model
        # metrics; the second still has its request id and its access-log line.
        await self._admit(context)
        call = self._call_ids(context)
        record = self._log.begin("grpc", request.model_name, call.request_id,
                                 context.peer() or "", call.traceparent, time.monotonic(),
                                 tracestate=call.tracestate)
        try:
            response = await self._logged_infer(request, record, context)
        except SurgeError as exc:
            await _abort(context, exc, call.request_id)
            raise AssertionError("unreachable") from exc
        context.set_trailing_metadata(((REQUEST_ID_HEADER, call.request_id),))
        return response

    def _call_ids(self, context: Any) -> _CallIds:
        metadata = _metadata(context, (REQUEST_ID_HEADER, "traceparent", "tracestate"))
        return _CallIds(self._ids.accept(metadata.get(REQUEST_ID_HEADER)),
                        _str(metadata.get("traceparent")), _str(metadata.get("tracestate")))

    async def ModelStreamInfer(self, requests: AsyncIterator[Any],
                               context: Any) -> AsyncIterator[Any]:
        """The stream's requests, answered concurrently, each answer sent as it completes; a
        request that fails gets its error in the stream, which goes on (as Triton does). The
        stream's metadata is read once: its requests share its request id (each is told apart
        by its own `id` field) and are children of its traceparent."""
        try:
            self.authorize(context, Scope.INFER, "ModelStreamInfer")
        except SurgeError as exc:
            await _abort(context, exc)
        call = self._call_ids(context)
        context.set_trailing_metadata(((REQUEST_ID_HEADER, call.request_id),))
        async for answer in answered_as_completed(
                requests, lambda request: self._stream_answer(request, context, call)):
            yield answer

    async def _stream_answer(self, request: Any, context: Any, call: _CallIds) -> Any:
        record = self._log.begin("grpc", request.model_name, call.request_id,
                                 context.peer() or "", call.traceparent, time.monotonic(),
                                 tracestate=call.tracestate, item_id=request.id)
        try:
            response = await self._logged_infer(request, record, context)
        except SurgeError as exc:
            return _stream_error(request, exc)
        return pb.ModelStreamInferResponse(infer_response=response)

    async def _logged_infer(self, request: Any, record: RequestRecord | None,
                            context: Any) -> Any:
        """`_infer` of the model the request names, with the request log's line finished by
        how it ended (a name or version that is not one included)."""
        try:
            name, version = check_name(request.model_name), _version(request.model_version)
            response = await self._infer(name, version, request, record, context)
        except asyncio.CancelledError:
            expired = past_deadline(context)
            self._log.finish(record, "DEADLINE_EXCEEDED" if expired else "CANCELLED",
                             failed=True)
            raise
        except SurgeError as exc:
            self._log.finish(record, _code(exc).name, failed=True)
            raise
        self._log.finish(record, "OK", failed=False)
        return response

    async def _infer(self, name: str, version: int | None, request: Any,
                     record: RequestRecord | None, context: Any) -> Any:
        start = time.perf_counter()
        token = request_timing.set(record.timing) if record is not None else None
        try:
            if not self.accepting:
                raise ShuttingDownError("server is shutting down")
            decoded = decode_infer_request(request, self.shared_memory)
            if record is not None:
                record.decoded = time.perf_counter()
            outputs, answered, served = await infer_routed(
                self.engine, name, version, decoded, record)
            response = encode_infer_response(
                name, answered, decoded, outputs, {"variant": served} if served else None)
        except asyncio.CancelledError:
            outcome = "expired" if past_deadline(context) else "cancelled"
            self._observer.observe(name, outcome, time.perf_counter() - start)
            raise
        except SurgeError as exc:
            self._observer.observe(name, outcome_of(exc), time.perf_counter() - start)
            raise
        finally:
            if token is not None:
                request_timing.reset(token)
        self._observer.observe(name, "success", time.perf_counter() - start)
        return response

    async def _admit(self, context: Any) -> None:
        """Abort a ModelInfer call without the key, as HTTP refuses it."""
        try:
            self.authorize(context, Scope.INFER, "ModelInfer")
        except SurgeError as exc:
            await _abort(context, exc)
            raise AssertionError("unreachable") from exc


# Requests of one stream computed at once; the stream's next requests wait to be read.
STREAM_IN_FLIGHT = 256


async def answered_as_completed(
    requests: AsyncIterator[Any], answer: Callable[[Any], Awaitable[Any]],
    limit: int = STREAM_IN_FLIGHT,
) -> AsyncIterator[Any]:
    """`answer(request)` for every request, up to `limit` at once, yielded as each completes.
    A request counts against `limit` until its answer is taken from here, so a caller that
    takes answers slowly (its client does not read them) stops the reading of requests. A
    request that cannot be read (a malformed message) ends the call with its error after the
    requests read before it are answered; leaving early (the client cancelled) cancels the
    answers in progress."""
    answers: asyncio.Queue[Any] = asyncio.Queue()
    slots = asyncio.Semaphore(limit)
    running: set[asyncio.Task[None]] = set()

    async def one(request: Any) -> None:
        try:
            answers.put_nowait(await answer(request))
        except Exception as exc:  # noqa: BLE001 - not an answer: it fails the call below
            answers.put_nowait(_Failed(exc))

    async def read_all() -> None:
        try:
            async for request in requests:
                await slots.acquire()
                task = asyncio.create_task(one(request))
                running.add(task)
                task.add_done_callback(running.discard)
        finally:
            if running:
                await asyncio.wait(running)
            answers.put_nowait(_END_OF_STREAM)

    reader = asyncio.create_task(read_all())
    try:
        while (item := await answers.get()) is not _END_OF_STREAM:
            slots.release()
            if isinstance(item, _Failed):
                raise item.error
            yield item
        await reader  # a failed read of the requests fails the call
    finally:
        for task in (reader, *running):
            task.cancel()


_END_OF_STREAM = object()


class _Failed(NamedTuple):
    error: Exception  # what answering one request raised


def _stream_error(request: Any, error: Exception) -> Any:
    _, message = http_error(error)
    return pb.ModelStreamInferResponse(error_message=message, infer_response=pb.ModelInferResponse(
        model_name=request.model_name, model_version=request.model_version, id=request.id))


class LoadRefusedError(ServingError):
    """A load or unload request the model control mode does not allow (400)."""

    status = 400


class _CallIds(NamedTuple):
    """What a call's metadata says of it: its request id (the client's or one made) and the
    caller's W3C trace context."""

    request_id: str
    traceparent: str | None
    tracestate: str | None


def _metadata(context: Any, keys: tuple[str, ...]) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for key, value in context.invocation_metadata() or ():
        if key in keys:
            # tracestate may come as several entries of one list (W3C); else the last counts
            joined = key == "tracestate" and key in found
            found[key] = found[key] + b"," + _as_bytes(value) if joined else _as_bytes(value)
    return found


def _str(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


def _parameter(value: Any) -> Any:
    """The value of a ModelRepositoryParameter (bool, int, string or bytes)."""
    kind = value.WhichOneof("parameter_choice")
    return getattr(value, kind) if kind else None


def _row_version(row: dict[str, str]) -> int | None:
    """The version of a repository index row; None where it names none."""
    version = str(row.get("version") or "")
    return int(version) if version.isdigit() else None


def _as_bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


async def start_grpc_server(
    engine: InferenceEngine, host: str, port: int, api_key: str | None = None, *,
    limits: ConnectionLimits | None = None, max_message_bytes: int = MAX_MESSAGE_BYTES,
    reuse_port: bool = False, servicer: InferenceServicer | None = None,
    credentials: grpc.ServerCredentials | None = None,
) -> tuple[grpc.aio.Server, InferenceServicer, int]:
    """Start a grpc.aio server on host:port (0 = any free port); returns (server, servicer, port).
    With `credentials` the port speaks TLS only."""
    limits = limits or ConnectionLimits()
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.so_reuseport", int(reuse_port)),  # only when front ends share the port
        *limits.grpc_options(),
    ])
    servicer = servicer or InferenceServicer(engine, api_key)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    address = f"{host}:{port}"
    bound = (server.add_secure_port(address, credentials) if credentials is not None
             else server.add_insecure_port(address))
    if bound == 0:
        raise SurgeError(f"cannot bind gRPC to {host}:{port}")
    await server.start()
    return server, servicer, bound


__all__ = ["InferenceServicer", "start_grpc_server"]
