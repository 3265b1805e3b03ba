"""Shared memory between the front end and an actor on the same machine.

A Ray node on the front end's own machine (or a compute node started beside it) sees the
front end's /dev/shm, and then a batch need not cross a socket at all: the front end packs it
into an input slot, the actor computes from it in place and packs its outputs into an output
slot, and the channel carries only the slots' names (`surge.cluster.channel`). The same
layout as the local workers' transport (`surge.workers.transport`): the front end creates,
grows and unlinks every segment, the actor only maps them, so an actor that dies leaks nothing.

Whether an actor shares the front end's memory is not guessed from addresses (two containers
on one host have one IP and two /dev/shm): the front end writes a random token into a probe
segment and the actor says whether it reads it back.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import secrets
from dataclasses import dataclass

from surge.workers.transport import ALIGN, Slot, SlotSpaceError

SHM_DIR = "/dev/shm"  # where POSIX shared memory lies on Linux
FIRST_SLOT_BYTES = 64 << 10  # a slot grows (1.5x) to the largest batch it carried
TOKEN_BYTES = 16


@dataclass(frozen=True)
class Probe:
    """Front end -> actor over Ray: the segment to look into and what it must hold."""

    name: str
    token: bytes


class ProbeSegment:
    """A small segment holding a random token, while the actor looks for it."""

    def __init__(self) -> None:
        self._slot = Slot(ALIGN)
        self.probe = Probe(self._slot.name, secrets.token_bytes(TOKEN_BYTES))
        self._slot.buf[:TOKEN_BYTES] = self.probe.token

    def close(self) -> None:
        self._slot.close()


def shares_memory(probe: Probe) -> bool:
    """On the actor's side: whether the front end's probe segment is visible here."""
    try:
        with open(_path(probe.name), "rb") as segment:
            return segment.read(TOKEN_BYTES) == probe.token
    except OSError:
        return False


@dataclass(eq=False)
class SlotPair:
    """One batch's place: its inputs go in, its outputs come back."""

    inputs: Slot
    outputs: Slot


class FrontSlots:
    """The front end's slot pairs for one actor: one per batch in flight, reused."""

    def __init__(self) -> None:
        self._free: list[SlotPair] = []
        self._all: list[SlotPair] = []

    def take(self) -> SlotPair:
        """A free pair, or a new one (SlotSpaceError, a 503 for that batch, when /dev/shm is
        full: the instance is as it was)."""
        if not self._free:
            inputs = _slot(FIRST_SLOT_BYTES)
            try:
                pair = SlotPair(inputs, _slot(FIRST_SLOT_BYTES))
            except SlotSpaceError:
                _discard(inputs)
                raise
            self._all.append(pair)
            return pair
        return self._free.pop()

    def give(self, pair: SlotPair, outputs_needed: int = 0) -> None:
        """`pair` is free again; its outputs did not fit when `outputs_needed` exceeds it
        (they came on the socket): grow it for the next batches, when /dev/shm has room (else
        they keep coming on the socket)."""
        if outputs_needed > pair.outputs.size:
            with contextlib.suppress(SlotSpaceError):
                grown = _slot(max(outputs_needed, pair.outputs.size * 3 // 2))
                old, pair.outputs = pair.outputs, grown
                _discard(old)
        self._free.append(pair)

    def close(self) -> None:
        for pair in self._all:
            _discard(pair.inputs)
            _discard(pair.outputs)
        self._all.clear()
        self._free.clear()


def _slot(size: int) -> Slot:
    try:
        return Slot(size)
    except OSError as exc:
        raise SlotSpaceError(f"no shared memory left for a batch's slot of {size} bytes "
                             f"({exc.strerror or exc}): /dev/shm is full") from None


def _discard(slot: Slot) -> None:
    with contextlib.suppress(FileNotFoundError):
        slot.shm.unlink()  # first: a view still alive must not keep the name
    with contextlib.suppress(BufferError):  # that view unmaps it when it is freed
        slot.shm.close()


class ActorSlots:
    """The actor's mappings of the front end's segments, by name."""

    def __init__(self) -> None:
        self._maps: dict[str, mmap.mmap] = {}

    def view(self, name: str) -> memoryview:
        mapped = self._maps.get(name)
        if mapped is None:
            # Mapped directly rather than as SharedMemory: before Python 3.13 attaching
            # registers the segment with this process's resource tracker, which would unlink
            # the front end's segment when the actor exits.
            fd = os.open(_path(name), os.O_RDWR)
            try:
                mapped = self._maps[name] = mmap.mmap(fd, 0)
            finally:
                os.close(fd)
            self._forget_replaced(keep=name)
        return memoryview(mapped)

    def writer(self, name: str, capacity: int) -> OutputSlot:
        return OutputSlot(self.view(name), capacity)

    def _forget_replaced(self, keep: str) -> None:
        # A grown slot replaced an older segment: drop the mappings the front end unlinked.
        for name in list(self._maps):
            if name != keep and not os.path.exists(_path(name)):
                with contextlib.suppress(BufferError):
                    self._maps.pop(name).close()

    def close(self) -> None:
        for mapped in self._maps.values():
            with contextlib.suppress(BufferError):
                mapped.close()
        self._maps.clear()


class OutputSlot:
    """Where the actor packs a batch's outputs when they fit (`used` then says so)."""

    def __init__(self, view: memoryview, capacity: int) -> None:
        self._view, self._capacity = view, min(capacity, view.nbytes)
        self.used = False

    def __call__(self, size: int) -> memoryview | None:
        if size > self._capacity:
            return None
        self.used = True
        return self._view



def _path(name: str) -> str:
    return os.path.join(SHM_DIR, name.lstrip("/"))
