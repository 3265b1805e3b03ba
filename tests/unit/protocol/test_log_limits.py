"""Warnings a client's bad requests cause are bounded: one line of a kind per interval, then
a line counting the ones dropped; every other record passes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest

from surge.server.log_limits import (
    PROTOCOL_WARNINGS,
    RepeatedWarnings,
    limit_protocol_warnings,
)

INVALID = "Invalid HTTP request received."


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Lines(logging.Handler):
    """The messages a logger wrote."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def logger() -> Iterator[tuple[logging.Logger, Lines]]:
    log = logging.getLogger("tests.log_limits")
    lines = Lines()
    log.addHandler(lines)
    log.propagate = False
    log.setLevel(logging.DEBUG)
    yield log, lines
    log.removeHandler(lines)
    log.filters.clear()


def test_one_line_a_kind_per_interval_then_the_count_dropped(
        logger: tuple[logging.Logger, Lines]) -> None:
    log, lines = logger
    clock = Clock()
    log.addFilter(RepeatedWarnings([INVALID, "gRPC connection from %s closed: %s"], 10.0, clock))
    for _ in range(1235):
        log.warning(INVALID)
        clock.now += 0.005  # 1,235 in 6.2 s
    for peer in ("a", "b", "c"):
        log.debug("gRPC connection from %s closed: %s", peer, "bad PING")
    clock.now += 4.0
    log.warning(INVALID)
    assert lines.messages == [
        INVALID,
        "gRPC connection from a closed: bad PING",
        f"{INVALID} (1,234 more in the last 10 s)",
        INVALID,
    ]


def test_other_messages_pass_whatever_their_number(logger: tuple[logging.Logger, Lines]) -> None:
    log, lines = logger
    log.addFilter(RepeatedWarnings([INVALID], 10.0, Clock()))
    for i in range(3):
        log.error("cannot load model %r: %s", "m", "corrupt file")
        log.warning("Uvicorn running on port %d", i)
        log.error({"not": "a string"})
    assert len(lines.messages) == 9


def test_the_count_comes_when_the_interval_ends_on_the_event_loop(
        logger: tuple[logging.Logger, Lines]) -> None:
    """A flood that stops is still counted: the line comes once the interval is over."""
    log, lines = logger
    log.addFilter(RepeatedWarnings([INVALID], 0.2))

    async def flood() -> None:
        for _ in range(50):
            log.warning(INVALID)
        await asyncio.sleep(0.4)

    asyncio.run(flood())
    assert lines.messages == [INVALID, f"{INVALID} (49 more in the last 0.2 s)"]


def test_the_serving_process_filters_uvicorn_and_the_grpc_listener() -> None:
    before = {name: list(logging.getLogger(name).filters) for name in PROTOCOL_WARNINGS}
    try:
        limit_protocol_warnings()
        limit_protocol_warnings()  # each server started installs it: once is kept
        for name in PROTOCOL_WARNINGS:
            filters = logging.getLogger(name).filters
            assert len([f for f in filters if isinstance(f, RepeatedWarnings)]) == 1
    finally:
        for name, filters in before.items():
            logging.getLogger(name).filters = filters
