"""A shared worker group: worker processes that each host several models.

The processes are managed as a `WorkerPool` manages its own (spawn, restart with backoff,
crash and hang handling); what differs is what they hold. Each starts empty and is then told to
load every model of the group, one `LoadModel` at a time. Each model is a *member* with an id
of its own (a reload runs the new copy beside the old), and every batch names the member it is
for. A member's served model sees the group through a `GroupMember`, an `InstancePool` whose
free places are those of the processes that loaded it.

Each member keeps its own queue and batching (its served model's scheduler); members compete
for the processes' places, and one that found none is woken, in the order they asked, when a
place frees. A crash fails the batch its process was computing, whichever member it was for,
and the process comes back with every member of the group.

The seam for eviction: `load_model(member)` and `unload_model(member_id)` add or drop one model
in every process of the group; the other members keep serving throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from surge.errors import ModelLoadError, ServingError, WorkerCrashedError
from surge.runtimes.base import Signature, SpinWait
from surge.scheduler.types import Batch
from surge.workers.events import PoolEvents
from surge.workers.hang import HangRule
from surge.workers.messages import (
    GroupReady,
    LoadModel,
    ModelLoaded,
    ModelLoadFailed,
    ModelUnloaded,
    UnloadModel,
    Warmup,
)
from surge.workers.placement import Placement
from surge.workers.pool import (
    BatchResult,
    State,
    Worker,
    WorkerPool,
    dispatch_order,
)
from surge.workers.shared_worker import GroupSpec, group_main

log = logging.getLogger(__name__)

SLOT_BYTES = 64 * 1024  # first size of a shared process's slots; they grow to its largest batch
_serial = itertools.count(1)


@dataclass
class Member:
    """One model of a group, as the group tracks it."""

    ref: str  # model name, or name@variant
    version: int | None
    placements: list[Placement]  # its threads and device in process i: placements[i % len]
    events: PoolEvents
    hang: HangRule = field(default_factory=HangRule)
    spin_wait: SpinWait = False
    warmup: Warmup = None  # the front end's model_warmup
    load_timeout_s: float | None = None  # how long a restarted process may take to reload it
    id: str = ""
    signature: Signature | None = None
    warm: bool = False  # loaded by every process once
    failed: str = ""  # why its first load failed
    added: dict[int, int] = field(default_factory=dict)  # process -> RSS its load added
    given_up: set[int] = field(default_factory=set)  # processes whose reload of it timed out

    def __post_init__(self) -> None:
        if not self.id:
            self.id = f"{self.ref}:{self.version or 0}:{next(_serial)}"

    def load_message(self, index: int) -> LoadModel:
        placement = self.placements[index % len(self.placements)]
        return LoadModel(self.id, self.ref, self.version, placement.threads, placement.device,
                         self.spin_wait, self.warmup)


class WorkerGroup(WorkerPool):
    """The processes of one shared worker group and the members they host."""

    def __init__(self, root: str, name: str, placements: list[Placement], *,
                 transport: str | None = None,
                 on_empty: Callable[[WorkerGroup], None] | None = None) -> None:
        super().__init__(root, name, None, placements, self._route_done, transport=transport,
                         on_requeue=self._route_requeue, on_hung=self._route_hung,
                         on_spawn_failure=self._route_spawn_failure)
        self.name = name
        self.label = f"shared worker group {name!r}"
        self.members: dict[str, Member] = {}
        self.closing = False  # its last member left: the processes stop
        self._on_empty = on_empty
        self._owners: dict[int, Member] = {}  # id(batch) -> the member it was sent for
        self._hosted: dict[int, dict[str, str]] = {}  # process -> member id -> device
        self._ops: dict[int, deque[str]] = {}  # process -> member ids loading/unloading, in order
        self._waiting: dict[str, Member] = {}  # members that found no free place, in order
        self._reloads: dict[int, asyncio.TimerHandle] = {}  # process -> its reload's time limit
        self._wake_soon = False
        self._started: asyncio.Task[None] | None = None

    @property
    def processes(self) -> int:
        return len(self.placements)

    def _entry(self, index: int) -> tuple[Callable[[Any, Connection], None], object]:
        return group_main, GroupSpec(self.root, self.name, self.placements[index].threads)

    # -- load and unload (the seam eviction uses) --------------------------------------------
    async def load_model(self, member: Member) -> None:
        """Load `member` in every process; return once all have it warm. The others serve on."""
        if self.closing:
            raise ModelLoadError(f"model {member.ref!r}: {self.label} is stopping")
        if self._started is None:
            self._started = asyncio.ensure_future(self.start())
        try:
            await asyncio.shield(self._started)
        except ModelLoadError as exc:
            self._empty()
            raise ModelLoadError(f"model {member.ref!r}: {self.label}: {exc}") from None
        self.members[member.id] = member
        self._reconcile_all()
        while not member.failed and not self._hosted_everywhere(member):
            self._changed.clear()
            await self._changed.wait()
        if member.failed:
            await self.unload_model(member.id)
            raise ModelLoadError(f"model {member.ref!r}: {member.failed}")
        member.warm = True

    async def unload_model(self, member_id: str, timeout_s: float = 5.0) -> None:
        """Drop a member from every process; its batches still computing fail. The processes
        stop with the group's last member."""
        member = self.members.pop(member_id, None)
        self._waiting.pop(member_id, None)
        if member is not None:
            self._fail_in_flight(member)
        if not self.members:
            self._empty()
            await self.stop(timeout_s)
            self._changed.set()  # unloads waiting for their answers: there are no processes
            return
        self._restart_loading(member_id)
        self._reconcile_all()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._until_gone(member_id), timeout_s)

    async def _until_gone(self, member_id: str) -> None:
        while any(member_id in self._hosted.get(w.index, {}) for w in self._live_workers()):
            self._changed.clear()
            await self._changed.wait()

    def _restart_loading(self, member_id: str) -> None:
        """A process still loading a member that left (its load timed out, say) would go on
        loading it, the other members' loads and batches waiting behind: restart it."""
        for worker in self._live_workers():
            if self._loading(worker.index) == member_id:
                self._crashed(worker, "was still loading a model that was unloaded, and was "
                              "killed", started=0)

    def _loading(self, index: int) -> str | None:
        """The member process `index` is loading now, if any (its ops' head, not yet hosted)."""
        ops = self._ops.get(index)
        if ops and ops[0] not in self._hosted.get(index, {}):
            return ops[0]
        return None

    def _empty(self) -> None:
        self.closing = True
        if self._on_empty is not None:
            self._on_empty(self)

    def _fail_in_flight(self, member: Member) -> None:
        """Answer the member's batches still in the processes; their results are dropped."""
        for worker in self._live_workers():
            for batch in worker.batches:
                if self._owners.get(id(batch)) is member:
                    del self._owners[id(batch)]
                    member.events.on_done(batch, None, WorkerCrashedError(
                        f"model {member.ref!r} was unloaded while computing this request"), None)

    def _live_workers(self) -> list[Worker]:
        return [w for w in self._workers if w is not None and w.state is State.READY]

    def _hosted_everywhere(self, member: Member) -> bool:
        return all(w is not None and w.state is State.READY
                   and member.id in self._hosted.get(w.index, {}) for w in self._workers)

    # -- what a member sees (GroupMember) -----------------------------------------------------
    def hosts(self, member: Member) -> list[Worker]:
        """Live processes that loaded `member`."""
        return [w for w in self._live_workers() if member.id in self._hosted.get(w.index, {})]

    def free_for(self, member: Member) -> int:
        """Places `member` can take now; with none, it is woken when one frees."""
        free = sum(w.free for w in self.hosts(member))
        if free == 0 and member.id in self.members:
            self._waiting.setdefault(member.id, member)
        return free

    def dispatch_for(self, member: Member, batch: Batch) -> None:
        """Send `batch` to a process that hosts `member`, chosen as a pool chooses its worker."""
        hosts = self.hosts(member)
        worker = max(hosts, key=dispatch_order) if hosts else None
        if worker is None or worker.free <= 0:  # a latency probe sent without asking
            member.events.on_done(batch, None, ServingError(
                f"model {member.ref!r}: no free place in {self.label}"), None)
            return
        self._owners[id(batch)] = member
        self._send_to(worker, batch, member.id)

    def devices_of(self, member: Member) -> tuple[str, ...]:
        """Where each process hosting `member` runs it."""
        return tuple(self._hosted[w.index][member.id] for w in self.hosts(member))

    def resident_bytes(self, member: Member) -> int:
        """Resident memory the member's loads added, over the processes hosting it."""
        return sum(member.added.get(w.index, 0) for w in self.hosts(member))

    # -- messages from the processes ----------------------------------------------------------
    def _handle(self, worker: Worker, message: object) -> None:
        if isinstance(message, GroupReady):
            self._process_ready(worker, message)
        elif isinstance(message, ModelLoaded):
            self._loaded(worker, message)
        elif isinstance(message, ModelLoadFailed):
            self._load_failed(worker, message)
        elif isinstance(message, ModelUnloaded):
            self._op_done(worker, message.member)
            self._hosted.get(worker.index, {}).pop(message.member, None)
            self._changed.set()
        else:
            super()._handle(worker, message)
            return
        self._reconcile(worker)

    def _process_ready(self, worker: Worker, message: GroupReady) -> None:
        self._hosted[worker.index] = {}
        self._ops[worker.index] = deque()
        if worker.transport is None and not self._set_up_transport(worker, SLOT_BYTES,
                                                                     SLOT_BYTES):
            return
        self._mark_ready(worker, message.pid, message.threads, "")

    def _loaded(self, worker: Worker, message: ModelLoaded) -> None:
        self._op_done(worker, message.member)
        self._hosted.setdefault(worker.index, {})[message.member] = message.device
        member = self.members.get(message.member)
        if member is not None:
            member.signature = member.signature or message.signature
            member.added[worker.index] = message.added_bytes
            if member.warm:  # a restarted process has it back
                member.events.on_ready()
        self._changed.set()

    def _load_failed(self, worker: Worker, message: ModelLoadFailed) -> None:
        self._op_done(worker, message.member)
        member = self.members.get(message.member)
        if member is None:
            return
        if member.warm:  # it loaded before: the group's other processes still serve it
            log.error("%s[%d] could not reload model %s: %s", self.name, worker.index,
                      member.ref, message.error)
        else:
            member.failed = message.error
        self._changed.set()

    def _op_done(self, worker: Worker, member_id: str) -> None:
        ops = self._ops.get(worker.index)
        if ops and ops[0] == member_id:
            ops.popleft()
            self._untime_reload(worker.index)

    def _reconcile_all(self) -> None:
        for worker in self._live_workers():
            self._reconcile(worker)

    def _reconcile(self, worker: Worker) -> None:
        """Send `worker` its next load or unload, one at a time, until it hosts the members."""
        ops = self._ops.get(worker.index)
        if worker.state is not State.READY or ops is None or ops or self.closing:
            return
        hosted = self._hosted[worker.index]
        message: LoadModel | UnloadModel | None = None
        for member in self.members.values():
            if member.id not in hosted and not member.failed and (
                    worker.index not in member.given_up):
                message = member.load_message(worker.index)
                if member.warm:
                    self._time_reload(worker, member)
                break
        else:
            gone = [m for m in hosted if m not in self.members]
            message = UnloadModel(gone[0]) if gone else None
        if message is None:
            return
        ops.append(message.member)
        try:
            worker.conn.send(message)
        except OSError:
            self._crashed(worker)

    def _time_reload(self, worker: Worker, member: Member) -> None:
        """A restarted process reloads its members one at a time: one whose reload never ends
        (a warm-up that hangs now) would hold the members after it out for good."""
        if member.load_timeout_s is None:
            return
        assert self._loop is not None
        self._reloads[worker.index] = self._loop.call_later(
            member.load_timeout_s, self._reload_overdue, worker, member)

    def _untime_reload(self, index: int) -> None:
        timer = self._reloads.pop(index, None)
        if timer is not None:
            timer.cancel()

    def _reload_overdue(self, worker: Worker, member: Member) -> None:
        """Killed and restarted without it: it is not loaded there again until it is reloaded
        (a load replaces the member), and the process's other members come back."""
        self._reloads.pop(worker.index, None)
        if self._workers[worker.index] is not worker or self._loading(worker.index) != member.id:
            return
        member.given_up.add(worker.index)
        self._crashed(worker, f"did not reload model {member.ref!r} within "
                      f"{member.load_timeout_s:g} s (load_timeout_s) and was killed; that model "
                      "is not loaded there again until it is reloaded", started=0)

    # -- batches and faults, routed to the member each batch was for --------------------------
    def _route_done(self, batch: Batch, outputs: dict[str, np.ndarray] | None,
                    error: Exception | None, result: BatchResult | None) -> None:
        member = self._owners.pop(id(batch), None)
        if member is not None:  # else: it was unloaded and its requests answered already
            member.events.on_done(batch, outputs, error, result)
        self._wake_waiting()

    def _route_requeue(self, batch: Batch) -> None:
        member = self._owners.pop(id(batch), None)
        if member is not None:
            member.events.on_requeue(batch)

    def _route_hung(self, batch: Batch) -> None:
        member = self._owners.pop(id(batch), None)
        if member is not None:
            member.events.on_hung(batch)

    def _route_spawn_failure(self) -> None:
        for member in list(self.members.values()):
            member.events.on_spawn_failure()

    def _owner(self, batch: Batch) -> str:
        member = self._owners.get(id(batch))
        return f"model {member.ref!r}" if member is not None else self.label

    def _batch_limit(self, batch: Batch) -> float | None:
        member = self._owners.get(id(batch))
        if member is None:
            return None
        return member.hang.limit(member.events.batch_estimate(batch.size))

    def _restarting(self, worker: Worker) -> None:
        """A process died: its members lose an instance until it has loaded them again."""
        hosted = self._hosted.pop(worker.index, {})
        ops = self._ops.pop(worker.index, deque())
        self._untime_reload(worker.index)
        loading = self.members.get(ops[0]) if ops else None
        if loading is not None and not loading.warm and loading.id not in hosted:
            # It died loading this model: restarting with it would only crash it again.
            loading.failed = (f"the process of {self.label} loading it died (exit code "
                              f"{worker.process.exitcode})")
            self._changed.set()
        for member_id in hosted:
            member = self.members.get(member_id)
            if member is not None and member.warm:
                member.events.on_restart()

    def _wake_waiting(self) -> None:
        """A place freed: wake the members that found none, once the current step is done."""
        if self._waiting and not self._wake_soon and self._loop is not None:
            self._wake_soon = True
            self._loop.call_soon(self._wake_next)

    def _wake_next(self) -> None:
        """Wake as many waiting members as there are free places, oldest first.

        Woken drivers step before the next round (call_soon keeps order), so the next round
        sees what they took: a place left by one that had nothing to send goes on to the next
        member, even when no batch is computing any more to trigger another round.
        """
        self._wake_soon = False
        free = sum(w.free for w in self._live_workers())
        woken = 0
        while woken < free and self._waiting:
            member_id = next(iter(self._waiting))
            self._waiting.pop(member_id).events.wake()
            woken += 1
        if woken and self._waiting:
            self._wake_waiting()


class GroupMember:
    """One member's view onto its group: the `InstancePool` its served model drives."""

    def __init__(self, group: WorkerGroup, member: Member,
                 rejoin: Callable[[], WorkerGroup] | None = None) -> None:
        self.group = group
        self.member = member
        # The group's last model may leave between this view's creation and its start: the
        # group stops, and the start joins the group of that name that runs then.
        self._rejoin = rejoin

    @property
    def signature(self) -> Signature | None:
        return self.member.signature

    @property
    def instances(self) -> int:
        return self.group.processes

    @property
    def ready(self) -> bool:
        return (self.member.warm and self.member.id in self.group.members
                and bool(self.group.hosts(self.member)))

    @property
    def idle_count(self) -> int:
        return self.group.free_for(self.member)

    @property
    def idle_workers(self) -> int:
        return sum(1 for w in self.group.hosts(self.member) if not w.batches)

    async def start(self) -> None:
        if self.group.closing and self._rejoin is not None:
            self.group = self._rejoin()
        await self.group.load_model(self.member)

    async def stop(self, timeout_s: float = 5.0) -> None:
        await self.group.unload_model(self.member.id, timeout_s)

    def devices(self) -> tuple[str, ...]:
        return self.group.devices_of(self.member)

    def dispatch(self, batch: Batch) -> None:
        self.group.dispatch_for(self.member, batch)

    def resident_bytes(self) -> int:
        """Memory this model's loads added to the group's processes (for memory budgets)."""
        return self.group.resident_bytes(self.member)
