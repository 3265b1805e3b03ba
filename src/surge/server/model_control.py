"""Load and unload requests (the repository API), on one front end or on all of them.

With one front end a request loads or unloads on its engine (`RepositoryControl`). With several
(`surge serve --frontends N`, surge/server/frontends.py) a request reaches only the front end
the kernel gave its connection to, so `SharedControl` makes the change the server's:

- the front end that receives the request does it first; a change that fails there (a model
  that does not load, an unknown name) is answered as an error and goes no further;
- once done, it writes the change as the model's record in a directory the supervisor makes
  (`CONTROL_DIR_ENV`), one file per model holding its latest change (a new one replaces it:
  the last change wins, as on one server);
- every front end reads the records every FOLLOW_EVERY_S and does each change it has not
  done, then notes the records it has done in its own file of the directory;
- the receiving front end answers once every other live front end notes the change (or a
  newer one for the model), or after FOLLOWERS_WAIT_S: the others still follow after that,
  and one whose own load fails says so in its log and index (it is not retried);
- a front end that the supervisor starts again after a crash does every recorded change
  after loading its start models and before it listens, so it serves what the others serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from surge.configfile import write_text_atomically
from surge.engine import InferenceEngine
from surge.errors import SurgeError
from surge.server.frontends import CONTROL_DIR_ENV, CONTROL_DONE
from surge.tempdirs import process_alive

log = logging.getLogger(__name__)

FOLLOW_EVERY_S = 0.2  # how soon a front end notices another's change (a listdir and reads)
FOLLOWERS_WAIT_S = 120.0  # the longest a load or unload waits for the other front ends
MODELS, DONE = "models", CONTROL_DONE  # the records; each front end's notes of those done


class RepositoryControl:
    """Loads and unloads on this front end's engine (one front end)."""

    def __init__(self, engine: InferenceEngine) -> None:
        self.engine = engine

    async def load(self, name: str, config: dict[str, Any] | None) -> None:
        await (self.engine.load(name, config) if config else self.engine.load(name))

    async def unload(self, name: str) -> None:
        await self.engine.unload(name)

    async def start(self) -> None:
        """Before the front end listens."""

    async def stop(self) -> None:
        """At the drain."""


class SharedControl(RepositoryControl):
    """Loads and unloads done by every front end sharing `directory` (see the module)."""

    def __init__(self, engine: InferenceEngine, directory: Path | str,
                 wait_s: float = FOLLOWERS_WAIT_S, pid: int | None = None) -> None:
        super().__init__(engine)
        self.directory, self.wait_s = Path(directory), wait_s
        self.pid = pid or os.getpid()  # names this front end's notes
        (self.directory / MODELS).mkdir(exist_ok=True)
        (self.directory / DONE).mkdir(exist_ok=True)
        self._done: dict[str, str] = {}  # model -> the token of the last record done here
        self._locks: dict[str, asyncio.Lock] = {}
        self._follower: asyncio.Task[None] | None = None

    async def load(self, name: str, config: dict[str, Any] | None) -> None:
        await self._change(name, {"action": "load", "config": config or None})

    async def unload(self, name: str) -> None:
        await self._change(name, {"action": "unload"})

    async def start(self) -> None:
        await self._catch_up()
        self._note_done()  # the others wait for this front end from now on
        self._follower = asyncio.create_task(self._follow(), name="surge-model-control")

    async def stop(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
        # A draining front end is waited for no longer.
        (self.directory / DONE / f"{self.pid}.json").unlink(missing_ok=True)

    async def _change(self, name: str, change: dict[str, Any]) -> None:
        async with self._lock(name):  # not interleaved with following another's change
            await self._perform(name, change)  # an error: answered, not recorded
            record = {**change, "token": uuid.uuid4().hex}
            write_text_atomically(self._record_path(name), orjson.dumps(record).decode())
            self._done[name] = record["token"]
            self._note_done()
        await self._await_followers(name, record["token"])

    async def _perform(self, name: str, change: dict[str, Any]) -> None:
        if change["action"] == "load":
            await super().load(name, change.get("config"))
        else:
            await super().unload(name)

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(FOLLOW_EVERY_S)
            try:
                await self._catch_up()
            except Exception:  # a bug must not stop the following
                log.exception("following the other front ends' loads and unloads")

    async def _catch_up(self) -> None:
        """Do every recorded change not done here yet."""
        for path in sorted((self.directory / MODELS).iterdir()):
            if not path.name.endswith(".json"):  # a record being written
                continue
            name = path.name.removesuffix(".json")
            record = _read(path)
            if record is not None and record.get("token") != self._done.get(name):
                await self._apply(name)

    async def _apply(self, name: str) -> None:
        async with self._lock(name):
            record = _read(self._record_path(name))  # again: this front end may have changed it
            if record is None or record.get("token") == self._done.get(name):
                return
            try:
                await self._perform(name, record)
            except SurgeError as exc:  # the index says why; the record is not done again
                log.warning("model %r: %s as another front end did failed: %s", name,
                            record["action"], exc)
            self._done[name] = record["token"]
            self._note_done()

    async def _await_followers(self, name: str, token: str) -> None:
        deadline = time.monotonic() + self.wait_s
        while (behind := self._behind(name, token)):
            if time.monotonic() >= deadline:
                log.warning("model %r: front ends %s have not followed within %.0f s; "
                            "answering (they follow still)", name, behind, self.wait_s)
                return
            await asyncio.sleep(0.05)

    def _behind(self, name: str, token: str) -> list[int]:
        """The other live front ends that have not done the record `token` of `name` (none
        once a newer record replaced it)."""
        latest = _read(self._record_path(name))
        if latest is None or latest.get("token") != token:
            return []
        behind = []
        for path in (self.directory / DONE).glob("*.json"):
            pid = int(path.stem) if path.stem.isdigit() else 0
            done = _read(path)
            if pid != self.pid and process_alive(pid) and done is not None and done.get(
                    name) != token:
                behind.append(pid)
        return behind

    def _note_done(self) -> None:
        write_text_atomically(self.directory / DONE / f"{self.pid}.json",
                              orjson.dumps(self._done).decode())

    def _record_path(self, name: str) -> Path:
        return self.directory / MODELS / f"{name}.json"

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())


def control_for(engine: InferenceEngine) -> RepositoryControl:
    """Shared with the other front ends when there are some (the directory set), else local."""
    directory = os.environ.get(CONTROL_DIR_ENV)
    return SharedControl(engine, directory) if directory else RepositoryControl(engine)


def _read(path: Path) -> dict[str, Any] | None:
    """A record or a front end's notes; None when gone (a drained front end's notes)."""
    try:
        value = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


__all__ = ["CONTROL_DIR_ENV", "RepositoryControl", "SharedControl", "control_for"]
