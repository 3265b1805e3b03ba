"""A slot that cannot grow names what ran out: /dev/shm space or file descriptors."""

from __future__ import annotations

import errno
import os

import pytest

import surge.workers.transport as transport
from surge.workers.transport import Slot, SlotSpaceError


@pytest.mark.parametrize(("code", "says"), [
    (errno.ENOSPC, "No space left on device: /dev/shm is full"),
    (errno.EMFILE, "Too many open files: the server has no file descriptor left"),
])
def test_a_slot_that_cannot_grow_names_what_ran_out(
    monkeypatch: pytest.MonkeyPatch, code: int, says: str,
) -> None:
    """Out of file descriptors, the 503 said '/dev/shm is full' all the same."""
    slot = Slot(64)
    try:
        def short(size: int) -> transport.Segment:
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(transport, "_create", short)
        with pytest.raises(SlotSpaceError) as raised:
            slot.ensure(4096)
        assert str(raised.value) == f"no shared memory left for a batch of 4096 bytes: {says}"
        assert slot.size == 64  # the old segment stays in use
        slot.buf[:4] = b"ok!!"
    finally:
        slot.close()
