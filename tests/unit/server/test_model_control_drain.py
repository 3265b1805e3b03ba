"""Loads and unloads at a drain, and refused overrides (surge/server/model_control.py): a load
still running when the grace ends is answered 503, not cut off; a refused override changes
nothing, the repository index included."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from surge.errors import ConfigError, NotFoundError
from surge.server.model_control import ChangeAbandonedError, RepositoryControl, SharedControl
from tests.unit.engine.fakes import serving


class StuckEngine:
    """An engine whose loads and unloads finish only when the test says so."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.cancelled: list[str] = []
        self.waiting = 0  # loads and unloads in here now

    async def load(self, name: str, config: Any = None) -> None:
        await self._work(name)

    async def unload(self, name: str) -> None:
        await self._work(name)

    async def _work(self, name: str) -> None:
        self.waiting += 1
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.append(name)
            raise
        finally:
            self.waiting -= 1


@pytest.mark.parametrize("action", ["load", "unload"])
def test_a_change_still_running_when_the_grace_ends_is_answered_503(action: str) -> None:
    """It was cancelled by the listener as its grace ended: HTTP 500 and a traceback."""
    async def scenario() -> None:
        engine = StuckEngine()
        control = RepositoryControl(engine)  # type: ignore[arg-type]
        change = asyncio.create_task(control.load("late", None) if action == "load"
                                     else control.unload("late"))
        await asyncio.sleep(0)  # the request is in the engine
        await control.stop()
        await control.settle(0.2)
        with pytest.raises(ChangeAbandonedError) as caught:
            await change
        assert caught.value.status == 503
        assert str(caught.value) == (
            f"server is stopping: the {action} of model 'late' did not finish within the "
            "shutdown grace and was abandoned; send it again once the server is back")
        assert engine.cancelled == ["late"]  # what it started is stopped
        assert not change.cancelled()

    asyncio.run(scenario())


def test_a_change_that_finishes_within_the_grace_is_answered_as_usual() -> None:
    async def scenario() -> None:
        engine = StuckEngine()
        control = RepositoryControl(engine)  # type: ignore[arg-type]
        change = asyncio.create_task(control.load("m", None))
        await asyncio.sleep(0)
        await control.stop()
        settling = asyncio.create_task(control.settle(60.0))
        engine.release.set()
        await change  # no error
        await settling  # returns once no change is left, not after the grace
        assert engine.cancelled == []

    asyncio.run(scenario())


def test_a_change_asked_during_the_drain_is_refused_with_503() -> None:
    async def scenario() -> None:
        engine = StuckEngine()
        control = RepositoryControl(engine)  # type: ignore[arg-type]
        await control.stop()
        with pytest.raises(ChangeAbandonedError, match=r"server is stopping: the load of "
                           r"model 'm' is refused; send it again once the server is back"):
            await control.load("m", None)
        await control.settle(1.0)  # nothing to wait for

    asyncio.run(scenario())


def test_a_cancelled_request_that_the_drain_did_not_abandon_stays_cancelled() -> None:
    """A client's cancel (gRPC) is not answered as an abandoned load."""
    async def scenario() -> None:
        engine = StuckEngine()
        control = RepositoryControl(engine)  # type: ignore[arg-type]
        change = asyncio.create_task(control.load("m", None))
        await asyncio.sleep(0)
        change.cancel()
        with pytest.raises(asyncio.CancelledError):
            await change
        assert engine.cancelled == ["m"]

    asyncio.run(scenario())


def test_a_load_waiting_for_other_front_ends_answers_when_the_drain_begins(
        tmp_path: Path) -> None:
    """Done here and recorded, it waited for front ends up to FOLLOWERS_WAIT_S into the
    drain, and was cut off by the listener."""
    async def scenario() -> None:
        engine = StuckEngine()
        engine.release.set()
        control = SharedControl(engine, tmp_path, wait_s=300.0,  # type: ignore[arg-type]
                                pid=os.getpid())
        other = SharedControl(engine, tmp_path, pid=os.getppid())  # type: ignore[arg-type]
        other._note_done()  # a live front end that does not follow
        await control.start()
        change = asyncio.create_task(control.load("m", None))
        while not (tmp_path / "models" / "m.json").exists():  # done here, recorded
            await asyncio.sleep(0.01)
        await control.stop()
        await asyncio.wait_for(change, 10.0)  # not the 300 s wait

    asyncio.run(scenario())


@pytest.mark.parametrize(("override", "refusal"), [
    ({"max_batch_size": 4}, "'max_batch_size' is read from config.yaml"),
    ({"instances": 0}, "instances"),
    ({"no_such_field": 1}, "unknown key 'no_such_field'"),
])
def test_a_refused_override_leaves_the_index_as_it_was(tmp_path: Path, override: dict[str, Any],
                                                       refusal: str) -> None:
    """The index listed a second row of the model, version '' UNAVAILABLE, beside the READY
    one that went on serving."""
    async def scenario() -> None:
        async with serving(tmp_path, "instances: 1\n") as served:
            before = served.engine.index()
            control = RepositoryControl(served.engine)
            with pytest.raises(ConfigError, match=refusal):
                await control.load("m", override)
            assert served.engine.index() == before
            assert [(r["version"], r["state"]) for r in before] == [("1", "READY")]
            await control.load("m", {"instances": 2})  # a good override loads
            assert [(r["version"], r["state"]) for r in served.engine.index()] == [
                ("1", "READY")]

    asyncio.run(scenario())


def test_loads_of_names_the_repository_lacks_leave_nothing_behind(tmp_path: Path) -> None:
    """Each name asked kept a lock for ever: requests naming made-up models grew the front
    end without bound."""
    class NoModels:
        async def load(self, name: str, config: Any = None) -> None:
            raise NotFoundError(f"model {name!r} is not in the repository")

    async def scenario() -> None:
        control = SharedControl(NoModels(), tmp_path, pid=os.getpid())  # type: ignore[arg-type]
        for number in range(100):
            with pytest.raises(NotFoundError):
                await control.load(f"made-up-{number}", None)
        assert control._locks == {}

    asyncio.run(scenario())


def test_changes_of_one_model_still_take_turns(tmp_path: Path) -> None:
    async def scenario() -> None:
        engine = StuckEngine()
        control = SharedControl(engine, tmp_path, wait_s=0.0,  # type: ignore[arg-type]
                                pid=os.getpid())
        first = asyncio.create_task(control.load("m", None))
        second = asyncio.create_task(control.unload("m"))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not first.done()
        assert not second.done()
        assert engine.waiting == 1  # the unload waits for the load
        engine.release.set()
        await asyncio.gather(first, second)
        assert control._locks == {}

    asyncio.run(scenario())
