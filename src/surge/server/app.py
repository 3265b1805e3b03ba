"""The V2 HTTP front end as a raw ASGI app.

Raw ASGI rather than a framework: on the hot path (POST .../infer) the app reads the body,
decodes it, awaits the engine and writes one response, with no routing tables, middleware or
request objects in between; on a tiny model that per-request overhead is the serving cost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import numpy as np

import surge
from surge.engine import InferenceEngine
from surge.engine.timing import request_timing
from surge.errors import InputError, NotFoundError, SurgeError
from surge.protocol.errors import http_error, retry_after_header
from surge.protocol.metadata import model_config, model_metadata, model_statistics
from surge.protocol.rest import (
    READ,
    WRITE,
    decode_request,
    encode_json,
    encoded_answer,
    error_body,
    path_parts,
    request_header_length,
    request_headers,
    route_methods,
)
from surge.protocol.types import SERVER_NAME, InferRequest, extensions
from surge.repository import check_name, check_version
from surge.server.generate import INFER_ROUTES, GenerateCodec, codec_for
from surge.server.keys import ApiKey, ForbiddenError, KeyRing, Scope, UnauthenticatedError
from surge.server.log_settings import LOGGING_EXTENSION
from surge.server.log_settings import http_answer as logging_answer
from surge.server.model_control import RepositoryControl, load_answered
from surge.server.observe import RequestIds, RequestLog, RequestRecord
from surge.server.openapi import OPENAPI_PATH, openapi_document
from surge.server.outcome import RequestObserver, infer_routed, outcome_of, served_by
from surge.server.peers import http_peer
from surge.server.repository_load import check_unload, control_body, load_parameters
from surge.server.shared_memory import SharedMemoryRegistry
from surge.server.shared_memory_api import CHANGES, ROOTS, http_answer, http_route
from surge.server.trace_settings import TRACE_EXTENSION, checked_model, is_route, settings_of
from surge.server.trace_settings import http_answer as trace_answer

log = logging.getLogger(__name__)

AsgiScope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

DEFAULT_MAX_BODY = 64 * 1024 * 1024
# Repository requests carry a few bytes of JSON ({"ready": true}).
MAX_REPOSITORY_BODY = 64 * 1024
# JSON above this size is decoded in a thread: decoding costs tens of milliseconds per MiB (a
# 59 MiB body held the loop 1.4 s), during which the loop would answer nobody, health included.
OFFLOAD_DECODE_BYTES = 256 * 1024
_JSON = [(b"content-type", b"application/json")]


class HttpError(Exception):
    """An answer other than 200 decided before the engine is involved."""

    def __init__(self, status: int, message: str,
                 headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers


class ClientDisconnectedError(Exception):
    """The client went away before the request was answered."""


CUT_OFF_AT_GRACE = ("server is stopping: the request did not finish within the shutdown grace "
                    "and was abandoned; send it again once the server is back")


class V2App:
    """ASGI app serving the V2 HTTP protocol over an Engine."""

    def __init__(
        self, engine: InferenceEngine, *, api_key: str | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY, keys: KeyRing | None = None,
        request_log: RequestLog | None = None, repository_api: bool = True,
        shared_memory: SharedMemoryRegistry | None = None,
        control: RepositoryControl | None = None,
    ) -> None:
        self.engine = engine
        self.control = control or RepositoryControl(engine)  # loads and unloads
        self.shared_memory = shared_memory  # registered regions (None: --shared-memory none)
        self.max_body_bytes = max_body_bytes
        self._keys = keys if keys is not None else KeyRing([ApiKey(api_key)] if api_key else [])
        self._log = request_log or RequestLog()
        self._ids = RequestIds()
        self.repository_api = repository_api  # load/unload requests allowed (explicit control)
        self.accepting = True  # cleared on drain: new requests get 503
        self._observer = RequestObserver(engine.metrics, served_by(engine), "http")
        # One large decode at a time: each holds about 20 bytes of Python objects per JSON byte.
        self._large_decode = asyncio.Semaphore(1)

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan and websockets: nothing to do
        if not self.accepting:  # draining: no next request on this connection
            send = _closing_connection(send)
        try:
            await self._dispatch(scope, receive, send)
        except ClientDisconnectedError:
            return
        except asyncio.CancelledError:
            if self.accepting:
                raise
            # Draining, and the listener gave up on this request as the grace ended: it was
            # answered 500 with a traceback in the log.
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            await _respond(send, 503, error_body(CUT_OFF_AT_GRACE), _JSON)
        except HttpError as exc:
            await _respond(send, exc.status, error_body(str(exc)), [*_JSON, *exc.headers])
        except SurgeError as exc:
            await _send_error(send, exc)
        except Exception as exc:  # a bug must answer 500, not drop the connection
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            await _send_error(send, exc)

    # -- routing --------------------------------------------------------------------------
    async def _dispatch(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        if scope["method"] == "HEAD":  # answered as GET; the server leaves out the body
            scope = {**scope, "method": "GET"}
        parts = path_parts(scope["path"], scope.get("raw_path"))
        if parts[0] != "v2":
            raise HttpError(404, f"no route for {scope['path']}")
        method = scope["method"]
        rest = parts[1:]
        _check_method(method, scope["path"], rest)
        if rest[:1] == ["health"] and len(rest) == 2 and method == "GET":
            await self._health(rest[1], send)
            return
        self._check_auth(scope, _scope_needed(method, rest))
        if not rest and method == "GET":
            await _respond(send, 200, encode_json(self._server_metadata()))
        elif rest == [OPENAPI_PATH] and method == "GET":
            await _respond(send, 200, encode_json(openapi_document()))
        elif is_route(rest):
            await self._trace(scope, receive, send, rest)
        elif rest[:1] == ["models"]:
            await self._models(scope, receive, send, rest[1:])
        elif rest[:1] == ["repository"] and method == "POST":
            await self._repository(scope, receive, send, rest[1:])
        elif rest == ["logging"]:
            limit = min(self.max_body_bytes, MAX_REPOSITORY_BODY)
            body = await _read_body(scope, receive, limit) if method == "POST" else b""
            await _respond(send, 200, await logging_answer(method, body))
        elif rest[:1] and rest[0] in ROOTS:
            body = await _read_body(scope, receive, min(self.max_body_bytes, MAX_REPOSITORY_BODY))
            answer = http_answer(self.shared_memory, method, rest, body,
                                 http_peer(scope.get("client")))
            await _respond(send, 200, answer, _JSON if answer else [])
        else:
            raise HttpError(404, f"no route for {method} {scope['path']}")

    def _check_auth(self, scope: AsgiScope, needed: Scope) -> None:
        if not self._keys:
            return
        try:
            self._keys.check((v for k, v in scope["headers"] if k == b"authorization"), needed)
        except (UnauthenticatedError, ForbiddenError) as exc:
            self._log.refused("http", _client(scope), f"{scope['method']} {scope['path']}",
                              exc.status)
            raise

    async def _health(self, what: str, send: Send) -> None:
        if what == "live":
            ok = self.engine.live()
        elif what == "ready":
            ok = self.accepting and self.engine.ready()
        else:
            raise HttpError(404, f"no health endpoint {what!r}")
        await _respond(send, 200 if ok else 503, b"", [])

    def _server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": surge.__version__,
                "extensions": [*extensions(self.shared_memory is not None), LOGGING_EXTENSION,
                               TRACE_EXTENSION]}

    async def _trace(self, scope: AsgiScope, receive: Receive, send: Send,
                     rest: list[str]) -> None:
        """Triton's trace extension: the global settings or a model's (trace_settings.py)."""
        model = checked_model(self.engine, rest[1]) if rest[0] == "models" else None
        method, limit = scope["method"], min(self.max_body_bytes, MAX_REPOSITORY_BODY)
        body = await _read_body(scope, receive, limit) if method == "POST" else b""
        await _respond(send, 200, trace_answer(settings_of(self._log), model, method, body))

    async def _models(self, scope: AsgiScope, receive: Receive, send: Send, rest: list[str]) -> None:
        method = scope["method"]
        if rest == ["stats"] and method == "GET":
            await _respond(send, 200, encode_json(self._all_stats()))
            return
        if not rest:
            raise HttpError(404, "no route for /v2/models")
        if method == "POST" and rest[-1] in INFER_ROUTES and rest[1:] in (
                rest[-1:], ["versions", *rest[2:3], rest[-1]]):
            # name and version checked there: a bad one is answered with the request's id
            await self._infer(scope, receive, send, rest[0], rest[2] if len(rest) == 4 else None,
                              codec_for(rest[-1]))
            return
        name = check_name(rest[0])
        version: int | None = None
        action = rest[1:]
        if action[:1] == ["versions"] and len(action) >= 2:
            version = check_version(action[1])
            action = action[2:]
        if method == "GET" and len(action) <= 1:
            await self._model_get(send, name, version, action[0] if action else "")
        else:
            raise HttpError(404, f"no route for {method} {scope['path']}")

    async def _model_get(self, send: Send, name: str, version: int | None, what: str) -> None:
        if what == "ready":
            await self._model_ready(send, name, version)
            return
        handle = self.engine.model(name, version)
        if what == "":
            body = model_metadata(handle)
        elif what == "config":
            body = model_config(handle)
        elif what == "stats":
            stats = self.engine.stats(name, version)
            body = {"model_stats": [model_statistics(name, handle.version, stats)]}
        else:
            raise HttpError(404, f"no model endpoint {what!r}")
        await _respond(send, 200, encode_json(body))

    async def _model_ready(self, send: Send, name: str, version: int | None) -> None:
        """200 when loaded and ready; 503 for a model of the repository that is not, with its
        state and reason (UNLOADED or EVICTED: loadable, its next request loads it); 404 else."""
        if self.engine.model_ready(name, version):
            await _respond(send, 200, b"", [])
            return
        rows = [e for e in self.engine.index() if e["name"] == name]
        if not rows:
            raise NotFoundError(f"model {name!r} is not in the repository")
        waiting = [r for r in rows if r["state"] != "READY"]
        if not waiting:  # ready, but not at the version asked: the 404 naming what is served
            self.engine.model(name, version)
        row = waiting[0] if waiting else rows[-1]
        body = {"error": f"model {name!r} is not ready: {row['state']}", "state": row["state"],
                "reason": row["reason"]}
        await _respond(send, 503, encode_json(body))

    def _all_stats(self) -> dict[str, Any]:
        entries = []
        for item in self.engine.index():
            if item.get("state") != "READY":
                continue
            version = int(item["version"]) if str(item.get("version") or "").isdigit() else None
            handle = self.engine.model(item["name"], version)
            stats = self.engine.stats(item["name"], handle.version)
            entries.append(model_statistics(item["name"], handle.version, stats))
        return {"model_stats": entries}

    async def _repository(
        self, scope: AsgiScope, receive: Receive, send: Send, rest: list[str]
    ) -> None:
        body = await _read_body(scope, receive, min(self.max_body_bytes, MAX_REPOSITORY_BODY))
        if rest == ["index"]:
            ready_only = control_body(body).get("ready", False)
            if not isinstance(ready_only, bool):
                raise InputError(f"'ready' must be true or false, got {ready_only!r}")
            index = [dict(e) for e in self.engine.index()]
            if ready_only:
                index = [e for e in index if e.get("state") == "READY"]
            await _respond(send, 200, encode_json(index))
            return
        if len(rest) == 3 and rest[0] == "models" and rest[2] in ("load", "unload"):
            name = check_name(rest[1])
            self._check_model_control(rest[2])
            if rest[2] == "load":
                await load_answered(self.control, name, load_parameters(control_body(body)))
            else:
                check_unload(control_body(body))
                await self.control.unload(name)
            await _respond(send, 200, b"", [])
            return
        raise HttpError(404, f"no route for POST {scope['path']}")

    # -- inference: the hot path ----------------------------------------------------------
    async def _infer(
        self, scope: AsgiScope, receive: Receive, send: Send, name: str, version: str | None,
        codec: GenerateCodec | None = None,
    ) -> None:
        headers = request_headers(scope["headers"])
        request_id = self._ids.accept(headers.get(b"x-request-id"))
        record = self._log.begin("http", name, request_id, _client(scope),
                                 _text(headers.get(b"traceparent")), time.monotonic(),
                                 tracestate=_text(headers.get(b"tracestate")))
        echo = (b"x-request-id", request_id.encode())
        try:
            model = check_name(name)
            payload, answer_headers = await self._infer_once(
                scope, receive, model, None if version is None else check_version(version),
                headers, record, codec)
        except ClientDisconnectedError:
            self._log.finish(record, 499, failed=True)  # nginx's "client closed request"
            raise
        except Exception as exc:
            if not isinstance(exc, SurgeError | HttpError):
                log.exception("unhandled error on POST %s", scope["path"])
            await _send_error(send, exc, echo)
            self._log.finish(record, _status(exc), failed=True)
            return
        await _respond(send, 200, payload, [*answer_headers, echo])
        self._log.finish(record, 200, failed=False)

    async def _infer_once(
        self, scope: AsgiScope, receive: Receive, name: str, version: int | None,
        headers: dict[bytes, bytes], record: RequestRecord | None, codec: GenerateCodec | None,
    ) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        start = time.perf_counter()
        if not self.accepting:
            raise HttpError(503, "server is shutting down")
        body = await _read_body(scope, receive, self.max_body_bytes)
        token = request_timing.set(record.timing) if record is not None else None
        try:
            decoder = None if codec is None else codec.decoder(self.engine, name, version)
            request = await self._decode(body, request_header_length(headers, len(body)), decoder)
            if record is not None:
                record.decoded = time.perf_counter()
            outputs, answered, served = await infer_routed(
                self.engine, name, version, request, record,
                lambda work: _until_disconnect(receive, work))
            answer = (encoded_answer if codec is None else codec.encode)(
                name, answered, request, outputs, served)
        except ClientDisconnectedError:
            self._observe(name, "cancelled", start)
            raise
        except Exception as exc:
            self._observe(name, outcome_of(exc), start)
            raise
        finally:
            if token is not None:
                request_timing.reset(token)
        self._observe(name, "success", start)
        return answer

    def _check_model_control(self, action: str) -> None:
        if not self.repository_api:
            raise HttpError(400, f"model {action} requests are refused: the server follows its "
                            "repository (--model-control poll)")

    async def _decode(self, body: bytes, header_length: int | None,
                      decoder: Callable[[bytes], InferRequest] | None) -> InferRequest:
        """`body` decoded by the V2 codec, or by `decoder` (the generate extension's)."""
        json_bytes = len(body) if header_length is None or decoder else header_length
        decode = decoder or partial(decode_request, header_length=header_length,
                                    regions=self.shared_memory)
        if json_bytes < OFFLOAD_DECODE_BYTES:
            return decode(body)
        async with self._large_decode:
            return await asyncio.to_thread(decode, body)

    def _observe(self, name: str, outcome: str, start: float) -> None:
        self._observer.observe(name, outcome, time.perf_counter() - start)


async def _until_disconnect(receive: Receive, work: Awaitable[dict[str, np.ndarray]]) -> Any:
    """Await `work`; if the client disconnects first, cancel it (which dequeues the request).

    `work` runs in this task (no task per request for it); only the disconnect watch needs
    one, because ASGI reports a disconnect only through `receive()`.
    """
    task = asyncio.current_task()
    assert task is not None
    watcher = asyncio.ensure_future(receive())
    disconnected = False

    def on_message(done: asyncio.Future[dict[str, Any]]) -> None:
        nonlocal disconnected
        if not done.cancelled() and done.result().get("type") == "http.disconnect":
            disconnected = True
            task.cancel()

    watcher.add_done_callback(on_message)
    try:
        return await work
    except asyncio.CancelledError:
        if disconnected:
            task.uncancel()
            raise ClientDisconnectedError from None
        raise
    finally:
        watcher.remove_done_callback(on_message)
        watcher.cancel()


def _check_method(method: str, path: str, rest: list[str]) -> None:
    """A 405 with `Allow` for a route asked with a method it does not answer."""
    if rest == [OPENAPI_PATH]:
        allowed: tuple[str, ...] | None = READ
    elif is_route(rest):
        allowed = (*READ, *WRITE)
    elif rest[:1] and rest[0] in ROOTS:
        allowed = READ if http_route(rest)[2] == "status" else WRITE
    else:
        allowed = route_methods(rest)
    if allowed is not None and method not in allowed:
        raise HttpError(405, f"method {method} is not allowed on {path}: use "
                        f"{' or '.join(allowed)}", ((b"allow", ", ".join(allowed).encode()),))


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


def _client(scope: AsgiScope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else ""


def _scope_needed(method: str, rest: list[str]) -> Scope:
    """The key scope a request needs: admin to change the repository, infer to infer."""
    if rest[:1] == ["repository"] and rest[-1:] in (["load"], ["unload"]):
        return Scope.ADMIN
    if (rest == ["logging"] or is_route(rest)) and method == "POST":
        return Scope.ADMIN  # a change of the server's log or of what it traces
    if rest[:1] and rest[0] in ROOTS and rest[-1] in CHANGES:
        return Scope.ADMIN  # a registration makes the server map memory a client names
    if rest[-1:] and rest[-1] in INFER_ROUTES and method == "POST":
        return Scope.INFER
    return Scope.READ


def _status(error: Exception) -> int:
    return error.status if isinstance(error, HttpError) else http_error(error)[0]


async def _read_body(scope: AsgiScope, receive: Receive, limit: int) -> bytes:
    for key, value in scope["headers"]:
        if key == b"content-length" and len(value) <= 18 and value.isdigit() and int(value) > limit:
            raise HttpError(413, f"request body of {int(value)} bytes exceeds the limit {limit}")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnectedError
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise HttpError(413, f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] = _JSON
) -> None:
    # A length rather than uvicorn's default, chunked framing, which HTTP/1.0 clients cannot read
    headers = [*headers, (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _closing_connection(send: Send) -> Send:
    """`send` with `Connection: close` on the response (uvicorn then closes the connection
    after it), so that a client sends its next request elsewhere instead of racing the
    close of its idle keep-alive connection."""

    async def closing(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []),
                                              (b"connection", b"close")]}
        await send(message)

    return closing


async def _send_error(send: Send, error: Exception, *extra: tuple[bytes, bytes]) -> None:
    if isinstance(error, HttpError):
        status, message = error.status, str(error)
    else:
        status, message = http_error(error)
    headers = [*_JSON, *extra]
    retry_after = retry_after_header(error)
    if retry_after is not None:
        headers.append((b"retry-after", retry_after.encode()))
    await _respond(send, status, error_body(message), headers)


__all__ = ["DEFAULT_MAX_BODY", "V2App"]
