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
- a front end whose own load fails first stops serving the model (a version or config the
  others replaced must not answer beside theirs) and tries the load once more, alone: a
  transient failure (a worker that could not start) is over, and a load short of memory gets
  the old version's; a second failure leaves the model unavailable there, the reason in its
  index and in the answer to requests naming it, and is noted with the change;
- the receiving front end answers once every other live front end notes the change (or a
  newer one for the model), or after FOLLOWERS_WAIT_S: the others still follow after that;
  a front end that noted a failure of the change makes the answer an error naming it and its
  reason (HTTP 400, gRPC INVALID_ARGUMENT, as a failed load on one server), although the
  change stands on the others: loading the model again tries every front end again;
- a front end that the supervisor starts again after a crash does every recorded change
  after loading its start models and before it listens, so it serves what the others serve.

At a drain (SIGTERM) a load or unload in progress gets the shutdown grace to finish, less
`ABANDON_MARGIN_S`; one still running then is cancelled and answered 503 (gRPC UNAVAILABLE)
while the listeners can still write the answer, and a new one is refused the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import orjson

from surge.configfile import write_text_atomically
from surge.engine import InferenceEngine
from surge.engine.reload import override_config
from surge.errors import ServingError, SurgeError, clipped
from surge.protocol.errors import load_failure
from surge.repository import Repository
from surge.server.frontends import CONTROL_DIR_ENV, CONTROL_DONE
from surge.server.log_settings import changes_to_follow
from surge.tempdirs import process_alive

log = logging.getLogger(__name__)

FOLLOW_EVERY_S = 0.2  # how soon a front end notices another's change (a listdir and reads)
FOLLOWERS_WAIT_S = 120.0  # the longest a load or unload waits for the other front ends
MODELS, DONE = "models", CONTROL_DONE  # the records; each front end's notes of those done
MAX_REASON_CHARS = 500  # of a front end's failure, in its notes and in the answer
# A drain abandons the loads still running this long before the grace ends (at most half the
# grace): the listeners stop writing answers at its end, and the 503 must get out before.
ABANDON_MARGIN_S = 0.5


class FollowerFailedError(ServingError):
    """A change done by the receiving front end that another front end could not do."""

    status = 400


class ChangeAbandonedError(ServingError):
    """A load or unload the server's drain cut short or refused (HTTP 503, gRPC UNAVAILABLE)."""

    status = 503


class RepositoryControl:
    """Loads and unloads on this front end's engine (one front end)."""

    def __init__(self, engine: InferenceEngine) -> None:
        self.engine = engine
        self._log_follower: asyncio.Task[None] | None = None
        self.stopping = False  # the drain began: loads and unloads are refused
        # The tasks of the requests loading or unloading now -> what each does, in words.
        self._changes: dict[asyncio.Task[Any], str] = {}
        self._abandoned: set[asyncio.Task[Any]] = set()  # cancelled by the drain

    async def load(self, name: str, config: dict[str, Any] | None) -> None:
        async with self._abandonable(f"the load of model {name!r}"):
            await self._check_load(name, config)
            await (self.engine.load(name, config) if config else self.engine.load(name))

    async def unload(self, name: str) -> None:
        async with self._abandonable(f"the unload of model {name!r}"):
            await self.engine.unload(name)

    async def _check_load(self, name: str, config: Mapping[str, Any] | None) -> None:
        """Refuse before the engine is asked what changes nothing, so that its index stays as
        it was: a repository that cannot be listed (answered 503, not noted as a failed load),
        and an override that config.yaml's fields refuse (a 400 that starts no instances). A
        config.yaml that does not read is left to the engine, which notes that failure as for
        a load without an override."""
        repository = getattr(self.engine, "repository", None)
        if not isinstance(repository, Repository):
            return
        await asyncio.to_thread(repository.model_names)
        if not config:
            return
        try:
            base = await asyncio.to_thread(repository.config, name)
        except SurgeError:
            return
        override_config(base, config)

    @contextlib.asynccontextmanager
    async def _abandonable(self, what: str) -> AsyncIterator[None]:
        """Run a load or unload that the drain may cancel (`settle`): its request is then
        answered ChangeAbandonedError, not cut off by the listener as the grace ends."""
        if self.stopping:
            raise ChangeAbandonedError(f"server is stopping: {what} is refused; send it "
                                       "again once the server is back")
        task = asyncio.current_task()
        assert task is not None, "a request is a task"
        self._changes[task] = what
        try:
            yield
        except asyncio.CancelledError:
            if task not in self._abandoned:
                raise
            task.uncancel()
            raise ChangeAbandonedError(
                f"server is stopping: {what} did not finish within the shutdown grace and was "
                "abandoned; send it again once the server is back") from None
        finally:
            self._changes.pop(task, None)
            self._abandoned.discard(task)

    async def settle(self, grace_s: float) -> None:
        """At the drain, beside the listeners' wait: the loads and unloads in progress get
        `grace_s` less a margin to finish; those still running are then cancelled (each
        stops what it started) and answered 503."""
        wait_s = max(0.0, grace_s - min(ABANDON_MARGIN_S, grace_s / 2))
        if self._changes:
            await asyncio.wait(list(self._changes), timeout=wait_s)
        for task, what in list(self._changes.items()):
            log.warning("stopping: %s did not finish within the shutdown grace; abandoning "
                        "it", what)
            self._abandoned.add(task)
            task.cancel()

    async def start(self) -> None:
        """Before the front end listens: the log settings another front end changed (with
        several), applied now and followed from now on."""
        self._log_follower = changes_to_follow()

    async def stop(self) -> None:
        """At the drain."""
        self.stopping = True
        if self._log_follower is not None:
            self._log_follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._log_follower


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
        # model -> (token, reason) of the last record that failed here
        self._failed: dict[str, tuple[str, str]] = {}
        # model -> its lock and how many hold it or wait for it: dropped at none, so that
        # loads of names the repository lacks leave nothing behind (one lock each, for ever)
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}
        self._follower: asyncio.Task[None] | None = None

    async def load(self, name: str, config: dict[str, Any] | None) -> None:
        await self._change(name, {"action": "load", "config": config or None})

    async def unload(self, name: str) -> None:
        await self._change(name, {"action": "unload"})

    async def start(self) -> None:
        await super().start()
        await self._catch_up()
        self._note_done()  # the others wait for this front end from now on
        self._follower = asyncio.create_task(self._follow(), name="surge-model-control")

    async def stop(self) -> None:
        self.stopping = True  # at once: a load waiting for the others answers now
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
        # A draining front end is waited for no longer.
        (self.directory / DONE / f"{self.pid}.json").unlink(missing_ok=True)
        await super().stop()

    async def _change(self, name: str, change: dict[str, Any]) -> None:
        async with self._lock(name):  # not interleaved with following another's change
            await self._perform(name, change)  # an error: answered, not recorded
            record = {**change, "token": uuid.uuid4().hex}
            write_text_atomically(self._record_path(name), orjson.dumps(record).decode())
            self._done[name] = record["token"]
            self._failed.pop(name, None)
            self._note_done()
        await self._await_followers(name, record["token"])
        _raise_failures(name, change["action"], self._failures(name, record["token"]))

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
            reason = await self._follow_change(name, record)
            self._done[name] = record["token"]
            if reason is None:
                self._failed.pop(name, None)
            else:  # the receiving front end's answer says so; the record is not done again
                self._failed[name] = (record["token"], reason)
            self._note_done()

    async def _follow_change(self, name: str, record: dict[str, Any]) -> str | None:
        """Do another front end's change here: None once done, else why it failed twice.
        Any error counts (an OSError out of files, say): one left to the follow loop was
        tried again every FOLLOW_EVERY_S, for ever, and never reached the answer."""
        try:
            await self._perform(name, record)
            return None
        except Exception as exc:
            if record["action"] != "load":
                return _reason(exc)
            log.warning("model %r: load as another front end did failed: %s; stopping the "
                        "version served here and loading once more", name, exc)
        with contextlib.suppress(Exception):  # not served here: nothing to stop
            await super().unload(name)
        try:
            await self._perform(name, record)
            return None
        except Exception as exc:  # the engine's index and its requests' answers say why
            log.error("model %r: load as another front end did failed again, the model is "
                      "unavailable on this front end: %s", name, exc)
            return _reason(exc)

    async def _await_followers(self, name: str, token: str) -> None:
        deadline = time.monotonic() + self.wait_s
        while (behind := self._behind(name, token)):
            if self.stopping:  # done here and recorded: the others follow as they restart
                return
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
            notes = _read(path)  # None: gone, a drained front end's
            if pid != self.pid and process_alive(pid) and notes is not None and \
                    _notes(notes)[0].get(name) != token:
                behind.append(pid)
        return behind

    def _failures(self, name: str, token: str) -> list[tuple[int, str]]:
        """(pid, reason) of each other live front end that noted a failure of record `token`
        of `name`."""
        failures = []
        for path in (self.directory / DONE).glob("*.json"):
            pid = int(path.stem) if path.stem.isdigit() else 0
            failed = _notes(_read(path))[1].get(name)
            if pid != self.pid and process_alive(pid) and isinstance(failed, list) \
                    and len(failed) == 2 and failed[0] == token:
                failures.append((pid, str(failed[1])))
        return sorted(failures)

    def _note_done(self) -> None:
        notes = {"done": self._done, "failed": self._failed}
        write_text_atomically(self.directory / DONE / f"{self.pid}.json",
                              orjson.dumps(notes).decode())

    def _record_path(self, name: str) -> Path:
        return self.directory / MODELS / f"{name}.json"

    @contextlib.asynccontextmanager
    async def _lock(self, name: str) -> AsyncIterator[None]:
        lock, users = self._locks.setdefault(name, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._locks[name]


async def load_answered(control: RepositoryControl, name: str,
                        config: dict[str, Any] | None) -> None:
    """`control.load`, a failure answered as Triton answers a failed load (HTTP 400, gRPC
    INVALID_ARGUMENT); one the drain abandoned is answered as such (503, UNAVAILABLE)."""
    try:
        await control.load(name, config)
    except ChangeAbandonedError:
        raise
    except SurgeError as exc:
        raise load_failure(exc) from None


def control_for(engine: InferenceEngine) -> RepositoryControl:
    """Shared with the other front ends when there are some (the directory set), else local."""
    directory = os.environ.get(CONTROL_DIR_ENV)
    return SharedControl(engine, directory) if directory else RepositoryControl(engine)


def _raise_failures(name: str, action: str, failures: list[tuple[int, str]]) -> None:
    if not failures:
        return
    where = "; ".join(f"front end pid {pid}: {reason}" for pid, reason in failures)
    state = ("the model is unavailable there while the other front ends serve the new load"
             if action == "load" else "the other front ends unloaded it")
    raise FollowerFailedError(
        f"model {name!r}: the {action} was done by this front end but failed on {where}; "
        f"{state}: {action} it again to retry every front end")


def _reason(error: Exception) -> str:
    text = str(error) if isinstance(error, SurgeError) else f"{type(error).__name__}: {error}"
    return clipped(text, MAX_REASON_CHARS)


def _notes(notes: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """A front end's notes read: the token of the last record it did and of the last it
    failed (with why), by model; empty while it has written none (or is gone)."""
    notes = notes or {}
    done, failed = notes.get("done"), notes.get("failed")
    return (done if isinstance(done, dict) else {}), (failed if isinstance(failed, dict)
                                                        else {})


def _read(path: Path) -> dict[str, Any] | None:
    """A record or a front end's notes; None when gone (a drained front end's notes)."""
    try:
        value = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


__all__ = ["CONTROL_DIR_ENV", "ChangeAbandonedError", "FollowerFailedError", "RepositoryControl",
           "SharedControl", "control_for", "load_answered"]
