"""A result larger than the pipe's buffer is read whole from a descriptor the loop made
non-blocking (uvloop does that to every descriptor it watches)."""

from __future__ import annotations

import multiprocessing as mp
import os
import threading

from surge.workers.transport import whole_messages

BIG = os.urandom(4 << 20)  # far above a pipe's 64 KiB buffer: the writer is still mid-message


def _send_later(conn: object) -> threading.Thread:
    thread = threading.Thread(target=conn.send_bytes, args=(BIG,))  # type: ignore[attr-defined]
    thread.start()
    return thread


def test_a_large_message_is_read_whole_from_a_non_blocking_pipe() -> None:
    reader, writer = mp.Pipe(duplex=False)
    os.set_blocking(reader.fileno(), False)
    thread = _send_later(writer)
    assert reader.poll(5.0)
    with whole_messages(reader):
        assert reader.recv_bytes() == BIG
    assert not os.get_blocking(reader.fileno())  # handed back to the loop as it was
    thread.join()
