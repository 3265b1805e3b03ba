"""How long a request may wait for its model's load on demand: the deadline it would be queued
under, by the model's queue policy (`queue` in config.yaml, read before the load), so that a
request's `timeout` means the same whether its model was loaded or not.

    own `timeout`, where its level lets it override    -> that timeout (what is left of it
                                                           goes on to the queue)
    none given, or its level ignores it                 -> the level's default_timeout_ms, else
    (allow_timeout_override: false)                        the model's queue.default_timeout_ms,
                                                           else no bound
    its level's timeout_action is delay                 -> no bound: the queue keeps a late
                                                           request rather than failing it

A model whose config.yaml cannot be read, or is not read within the request's own `timeout`
(a stalled disk), waits for its load (which then fails, saying why) within that `timeout` only;
the time the reading took counts against the wait (`LoadWait.spent`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from surge.repository import ModelConfig
from surge.repository.queueing import QueueConfig
from surge.scheduler.queues import LevelCounts
from surge.scheduler.types import check_timeout, priority_level


@dataclass(frozen=True, slots=True)
class LoadWait:
    """The bound on one request's wait for a load."""

    seconds: float | None  # None: the wait is not cut short
    own: bool  # the request's own `timeout`: the time the wait took is taken off it
    source: str  # what set the bound, for the refusal
    note: str = ""  # said after it: why the request's own `timeout` did not count

    def spent(self, seconds: float) -> LoadWait:
        """This bound with `seconds` of it gone (the wait started that long ago)."""
        if self.seconds is None:
            return self
        return replace(self, seconds=max(0.0, self.seconds - seconds))

    def left_us(self, timeout_us: int | None, waited_s: float) -> int | None:
        """The `timeout` the request is queued with once loaded: what is left of its own (at
        least 1 µs; under delay none, so that the queue's policy takes it), else as given
        (the queue then applies its default timeout, or ignores the given one)."""
        if not self.own or not timeout_us:
            return timeout_us
        left = timeout_us - int(waited_s * 1e6)
        if self.seconds is None:
            return left if left > 0 else None
        return max(1, left)


def queue_policy(config: ModelConfig) -> QueueConfig:
    """The queue policy the requests of `config`'s model are queued under. A pipeline has
    no queue of its own: its requests queue at its step models, each under its own policy,
    with what is left of their `timeout`; its `queue` section applies to none of them, so its
    load is waited for within the request's own `timeout` only, as the pipeline honours it."""
    return QueueConfig() if config.kind == "pipeline" else config.queue


def load_wait(queue: QueueConfig | None, priority: int, timeout_us: int | None) -> LoadWait:
    """The bound on the wait for a load of a request of V2 `priority` with `timeout`
    (microseconds; None or 0: none) under `queue` (None: the config could not be read).
    InputError for a priority or timeout the queue would refuse."""
    level = priority_level(priority)
    check_timeout(timeout_us)
    own = f"the request's timeout of {(timeout_us or 0) / 1e3:g} ms"
    if queue is None:
        return LoadWait(timeout_us / 1e6 if timeout_us else None, True, own)
    levels = LevelCounts(queue.level_policies())
    overrides = levels.overrides(level, queue.allow_timeout_override)
    if levels.delays(level, queue.timeout_action):
        return LoadWait(None, overrides, "")
    if timeout_us and overrides:
        return LoadWait(timeout_us / 1e6, True, own)
    default_ms = queue.default_timeout_ms
    default = levels.timeout(level, default_ms / 1e3 if default_ms is not None else None)
    if default is None:
        return LoadWait(None, False, "")
    ignored = (" (the request's `timeout` is ignored: allow_timeout_override is false)"
               if timeout_us else "")
    return LoadWait(default, False, f"{levels.timeout_source(level)} ({default * 1e3:g} ms)",
                    ignored)
