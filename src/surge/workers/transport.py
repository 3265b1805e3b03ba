"""How batch tensors move between the front end and a worker.

`ShmTransport` (the default) writes each batch straight from the requests' arrays into a
per-worker shared-memory input slot and reads outputs from a per-worker output slot; only a
`RunBatch`/`BatchDone` control message crosses the pipe. `PipeTransport` is the fallback that
copies the same packed bytes through the pipe. Neither pickles a tensor.

The front end creates (and so owns and unlinks) every segment; a worker only attaches, so a
worker killed with SIGKILL leaks nothing.
"""

from __future__ import annotations

import _posixshmem
import contextlib
import errno
import itertools
import math
import mmap
import os
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from typing import Protocol

import numpy as np

from surge.errors import ServingError
from surge.protocol.tensors import deserialize_bytes, serialize_bytes
from surge.workers.messages import BatchDone, RunBatch, TensorMeta

ALIGN = 64  # cache-line aligned tensors
BYTES = "BYTES"
TRANSPORTS = ("shm", "pipe")
TRANSPORT_ENV = "SURGE_TRANSPORT"

Parts = Mapping[str, Sequence[np.ndarray]]  # tensor name -> pieces joined along dim 0


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def encode_bytes(arrays: Sequence[np.ndarray]) -> bytes:
    """BYTES pieces of one tensor in the V2 wire format, so the worker decodes them alike."""
    return b"".join(serialize_bytes(array) for array in arrays)


def decode_bytes(name: str, buffer: memoryview, shape: tuple[int, ...]) -> np.ndarray:
    return deserialize_bytes(name, buffer, math.prod(shape)).reshape(shape)


def _joined_shape(pieces: Sequence[np.ndarray]) -> tuple[int, ...]:
    if len(pieces) == 1:
        return tuple(pieces[0].shape)
    return (sum(p.shape[0] for p in pieces), *pieces[0].shape[1:])


def pack(parts: Parts, alloc: Callable[[int], memoryview]) -> tuple[TensorMeta, ...]:
    """Lay out `parts` in one buffer from `alloc(total_bytes)` and copy them in.

    Pieces of one tensor are copied next to each other, so a batch is formed without an
    intermediate concatenation.
    """
    metas: list[TensorMeta] = []
    encoded: dict[str, bytes] = {}
    offset = 0
    for name, pieces in parts.items():
        shape = _joined_shape(pieces)
        if pieces[0].dtype == object:
            encoded[name] = encode_bytes(pieces)
            dtype, nbytes = BYTES, len(encoded[name])
        else:
            dtype, nbytes = pieces[0].dtype.str, sum(p.nbytes for p in pieces)
        metas.append(TensorMeta(name, dtype, shape, offset, nbytes))
        offset = _aligned(offset + nbytes)
    buffer = alloc(offset)
    for meta in metas:
        if meta.dtype == BYTES:
            buffer[meta.offset:meta.offset + meta.nbytes] = encoded[meta.name]
            continue
        target = np.ndarray(meta.shape, np.dtype(meta.dtype), buffer, meta.offset)
        pieces = parts[meta.name]
        if len(pieces) == 1:
            np.copyto(target, pieces[0], casting="no")
            continue
        row = 0
        for piece in pieces:
            target[row:row + piece.shape[0]] = piece
            row += piece.shape[0]
    return tuple(metas)


def unpack(metas: Sequence[TensorMeta], buffer: memoryview) -> dict[str, np.ndarray]:
    """Arrays viewing `buffer` (no copy; BYTES tensors are decoded)."""
    out: dict[str, np.ndarray] = {}
    for meta in metas:
        if meta.dtype == BYTES:
            out[meta.name] = decode_bytes(meta.name, buffer[meta.offset:meta.offset + meta.nbytes],
                                          meta.shape)
        else:
            out[meta.name] = np.ndarray(meta.shape, np.dtype(meta.dtype), buffer, meta.offset)
    return out


class Transport(Protocol):
    """The front end's end of one worker's tensor channel."""

    kind: str

    def send(self, conn: Connection, batch_id: int, parts: Parts, model: str = "") -> None:
        """Write a batch's inputs and tell the worker to compute it (with `model`, when the
        worker hosts several)."""

    def receive(self, conn: Connection, done: BatchDone) -> dict[str, np.ndarray]:
        """The outputs of `done` (views of a reused buffer: consume before sending more)."""

    def skip(self) -> None:
        """`done` carried an error instead of outputs."""

    def reset(self) -> None:
        """The worker was replaced: nothing is in flight any more."""

    def close(self) -> None:
        """Free the channel's buffers."""


SEGMENT_PREFIX = "surge"
_segments = itertools.count()


def segment_prefix(pid: int | None = None) -> str:
    """Names of the segments a front-end process creates start with this (see /dev/shm)."""
    return f"{SEGMENT_PREFIX}-{os.getpid() if pid is None else pid}-"


def _create(size: int) -> Segment:
    return Segment(f"{segment_prefix()}{next(_segments)}-{secrets.token_hex(4)}", size)


class Segment:
    """A shared-memory segment the front end creates, maps, and later unlinks.

    Not `SharedMemory(create=True)`: when its mapping fails (no file descriptor left: mmap
    duplicates the one it maps) that unlinks the name through the resource tracker, which had
    not registered it yet and prints a KeyError traceback. This registers only what it made,
    removes whatever a failed creation left, and keeps one descriptor (the mapping's), not two.
    """

    def __init__(self, name: str, size: int) -> None:
        self.name, self.size = name, size
        self._mmap: mmap.mmap | None = None
        fd = _posixshmem.shm_open(f"/{name}", os.O_CREAT | os.O_EXCL | os.O_RDWR, mode=0o600)
        try:
            os.ftruncate(fd, size)
            # ftruncate leaves the segment sparse: on a full /dev/shm the first write to a page
            # then kills the process with SIGBUS. Reserving the pages now makes that ENOSPC here.
            os.posix_fallocate(fd, 0, size)
            self._mmap = mmap.mmap(fd, size)
            resource_tracker.register(f"/{name}", "shared_memory")
        except BaseException:
            if self._mmap is not None:
                self._mmap.close()
            _posixshmem.shm_unlink(f"/{name}")
            raise
        finally:
            os.close(fd)
        self.buf: memoryview | None = memoryview(self._mmap)

    def close(self) -> None:
        """Unmap it (BufferError while a view of it is alive, as SharedMemory.close)."""
        if self.buf is not None:
            self.buf.release()
            self.buf = None
        if self._mmap is not None:
            self._mmap.close()
            self._mmap = None

    def unlink(self) -> None:
        """Remove its name (FileNotFoundError when it is gone already)."""
        _posixshmem.shm_unlink(f"/{self.name}")
        resource_tracker.unregister(f"/{self.name}", "shared_memory")


class SlotSpaceError(ServingError):
    """A batch's tensors do not fit in the shared memory left: that batch fails (503), the
    worker and its slots stay as they were."""

    status = 503


def _shortage(error: OSError) -> str:
    """What ran out, as a segment's creation failed with `error`."""
    if error.errno == errno.ENOSPC:
        return f"{error.strerror}: /dev/shm is full"
    if error.errno in (errno.EMFILE, errno.ENFILE):
        return f"{error.strerror}: the server has no file descriptor left"
    return str(error.strerror or error)


class Slot:
    """A growable shared-memory segment created and unlinked by the front end."""

    def __init__(self, size: int) -> None:
        self.shm = _create(max(ALIGN, size))

    @property
    def name(self) -> str:
        return self.shm.name

    @property
    def size(self) -> int:
        return self.shm.size

    @property
    def buf(self) -> memoryview:
        return _buffer(self.shm)

    def ensure(self, size: int) -> memoryview:
        """The segment's buffer, replaced by a bigger one (grown 1.5x) when `size` does not fit.

        The worker attaches to the new name on its next batch; unlinking the old one here is
        safe because a worker holds at most one batch, which is finished by now.
        """
        if size > self.shm.size:
            try:  # the new segment first: the old one stays usable when there is no room
                bigger = _create(max(size, self.shm.size * 3 // 2))
            except OSError as exc:
                raise SlotSpaceError(f"no shared memory left for a batch of {size} bytes: "
                                     f"{_shortage(exc)}") from None
            self.close()
            self.shm = bigger
        return self.buf

    def close(self) -> None:
        self.shm.close()
        with contextlib.suppress(FileNotFoundError):
            self.shm.unlink()


class ShmTransport:
    """Tensors in per-worker shared-memory slots; control messages on the pipe.

    `depth` input/output slot pairs let a worker hold that many batches: it computes one
    while the next already waits in its slot. Results come back in send order, so the
    slots are used round-robin.
    """

    kind = "shm"

    def __init__(self, input_bytes: int, output_bytes: int, depth: int = 1) -> None:
        self.pairs: list[tuple[Slot, Slot]] = []
        try:
            for _ in range(depth):
                inputs = Slot(input_bytes)
                try:
                    self.pairs.append((inputs, Slot(output_bytes)))
                except BaseException:
                    inputs.close()
                    raise
        except BaseException:  # none of the segments made so far may outlive the failure
            self.close()
            raise
        self._sent = 0
        self._received = 0

    @property
    def inputs(self) -> Slot:
        """The input slot the next batch goes to."""
        return self.pairs[self._sent % len(self.pairs)][0]

    @property
    def outputs(self) -> Slot:
        """The output slot the next result comes from."""
        return self.pairs[self._received % len(self.pairs)][1]

    def send(self, conn: Connection, batch_id: int, parts: Parts, model: str = "") -> None:
        inputs, outputs = self.pairs[self._sent % len(self.pairs)]
        metas = pack(parts, inputs.ensure)
        conn.send(RunBatch(batch_id, metas, inputs.name, outputs.name, outputs.size, model))
        self._sent += 1

    def receive(self, conn: Connection, done: BatchDone) -> dict[str, np.ndarray]:
        slot = self.outputs
        self._received += 1
        if done.inline:
            # The outputs did not fit: they came on the pipe; grow for the next batches.
            outputs = unpack(done.tensors, memoryview(conn.recv_bytes()))
            with contextlib.suppress(SlotSpaceError):  # no room: outputs keep coming inline
                slot.ensure(done.needed)
            return outputs
        return unpack(done.tensors, slot.buf)

    def skip(self) -> None:
        """A batch was answered without outputs (the runner failed): keep the rotation."""
        self._received += 1

    def reset(self) -> None:
        """A new worker process starts with nothing in flight."""
        self._sent = self._received = 0

    def close(self) -> None:
        for inputs, outputs in self.pairs:
            inputs.close()
            outputs.close()


@contextlib.contextmanager
def whole_messages(conn: Connection) -> Iterator[None]:
    """Read whole messages from a pipe the event loop watches.

    uvloop puts a watched descriptor in non-blocking mode, and a message larger than the pipe's
    buffer (outputs that did not fit their slot come on the pipe) is still being written when
    the first bytes wake the reader: a non-blocking read of it fails half way with EAGAIN. The
    writer is mid-message, so blocking until the message is whole is brief.
    """
    fd = conn.fileno()
    was_blocking = os.get_blocking(fd)
    os.set_blocking(fd, True)
    try:
        yield
    finally:
        if not conn.closed:
            os.set_blocking(fd, was_blocking)


class PipeTransport:
    """Fallback: the packed tensor bytes are copied through the pipe after each message."""

    kind = "pipe"

    def send(self, conn: Connection, batch_id: int, parts: Parts, model: str = "") -> None:
        payload = bytearray()

        def alloc(size: int) -> memoryview:
            payload.extend(bytes(size))
            return memoryview(payload)

        metas = pack(parts, alloc)
        conn.send(RunBatch(batch_id, metas, model=model))
        conn.send_bytes(payload)

    def receive(self, conn: Connection, done: BatchDone) -> dict[str, np.ndarray]:
        return unpack(done.tensors, memoryview(conn.recv_bytes()))

    def skip(self) -> None:
        """Nothing to keep in step."""

    def reset(self) -> None:
        """Nothing to keep in step."""

    def close(self) -> None:
        """Nothing to free."""


def make_transport(kind: str | None, input_bytes: int, output_bytes: int,
                   depth: int = 1) -> Transport:
    """The transport named by `kind`, or by $SURGE_TRANSPORT, default shared memory."""
    kind = kind or os.environ.get(TRANSPORT_ENV, "shm")
    if kind == "shm":
        return ShmTransport(input_bytes, output_bytes, depth)
    if kind == "pipe":
        return PipeTransport()
    from surge.errors import ConfigError

    raise ConfigError(f"{TRANSPORT_ENV}={kind!r}: expected one of {', '.join(TRANSPORTS)}")


class WorkerEnd:
    """A worker's end: reads inputs and writes outputs for either transport."""

    def __init__(self) -> None:
        self._attached: dict[str, SharedMemory] = {}

    def _segment(self, name: str) -> SharedMemory:
        shm = self._attached.get(name)
        if shm is None:
            shm = self._attached[name] = SharedMemory(name=name)
            self._forget_replaced(keep=name)
        return shm

    def _forget_replaced(self, keep: str) -> None:
        # A grown slot replaced an older segment: drop mappings the front end unlinked.
        for name in list(self._attached):
            if name != keep and not os.path.exists(f"/dev/shm/{name.lstrip('/')}"):
                self._attached.pop(name).close()

    def inputs(self, conn: Connection, message: RunBatch) -> dict[str, np.ndarray]:
        if message.input_slot:
            return unpack(message.tensors, _buffer(self._segment(message.input_slot)))
        return unpack(message.tensors, memoryview(conn.recv_bytes()))

    def reply(self, conn: Connection, message: RunBatch, outputs: Mapping[str, np.ndarray],
              done: BatchDone) -> None:
        """Write `outputs` into the output slot when they fit, else inline on the pipe."""
        start = time.perf_counter_ns()
        parts = {n: [np.ascontiguousarray(a)] for n, a in outputs.items()}
        if message.output_slot:
            segment = self._segment(message.output_slot)
            sized: list[int] = []

            def alloc(size: int) -> memoryview:
                sized.append(size)
                if size > segment.size:
                    raise _DoesNotFitError
                return _buffer(segment)

            try:
                metas = pack(parts, alloc)
            except _DoesNotFitError:
                pass
            else:
                conn.send(_with(done, metas, False, sized[0], time.perf_counter_ns() - start))
                return
        payload = bytearray()

        def grow(size: int) -> memoryview:
            payload.extend(bytes(size))
            return memoryview(payload)

        metas = pack(parts, grow)
        conn.send(_with(done, metas, True, len(payload), time.perf_counter_ns() - start))
        conn.send_bytes(payload)

    def close(self) -> None:
        for shm in self._attached.values():
            with contextlib.suppress(BufferError):  # a view still alive: unmapped at exit
                shm.close()
        self._attached.clear()


def _buffer(shm: SharedMemory | Segment) -> memoryview:
    buf = shm.buf
    assert buf is not None, "shared memory segment is closed"
    return buf


class _DoesNotFitError(Exception):
    """The outputs are larger than the output slot."""


def _with(done: BatchDone, metas: tuple[TensorMeta, ...], inline: bool, needed: int,
          output_ns: int) -> BatchDone:
    return replace(done, tensors=metas, inline=inline, needed=needed, output_ns=output_ns)
