"""A direct tensor channel from the front end to each actor: one TCP stream per instance.

Ray keeps placement, health and lifecycle; batches travel here, because Ray's actor calls
measured 2.7 ms per small batch and 549 ms per 8 MiB batch on one machine (object store both
ways, docs/scale-out.md), against a target of 1 ms. The actor starts a threaded server on its
node and tells the front end host:port and nothing else; the front end opens one stream to it
and authenticates with a secret it chose (sent to the actor over Ray, which is itself
authenticated), so no one else on the network can feed the instance.

A frame is a fixed prefix, a small JSON header (batch id, where each tensor lies, timings, an
error) and one contiguous body laid out by the worker transport's `pack`: user tensors are
never pickled, and the receiver views them in place. Two ways for the body:

- the actor shares the front end's memory (`surge.cluster.shared`): no body at all; the header
  names the shared-memory slots the inputs lie in and the outputs go to. One copy each way,
  as for a local worker: an 8 MiB batch measured 15 ms on the socket (docs/scale-out.md).
- otherwise on the socket, without extra copies: the front end sends the packed buffer itself
  and receives each body straight into a fresh array (`sock_recv_into`), never through a
  stream buffer.

Replies come in the order of the batches (the actor computes one at a time), matched by batch
id all the same.
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
from dataclasses import dataclass
from typing import Any

import numpy as np

from surge.cluster.actor import BatchReply, Into, TensorBatch, pack_batch
from surge.cluster.shared import ActorSlots, FrontSlots, SlotPair
from surge.workers.messages import TensorMeta
from surge.workers.transport import Parts, pack

log = logging.getLogger(__name__)

PREFIX = struct.Struct("!IQ")  # header bytes, body bytes
SECRET_BYTES = 32
JOIN_BELOW = 64 * 1024  # smaller bodies go out joined with their header: one send
# Packing a batch bigger than this runs on a thread: a copy of 1 MiB takes ~0.1 ms, less than
# the hop to a thread on a busy machine; a bigger one would hold every other request back.
PACK_OFF_LOOP_BYTES = 1 << 20
# A scratch buffer larger than this is let go once batches use under a quarter of it.
SCRATCH_KEPT = 16 * 1024 * 1024

Compute = Callable[[int, TensorBatch, "Into | None"], BatchReply]
Frame = list[Any]  # bytes and memoryviews, sent in order


class ChannelClosedError(ConnectionError):
    """The stream to an instance ended: the instance is taken as lost."""


# -- frames --------------------------------------------------------------------------------
def frame(fields: dict[str, Any], body: np.ndarray | None = None) -> Frame:
    """[prefix + header, body]; a small body joined to its header, an empty one omitted."""
    header = json.dumps(fields, separators=(",", ":")).encode()
    size = 0 if body is None else body.nbytes
    head = PREFIX.pack(len(header), size) + header
    if body is None or not size:
        return [head]
    if size < JOIN_BELOW:
        return [head + body.tobytes()]
    return [head, body.data]


def metas_field(metas: tuple[TensorMeta, ...]) -> list[list[Any]]:
    return [[m.name, m.dtype, list(m.shape), m.offset, m.nbytes] for m in metas]


def decode(fields: dict[str, Any], body: np.ndarray) -> BatchReply:
    """A frame's header and body back into a batch id, its tensors (viewing `body`), timings
    and error."""
    metas = tuple(TensorMeta(n, d, tuple(s), o, b) for n, d, s, o, b in fields["metas"])
    tensors = TensorBatch(metas, body) if metas else None
    input_ns, infer_ns, output_ns = fields.get("ns", (0, 0, 0))
    rejected = tuple((int(row), str(why)) for row, why in fields.get("rejected", ()))
    return BatchReply(fields["id"], tensors, input_ns, infer_ns, output_ns,
                      fields.get("error", ""), rejected)


# -- the actor's end -------------------------------------------------------------------------
class ChannelServer:
    """Serves batches to `compute` on a node, one connection per front end, in a thread."""

    def __init__(self, compute: Compute, secret: bytes, host: str) -> None:
        self._compute, self._secret = compute, secret
        self._lock = threading.Lock()  # the instance computes one batch at a time
        self._slots = ActorSlots()
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
                scratch = Scratch()
                while True:
                    self._one(conn, scratch)
            except ConnectionError:
                return  # the front end went away (or was stopped): nothing to answer

    def _one(self, conn: socket.socket, scratch: Scratch) -> None:
        header_len, body_len = PREFIX.unpack(_recv_exactly(conn, PREFIX.size))
        fields = json.loads(_recv_exactly(conn, header_len))
        body = scratch.inputs(body_len)
        _recv_into(conn, body.data)
        with self._lock:
            reply, shared = self._compute_one(fields, body, scratch.outputs)
        # `rejected`: the rows preprocessing refused, answered 400 (their outputs are blanks).
        head = {"id": reply.batch_id, "error": reply.error, "shm": shared,
                "rejected": reply.rejected,
                "ns": (reply.input_ns, reply.infer_ns, reply.output_ns),
                "metas": metas_field(reply.outputs.metas) if reply.outputs else []}
        outputs = None if shared or reply.outputs is None else reply.outputs.buffer
        for part in frame(head, outputs):
            conn.sendall(part)

    def _compute_one(self, fields: dict[str, Any], body: np.ndarray,
                     scratch: Into) -> tuple[BatchReply, bool]:
        """Compute a batch from the frame's body (outputs into `scratch`), or from the shared
        slot it names (outputs then go to the output slot when they fit): the reply, and
        whether its outputs went to the slot."""
        batch = decode(fields, body)
        assert batch.outputs is not None, "a batch brings its inputs"
        if "in" not in fields:
            return self._compute(batch.batch_id, batch.outputs, scratch), False
        inputs = TensorBatch(batch.outputs.metas,
                             np.frombuffer(self._slots.view(fields["in"]), np.uint8))
        into = self._slots.writer(fields["out"], fields["cap"])
        reply = self._compute(batch.batch_id, inputs, into)
        return reply, into.used and reply.outputs is not None


class Scratch:
    """One connection's buffers on the actor, reused: a batch's body is read into one and
    its outputs packed into the other, both free again once the reply is sent (the
    connection carries one batch at a time). A fresh 8 MiB array per batch costs its page
    faults every time."""

    def __init__(self) -> None:
        self._inputs = np.empty(0, np.uint8)
        self._outputs = np.empty(0, np.uint8)

    def inputs(self, size: int) -> np.ndarray:
        self._inputs = _fitted(self._inputs, size)
        return self._inputs[:size]

    def outputs(self, size: int) -> memoryview:
        self._outputs = _fitted(self._outputs, size)
        return self._outputs[:size].data


def _fitted(buffer: np.ndarray, size: int) -> np.ndarray:
    """`buffer`, or a new one when it is too small, or large and mostly unused: one huge
    batch would otherwise hold its memory for the connection's life."""
    if size > buffer.nbytes or (buffer.nbytes > SCRATCH_KEPT and 4 * size < buffer.nbytes):
        return np.empty(size, np.uint8)
    return buffer


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
@dataclass(eq=False)
class Lease:
    """A batch's shared-memory slots while it is out; `needed`: outputs that came inline."""

    pair: SlotPair
    needed: int = 0


class Channel:
    """The front end's stream to one instance: send a batch, await its reply, release it."""

    def __init__(self, sock: socket.socket, slots: FrontSlots | None = None) -> None:
        self._sock, self.slots = sock, slots
        self._loop = asyncio.get_running_loop()
        self._sending = asyncio.Lock()  # frames of concurrent batches must not interleave
        self._pending: dict[int, asyncio.Future[BatchReply]] = {}
        self._leases: dict[int, Lease] = {}
        self.closed = False
        self._task = asyncio.ensure_future(self._read())

    @property
    def shared(self) -> bool:
        """Whether tensors go through shared memory (the actor is on this machine)."""
        return self.slots is not None

    @classmethod
    async def open(cls, host: str, port: int, secret: bytes, timeout_s: float,
                   shared: bool = False) -> Channel:
        sock = await asyncio.to_thread(socket.create_connection, (host, port), timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_sendall(sock, secret)
        return cls(sock, FrontSlots() if shared else None)

    async def run(self, batch_id: int, parts: Parts) -> BatchReply:
        """Send one batch and wait for its reply (ChannelClosedError once the stream ends).
        Its outputs may view a shared slot: `release(batch_id)` once they are consumed."""
        if self.closed:
            raise ChannelClosedError("channel closed")
        future = self._loop.create_future()
        self._pending[batch_id] = future
        try:
            await self._send(await self._frame(batch_id, parts))
        except BaseException:
            self._forget(batch_id)
            raise
        return await future

    async def _send(self, parts: Frame) -> None:
        try:
            async with self._sending:
                for part in parts:
                    await self._loop.sock_sendall(self._sock, part)
        except (ConnectionError, OSError) as exc:
            raise ChannelClosedError(f"channel closed ({type(exc).__name__})") from None

    async def _frame(self, batch_id: int, parts: Parts) -> Frame:
        large = sum(p.nbytes for pieces in parts.values() for p in pieces) > PACK_OFF_LOOP_BYTES
        if self.slots is None:
            batch = await asyncio.to_thread(pack_batch, parts) if large else pack_batch(parts)
            return frame({"id": batch_id, "metas": metas_field(batch.metas)}, batch.buffer)
        lease = self._leases[batch_id] = Lease(self.slots.take())
        slot = lease.pair.inputs
        metas = await asyncio.to_thread(pack, parts, slot.ensure) if large else pack(
            parts, slot.ensure)
        return frame({"id": batch_id, "metas": metas_field(metas), "in": slot.name,
                      "out": lease.pair.outputs.name, "cap": lease.pair.outputs.size})

    def release(self, batch_id: int) -> None:
        """The reply of `batch_id` is consumed: its slots take the next batch."""
        lease = self._leases.pop(batch_id, None)
        if lease is not None and self.slots is not None and not self.closed:
            self.slots.give(lease.pair, lease.needed)

    def _forget(self, batch_id: int) -> None:
        self._pending.pop(batch_id, None)
        self.release(batch_id)

    async def _read(self) -> None:
        try:
            while True:
                prefix = await self._receive(np.empty(PREFIX.size, np.uint8))
                header_len, body_len = PREFIX.unpack(prefix.tobytes())
                header = await self._receive(np.empty(header_len, np.uint8))
                fields = json.loads(header.tobytes())
                body = await self._receive(np.empty(body_len, np.uint8))
                self._deliver(fields, body)
        except (ConnectionError, OSError) as exc:
            self._fail(ChannelClosedError(f"channel closed ({type(exc).__name__})"))
        except asyncio.CancelledError:
            self._fail(ChannelClosedError("channel closed"))
            raise
        except Exception as exc:  # a reply this end cannot read (another Surge on that node?)
            log.warning("channel: unreadable reply (%s: %s); the instance is taken as lost",
                        type(exc).__name__, exc)
            self._fail(ChannelClosedError(f"unreadable reply ({type(exc).__name__}: {exc})"))

    async def _receive(self, into: np.ndarray) -> np.ndarray:
        view = into.data.cast("B")
        while view.nbytes:
            got = await self._loop.sock_recv_into(self._sock, view)
            if not got:
                raise ConnectionError("channel closed")
            view = view[got:]
        return into

    def _deliver(self, fields: dict[str, Any], body: np.ndarray) -> None:
        lease = self._leases.get(fields["id"])
        if fields.get("shm"):
            if lease is None:
                raise ConnectionError(f"a reply in shared memory for batch {fields['id']} "
                                      "that holds no slot")
            body = np.frombuffer(lease.pair.outputs.buf, np.uint8)
        elif lease is not None:
            lease.needed = body.nbytes
        reply = decode(fields, body)  # first: a reply it cannot decode leaves it pending, failed
        future = self._pending.pop(fields["id"], None)
        if future is not None and not future.done():
            future.set_result(reply)

    def _fail(self, error: Exception) -> None:
        self._close()
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._sock.close()
        if self.slots is not None:
            self.slots.close()
        self._leases.clear()

    def close(self) -> None:
        if self._task.done():
            self._close()
        else:  # the reader's end closes the socket, once it no longer waits on it
            self._task.cancel()
