"""A direct tensor channel from the front end to each actor: one TCP stream per instance.

Ray keeps placement, health and lifecycle; batches travel here, because Ray's actor calls
measured 2.7 ms per small batch and 549 ms per 8 MiB batch on one machine (object store both
ways, docs/scale-out.md), against a target of 1 ms. The actor starts a threaded server on its
node and tells the front end host:port and nothing else; the front end opens one asyncio
stream to it and authenticates with a secret it chose (sent to the actor over Ray, which is
itself authenticated), so no one else on the network can feed the instance.

A frame is a fixed prefix, a small JSON header (batch id, where each tensor lies, timings, an
error) and one contiguous body laid out by the worker transport's `pack`: user tensors are
never pickled, and the receiver views them in place. Replies come in the order of the
batches (the actor computes one at a time), matched by batch id all the same.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from surge.cluster.actor import BatchReply, TensorBatch
from surge.workers.messages import TensorMeta

log = logging.getLogger(__name__)

PREFIX = struct.Struct("!IQ")  # header bytes, body bytes
SECRET_BYTES = 32
JOIN_BELOW = 64 * 1024  # smaller bodies go out joined with their header: one send
READ_LIMIT = 16 << 20  # the stream buffer before the reader pauses the socket

Compute = Callable[[int, TensorBatch], BatchReply]


class ChannelClosedError(ConnectionError):
    """The stream to an instance ended: the instance is taken as lost."""


# -- frames --------------------------------------------------------------------------------
def encode(batch_id: int, batch: TensorBatch | None, error: str = "",
           ns: tuple[int, int, int] = (0, 0, 0)) -> list[Any]:
    """The frame of one batch or reply: [prefix + header, body] (body omitted when empty)."""
    metas = [[m.name, m.dtype, list(m.shape), m.offset, m.nbytes]
             for m in (batch.metas if batch is not None else ())]
    header = json.dumps({"id": batch_id, "metas": metas, "error": error, "ns": ns},
                        separators=(",", ":")).encode()
    body = batch.buffer if batch is not None else np.empty(0, np.uint8)
    head = PREFIX.pack(len(header), body.nbytes) + header
    if body.nbytes < JOIN_BELOW:
        return [head + body.tobytes()]
    return [head, body.data]


def decode(header: bytes, body: np.ndarray) -> BatchReply:
    """A frame back into a batch id, its tensors (viewing `body`), timings and error."""
    fields = json.loads(header)
    metas = tuple(TensorMeta(n, d, tuple(s), o, b) for n, d, s, o, b in fields["metas"])
    tensors = TensorBatch(metas, body) if metas else None
    input_ns, infer_ns, output_ns = fields["ns"]
    return BatchReply(fields["id"], tensors, input_ns, infer_ns, output_ns, fields["error"])


# -- the actor's end -------------------------------------------------------------------------
class ChannelServer:
    """Serves batches to `compute` on a node, one connection per front end, in a thread."""

    def __init__(self, compute: Compute, secret: bytes, host: str) -> None:
        self._compute, self._secret = compute, secret
        self._lock = threading.Lock()  # the instance computes one batch at a time
        self._listener = socket.create_server((host, 0))
        self.address = (host, self._listener.getsockname()[1])
        threading.Thread(target=self._accept, name="surge-channel", daemon=True).start()

    def _accept(self) -> None:
        while True:
            conn, _ = self._listener.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                if not hmac.compare_digest(_recv_exactly(conn, SECRET_BYTES), self._secret):
                    log.warning("channel: a connection without the front end's secret refused")
                    return
                while True:
                    self._one(conn)
            except ConnectionError:
                return  # the front end went away (or was stopped): nothing to answer

    def _one(self, conn: socket.socket) -> None:
        header_len, body_len = PREFIX.unpack(_recv_exactly(conn, PREFIX.size))
        header = _recv_exactly(conn, header_len)
        body = np.empty(body_len, np.uint8)
        _recv_into(conn, body.data)
        batch = decode(header, body)
        assert batch.outputs is not None, "a batch brings its inputs"
        with self._lock:
            reply = self._compute(batch.batch_id, batch.outputs)
        ns = (reply.input_ns, reply.infer_ns, reply.output_ns)
        for part in encode(reply.batch_id, reply.outputs, reply.error, ns):
            conn.sendall(part)


def _recv_exactly(conn: socket.socket, size: int) -> bytes:
    buffer = bytearray(size)
    _recv_into(conn, memoryview(buffer))
    return bytes(buffer)


def _recv_into(conn: socket.socket, view: memoryview) -> None:
    while view.nbytes:
        got = conn.recv_into(view)
        if not got:
            raise ConnectionError("channel closed")
        view = view[got:]


# -- the front end's end ---------------------------------------------------------------------
class Channel:
    """The front end's stream to one instance: send a batch, await its reply."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        self._pending: dict[int, asyncio.Future[BatchReply]] = {}
        self.closed = False
        self._task = asyncio.ensure_future(self._read())

    @classmethod
    async def open(cls, host: str, port: int, secret: bytes, timeout_s: float) -> Channel:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=READ_LIMIT), timeout_s)
        writer.write(secret)
        return cls(reader, writer)

    async def run(self, batch_id: int, inputs: TensorBatch) -> BatchReply:
        """Send one batch and wait for its reply; ChannelClosedError once the stream ends."""
        if self.closed:
            raise ChannelClosedError("channel closed")
        future = asyncio.get_running_loop().create_future()
        self._pending[batch_id] = future
        try:
            # write() sends what the socket takes at once and buffers only the rest.
            for part in encode(batch_id, inputs):
                self._writer.write(part)
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            self._pending.pop(batch_id, None)
            raise ChannelClosedError(f"channel closed ({type(exc).__name__})") from None
        return await future

    async def _read(self) -> None:
        try:
            while True:
                header_len, body_len = PREFIX.unpack(await self._reader.readexactly(PREFIX.size))
                header = await self._reader.readexactly(header_len)
                body = np.frombuffer(await self._reader.readexactly(body_len), np.uint8)
                reply = decode(header, body)
                future = self._pending.pop(reply.batch_id, None)
                if future is not None and not future.done():
                    future.set_result(reply)
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            self._fail(ChannelClosedError(f"channel closed ({type(exc).__name__})"))
        except asyncio.CancelledError:
            self._fail(ChannelClosedError("channel closed"))
            raise

    def _fail(self, error: Exception) -> None:
        self.closed = True
        self._writer.close()
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)

    def close(self) -> None:
        self._writer.close()
        self._task.cancel()
