"""Triton's sequence batcher with implicit state: the state store of one served model version.

A model whose config has `sequence_batching` keeps a state per sequence: each request names its
sequence (`sequence_id`, with `sequence_start` on the first and `sequence_end` on the last) and
sends only its real inputs; the store adds the state the sequence's previous request left (zeros
for a new one) as the state inputs, takes the state outputs off the answer and keeps them for
the next request. Requests of one sequence run one after the other (the second sees the state
the first left); requests of different sequences meet in the model's queue and batch together,
each row with its own sequence's state. A request that fails leaves its sequence's state as it
was. A sequence nobody continues for `max_sequence_idle_ms` is dropped. A request waits for
its sequence's earlier ones within its own timeout, which the wait uses up. A sequence dropped
because its model was unloaded, evicted or reloaded is told which, and when, on its next request
(`DroppedSequences` carries that from the stores of one load to those of the next).

The flags come in through the context variable `request_sequence`, as the variant pin does
(`surge.engine.route`): the engine's `infer` keeps one signature for every caller.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from surge.datatypes import v2_to_numpy
from surge.engine.failures import failure_reason
from surge.engine.instances import Clock
from surge.engine.stats import Counters
from surge.errors import (
    ConfigError,
    DeadlineExceededError,
    InputError,
    ModelNotReadyError,
    QueueFullError,
    shown,
)
from surge.repository.config import ModelConfig
from surge.repository.sequencing import SequenceBatchingConfig
from surge.runtimes.base import Signature, TensorSpec

Outputs = dict[str, np.ndarray]
# The model's queue: inputs, outputs asked for, and the timeout (µs) left to the request.
Compute = Callable[[dict[str, np.ndarray], list[str] | None, int | None], Awaitable[Outputs]]
SequenceId = int | str
# A string sequence_id is kept (as the key of its state, and once dropped, to say why) until
# the sequence ends or idles out: bounded, so that max_sequences bounds the memory it takes.
MAX_ID_CHARS = 1024
# Why a sequence that lived is gone, for its next request without sequence_start.
IDLED, RELOADED, UNLOADED, EVICTED = "idled", "reloaded", "unloaded", "evicted"
# How the next request is told its model's sequences went (then "at <when>").
_MODEL_DROPS = {RELOADED: "reloaded", UNLOADED: "unloaded",
                EVICTED: "evicted to make room (memory budget, least recently used)"}
# The expiry timer's shortest period: a sequence with a request in flight keeps it armed, and a
# period of microseconds would spin the event loop for as long; each request checks exactly.
MIN_TICK_S = 0.01


@dataclass(frozen=True, slots=True)
class SequenceFlags:
    """A request's V2 sequence parameters (`id` 0 or '' is no sequence, as in Triton)."""

    id: SequenceId
    start: bool = False
    end: bool = False


# Set by the front end around one engine call (surge.server.outcome.infer_routed).
request_sequence: ContextVar[SequenceFlags | None] = ContextVar("request_sequence", default=None)


@dataclass(frozen=True, slots=True)
class Drop:
    """Why a sequence went (IDLED, RELOADED, UNLOADED or EVICTED) and when (wall clock)."""

    why: str
    at: float = 0.0

    def when(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.at))


@dataclass(eq=False)
class _Sequence:
    """One live sequence: its state (None until a start succeeded), the lock that runs its
    requests in order, and the requests holding or awaiting it."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    state: dict[str, np.ndarray] | None = None
    users: int = 0
    last_used: float = 0.0


class SequenceStore:
    """The live sequences of one model version and their implicit states."""

    def __init__(self, model: str, config: SequenceBatchingConfig,
                 initial: dict[str, np.ndarray], batched: bool, clock: Clock,
                 gauge: Any = None, counters: Counters | None = None) -> None:
        self.model = model
        # The version's statistics: a request refused here never reaches the model's queue,
        # which counts every other failure (Triton's `fail`, by reason).
        self._counters = counters
        self._pairs = [(pair.input, pair.output) for pair in config.state]
        self._idle_s = config.max_sequence_idle_ms / 1e3
        self._max = config.max_sequences
        self._initial = initial
        self._batched = batched
        self._clock = clock
        self._gauge = gauge
        self._live: OrderedDict[SequenceId, _Sequence] = OrderedDict()  # least recent first
        # Ids dropped for idling, or with their model, so that their next request is told
        # why (bounded).
        self._gone: OrderedDict[SequenceId, Drop] = OrderedDict()
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._closing: Drop | None = None  # why the model's version stops, once known
        self._counted = 0  # this store's share of the gauge

    @property
    def live(self) -> int:
        return len(self._live)

    async def infer(self, inputs: dict[str, np.ndarray], outputs: list[str] | None,
                    compute: Compute, timeout_us: int | None = None, *,
                    bounded: bool = True) -> Outputs:
        """Run one request of a sequence through `compute` (the model's queue) with its state,
        once its sequence's earlier requests are done (within `timeout_us`, 0 or None: none;
        `bounded` False: however long that takes, where the model's queue policy delays a
        late request or ignores its `timeout`, and the queue then applies that policy)."""
        flags = self._flags()
        self._check_request(inputs, outputs)
        arrival = self._clock()
        self.expire(arrival)
        try:
            sequence = self._admit(flags)
        except QueueFullError as error:  # max_sequences live
            self._count_failed(arrival, error)
            raise
        sequence.users += 1
        try:
            try:
                left = await self._acquire(flags.id, sequence.lock, timeout_us, bounded)
            except (DeadlineExceededError, asyncio.CancelledError) as error:
                self._count_failed(arrival, error)  # timed out, or its client left, waiting
                raise
            try:
                return await self._run(flags, sequence, inputs, outputs, compute, left)
            finally:
                sequence.lock.release()
        finally:
            sequence.users -= 1
            self._release(flags.id, sequence)

    def _count_failed(self, arrival: float, error: BaseException) -> None:
        """A request that failed before reaching the model's queue: one `fail`, by reason."""
        if self._counters is not None:
            self._counters.count_failure(int((self._clock() - arrival) * 1e9),
                                         failure_reason(error))

    async def _acquire(self, sequence_id: SequenceId, lock: asyncio.Lock,
                       timeout_us: int | None, bounded: bool = True) -> int | None:
        """Take the sequence's lock within the request's timeout (the earlier requests of a
        busy sequence can take any time); returns the timeout left for the model's queue."""
        if not timeout_us:
            await lock.acquire()
            return timeout_us
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_us / 1e6
        if not bounded:  # the queue delays it (or ignores its timeout): never a 504 here,
            await lock.acquire()  # and one that waited past its timeout takes the level's
            left = int((deadline - loop.time()) * 1e6)
            return left if left > 0 else None
        try:
            async with asyncio.timeout_at(deadline):
                await lock.acquire()
        except TimeoutError:
            raise DeadlineExceededError(
                f"deadline exceeded: the request's timeout of {timeout_us} us passed while it "
                f"waited for the earlier requests of sequence {shown(sequence_id)} of model "
                f"{self.model!r} (a sequence's requests run one at a time)") from None
        return max(1, int((deadline - loop.time()) * 1e6))

    def _flags(self) -> SequenceFlags:
        flags = request_sequence.get()
        if flags is None or flags.id in (0, ""):
            raise InputError(f"inference request to model {self.model!r} must specify a "
                             "non-zero or non-empty sequence_id: it is a sequence model "
                             "(sequence_batching)")
        if isinstance(flags.id, str) and len(flags.id) > MAX_ID_CHARS:
            raise InputError(f"parameter 'sequence_id' of a request to model {self.model!r} is "
                             f"a string of {len(flags.id)} characters, more than the "
                             f"{MAX_ID_CHARS} a sequence id may have: use a shorter one")
        return flags

    def _check_request(self, inputs: dict[str, np.ndarray], outputs: list[str] | None) -> None:
        """The state tensors are the server's own; a batched sequence model takes one row."""
        for state_in, state_out in self._pairs:
            if state_in in inputs:
                raise InputError(f"input {state_in!r} of model {self.model!r} is its implicit "
                                 "sequence state, which the server feeds: leave it out")
            if outputs is not None and state_out in outputs:
                raise InputError(f"output {state_out!r} of model {self.model!r} is its implicit "
                                 "sequence state, which the server keeps: do not ask for it")
        if self._batched and inputs:
            rows = next(iter(inputs.values())).shape[:1]
            if rows != (1,):
                raise InputError(f"inference request to model {self.model!r} must specify "
                                 f"batch-size 1 due to requirements of sequence batcher, got "
                                 f"{rows[0] if rows else 'no batch dim'}")

    def _admit(self, flags: SequenceFlags) -> _Sequence:
        """The live sequence of `flags.id`; a new one for a start (within max_sequences)."""
        sequence = self._live.get(flags.id)
        if sequence is not None:
            return sequence
        if not flags.start:
            raise InputError(self._not_started(flags.id))
        if len(self._live) >= self._max:
            raise QueueFullError(
                f"model {self.model!r} holds {len(self._live)} live sequences, its "
                f"sequence_batching.max_sequences: sequence {shown(flags.id)} can start once "
                "one ends or idles out", retry_after_s=self._next_idle_out)
        self._gone.pop(flags.id, None)
        sequence = self._live[flags.id] = _Sequence(last_used=self._clock())
        self._count()
        return sequence

    def _next_idle_out(self) -> float:
        """Seconds until the least recently used sequence idles out, freeing a slot (the
        Retry-After of a start refused at max_sequences; the idle time when all are busy)."""
        now = self._clock()
        for sequence in self._live.values():
            if sequence.users == 0:
                return max(0.0, sequence.last_used + self._idle_s - now)
        return self._idle_s

    def _not_started(self, sequence_id: SequenceId) -> str:
        drop = self._gone.get(sequence_id)
        why = drop.why if drop is not None else None
        if drop is not None and why in _MODEL_DROPS:
            return (f"sequence {shown(sequence_id)} of model {self.model!r} was dropped with "
                    f"its state when the model was {_MODEL_DROPS[drop.why]} at {drop.when()} "
                    "(every sequence's state goes with the version that held it); send "
                    "sequence_start to begin it again")
        if why == IDLED:
            return (f"sequence {shown(sequence_id)} of model {self.model!r} timed out: no "
                    f"request for more than {self._idle_s * 1e3:g} ms "
                    "(sequence_batching.max_sequence_idle_ms) dropped it and its state; send "
                    "sequence_start to begin it again")
        return (f"inference request for sequence {shown(sequence_id)} to model {self.model!r} "
                "must specify the sequence_start flag on the first request of the sequence")

    async def _run(self, flags: SequenceFlags, sequence: _Sequence,
                   inputs: dict[str, np.ndarray], outputs: list[str] | None,
                   compute: Compute, timeout_us: int | None) -> Outputs:
        """Under the sequence's lock: the state in, the answer out, the new state kept only
        once the request succeeded."""
        if self._closed:  # unloaded or reloaded while it waited: a later one would not know it
            how = (f"{_MODEL_DROPS[self._closing.why]} at {self._closing.when()}"
                   if self._closing is not None else "unloaded or reloaded")
            raise ModelNotReadyError(
                f"model {self.model!r} was {how} before this request of sequence "
                f"{shown(flags.id)} ran, and every sequence's state went with it: send "
                "sequence_start to begin the sequence again")
        if flags.start:
            state = self._initial
        elif sequence.state is None:  # ended, or its start failed, while this one waited
            raise InputError(self._not_started(flags.id))
        else:
            state = sequence.state
        wanted = None if outputs is None else [*outputs, *(out for _, out in self._pairs)]
        answer = await compute({**inputs, **state}, wanted, timeout_us)
        kept = {state_in: np.array(answer.pop(state_out), copy=True)  # not a view of a slot
                for state_in, state_out in self._pairs}
        sequence.state = None if flags.end else kept
        return answer

    def _release(self, sequence_id: SequenceId, sequence: _Sequence) -> None:
        """After a request: the sequence is used now; one with no state left and nobody
        waiting (ended, or never started) is gone."""
        sequence.last_used = self._clock()
        if self._live.get(sequence_id) is not sequence:
            return
        if sequence.state is None and sequence.users == 0:
            del self._live[sequence_id]
            self._count()
        else:
            self._live.move_to_end(sequence_id)
            self._arm()

    def expire(self, now: float) -> list[SequenceId]:
        """Drop the sequences idle past max_sequence_idle_ms (none with a request in flight).
        `_live` runs from least to most recently used, so the scan stops at the first sequence
        still within its idle time: a request costs what expires, not every live sequence."""
        dropped = []
        for key, sequence in self._live.items():
            if now - sequence.last_used <= self._idle_s:
                break
            if sequence.users == 0:
                dropped.append(key)
        for key in dropped:
            del self._live[key]
            self._forget(key, Drop(IDLED))
        if dropped:
            self._count()
        return dropped

    def _forget(self, sequence_id: SequenceId, drop: Drop) -> None:
        self._gone[sequence_id] = drop
        self._gone.move_to_end(sequence_id)
        while len(self._gone) > self._max:
            self._gone.popitem(last=False)

    def departures(self, why: str, at: float) -> dict[SequenceId, Drop]:
        """The sequences this version loses as its model goes (`why`, at `at`): the live
        ones, after those already gone (which keep their own reason), max_sequences at most
        (the most recent: no store remembers more). Marks the version as going, so that a
        request still waiting for its sequence is told why too."""
        self._closing = Drop(why, at)
        gone: dict[SequenceId, Drop] = dict(self._gone)
        gone.update(dict.fromkeys(self._live, self._closing))
        return dict(list(gone.items())[-self._max:])

    def learn(self, departures: dict[SequenceId, Drop]) -> None:
        """Remember why the sequences of an earlier version of the model went."""
        for sequence_id, drop in departures.items():
            self._forget(sequence_id, drop)

    def live_ids(self) -> list[SequenceId]:
        return list(self._live)

    def _arm(self) -> None:
        """Expire idle sequences without waiting for the next request (frees their state and
        sets the gauge); the timer runs while sequences live."""
        if self._timer is None and self._live:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(max(self._idle_s, MIN_TICK_S), self._tick)

    def _tick(self) -> None:
        self._timer = None
        self.expire(self._clock())
        self._arm()

    def close(self) -> None:
        """The model version stopped: every sequence's state goes with it."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._live.clear()
        self._count()

    def _count(self) -> None:
        """Move the model's gauge by this store's change: the versions of a model, and the old
        and new one during a reload, share it (set, the last store would hide the others')."""
        if self._gauge is not None and len(self._live) != self._counted:
            self._gauge.inc(len(self._live) - self._counted)
            self._counted = len(self._live)


def _stores(served: Iterable[object]) -> list[SequenceStore]:
    return [store for item in served if (store := getattr(item, "sequences", None))]


class DroppedSequences:
    """The sequences each model lost as it was unloaded or evicted, kept until it loads again
    (bounded by its max_sequences per version): the stores of its next load tell their next
    requests why they are gone, as a reload's do."""

    def __init__(self) -> None:
        self._left: dict[str, dict[SequenceId, Drop]] = {}

    def left(self, name: str, served: Iterable[object], why: str) -> None:
        """Model `name` stops serving `served` (UNLOADED or EVICTED), now."""
        at = time.time()
        for store in _stores(served):
            self._left.setdefault(name, {}).update(store.departures(why, at))

    def carry(self, name: str, fresh: Iterable[object], old: Iterable[object]) -> None:
        """Model `name` loaded `fresh` versions in place of `old` ones (none after an unload
        or eviction): the fresh stores learn what went before, `old`'s sequences as reloaded."""
        gone = self._left.pop(name, {})
        at = time.time()
        for store in _stores(old):
            gone.update(store.departures(RELOADED, at))
        for store in _stores(fresh):
            store.learn(gone)


def open_sequences(name: str, config: ModelConfig, signature: Signature, clock: Clock,
                   gauges: Any = None, counters: Counters | None = None
                   ) -> SequenceStore | None:
    """The state store of a sequence model (None for any other), once its state pairs are
    checked against the model's signature; the requests it refuses count in `counters`."""
    sequencing = config.sequence_batching
    if sequencing is None:
        return None
    initial = {pair.input: _initial_state(name, signature, pair.input, pair.output)
               for pair in sequencing.state}
    gauge = gauges.labels(name) if gauges is not None else None  # only sequence models'
    return SequenceStore(name, sequencing, initial, signature.batched, clock, gauge, counters)


def _initial_state(model: str, signature: Signature, state_in: str, state_out: str
                   ) -> np.ndarray:
    """Zeros of the state's datatype and shape (one row of a batched model)."""
    where = f"model {model!r}: sequence_batching.state {{input: {state_in}, output: {state_out}}}"
    spec_in = _spec(signature.inputs, state_in, "input", signature.input_names, where)
    spec_out = _spec(signature.outputs, state_out, "output", signature.output_names, where)
    if spec_in.datatype != spec_out.datatype or tuple(spec_in.shape) != tuple(spec_out.shape):
        raise ConfigError(f"{where}: input {state_in!r} ({spec_in.describe()}) and output "
                          f"{state_out!r} ({spec_out.describe()}) must have one datatype and "
                          "shape")
    shape = list(spec_in.shape[1:] if signature.batched else spec_in.shape)
    if any(dim < 0 for dim in shape):
        raise ConfigError(f"{where}: input {state_in!r} ({spec_in.describe()}) has a variable "
                          "dim past the batch dim; the initial "
                          "state needs fixed dims (declare them under `inputs`/`outputs`)")
    dims = [1, *shape] if signature.batched else shape
    return np.zeros(dims, dtype=v2_to_numpy(spec_in.datatype))


def _spec(specs: Sequence[TensorSpec], name: str, kind: str, names: list[str], where: str
          ) -> TensorSpec:
    for spec in specs:
        if spec.name == name:
            return spec
    raise ConfigError(f"{where}: the model has no {kind} {name!r} (its {kind}s: "
                      f"{', '.join(names)})")
