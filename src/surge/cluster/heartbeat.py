"""Heartbeats of a pool's actors: who is silent, judged against each one's own jitter.

A fixed limit (N pings in a row unanswered) declared both nodes of a saturated two-core
machine silent while they were computing: under load an answer can take seconds. So:

- the limit adapts to what each instance has shown: `GAP_MARGIN` times the longest gap
  between its recent answers, never below `misses` periods, never above `MAX_SILENCE_S`
  (still well under Ray's own 15-55 s before it declares a silent node dead);
- the pings go out from a thread of their own, not from behind a busy event loop;
- time the watcher itself did not run (its thread got no CPU) is not held against anyone:
  a late watcher cannot tell a silent node from its own lateness;
- several instances silent all at once are not declared lost (the last run on a saturated
  machine lost both nodes' instances that way);
- an instance on this very machine (its channel shares memory) competes for the cores with
  everything else here: with a run queue N times the cores, each process gets about 1/N of
  its share, so its limit is stretched by N (the load average over the cores, at least 1):
  idle actors on a machine at load 20 on 2 cores took over 1 s to answer a ping.

`Liveness` is the pure rule (tested with a fake clock); `Heartbeat` runs it on a thread.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

GAP_MARGIN = 2.0  # silence allowed, in multiples of the longest recent gap between answers
GAPS_KEPT = 32  # recent gaps per instance the limit is drawn from
MAX_SILENCE_S = 10.0  # the limit never grows beyond this (unless misses * period is longer)


@dataclass
class Liveness:
    """When each instance last answered, and whether it has now been silent too long."""

    period_s: float
    misses: int
    _last: dict[int, tuple[float, float]] = field(default_factory=dict)  # time, stalled then
    _gaps: dict[int, deque[float]] = field(default_factory=dict)
    _stalled: float = 0.0  # seconds the watcher ran late, in all
    _ticked: float | None = None
    _local: set[int] = field(default_factory=set)  # instances on the watcher's machine
    _slowdown: float = 1.0  # of this machine: its load over its cores, at least 1

    def tick(self, now: float, slowdown: float = 1.0) -> None:
        """The watcher's round at `now`: the part of its wait beyond one period (it got no
        CPU) is counted against no one; `slowdown`: this machine's now."""
        if self._ticked is not None:
            self._stalled += max(0.0, now - self._ticked - self.period_s)
        self._ticked = now
        self._slowdown = max(1.0, slowdown)

    def on_this_machine(self, key: int) -> None:
        """`key` runs on the watcher's machine: this machine's slowdown stretches its limit."""
        self._local.add(key)

    def beat(self, key: int, now: float) -> None:
        """`key` answered (a ping, or a batch) at `now`."""
        last = self._last.get(key)
        if last is not None:
            self._gaps.setdefault(key, deque(maxlen=GAPS_KEPT)).append(self._silence(now, last))
        self._last[key] = (now, self._stalled)

    def forget(self, key: int) -> None:
        self._last.pop(key, None)
        self._gaps.pop(key, None)
        self._local.discard(key)

    def limit(self, key: int) -> float:
        """How long `key` may stay silent: its observed jitter (stretched by this machine's
        slowdown when it runs here), within the bounds."""
        floor = self.period_s * self.misses
        gaps = self._gaps.get(key)
        allowed = max(floor, GAP_MARGIN * max(gaps) if gaps else 0.0)
        if key in self._local:
            allowed *= self._slowdown
        return max(floor, min(allowed, MAX_SILENCE_S))

    def silent(self, now: float) -> list[int]:
        """The instances silent for longer than their limit at `now`; none when every one
        of several is: the watcher's side (a starved or cut-off front end) is then likelier
        than all their nodes failing together, and Ray still reports actors that died."""
        over = [key for key, last in self._last.items()
                if self._silence(now, last) > self.limit(key)]
        return [] if len(self._last) > 1 and len(over) == len(self._last) else over

    def _silence(self, now: float, last: tuple[float, float]) -> float:
        at, stalled = last
        return max(0.0, now - at - (self._stalled - stalled))


Report = Callable[[int, str], None]  # instance index, cause: called from the thread


class Heartbeat:
    """Pings a pool's instances every period from its own thread; reports, through
    `report`, each one that is silent ("heartbeat") or whose actor is gone (Ray's error)."""

    def __init__(self, period_s: float, misses: int, report: Report) -> None:
        self.liveness = Liveness(period_s, misses)
        self._report = report
        self._actors: dict[int, Any] = {}
        self._pings: dict[int, Any] = {}  # index -> its unanswered ping (an ObjectRef)
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="surge-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def watch(self, index: int, actor: Any, on_this_machine: bool = False) -> None:
        with self._lock:
            self._actors[index] = actor
            self.liveness.beat(index, time.monotonic())
            if on_this_machine:
                self.liveness.on_this_machine(index)

    def forget(self, index: int) -> None:
        with self._lock:
            self._actors.pop(index, None)
            self._pings.pop(index, None)
            self.liveness.forget(index)

    def beat(self, index: int) -> None:
        """Proof of life other than a ping (a batch came back)."""
        with self._lock:
            if index in self._actors:
                self.liveness.beat(index, time.monotonic())

    def _run(self) -> None:
        import ray

        while not self._stopped.wait(self.liveness.period_s):
            try:
                self._round(ray)
            except Exception:  # a bug here must not stop the heartbeat for good
                log.exception("heartbeat round failed")

    def _round(self, ray: Any) -> None:
        with self._lock:
            pings = dict(self._pings)
        answered = _answered(ray, pings)
        verdicts: list[tuple[int, str]] = []
        with self._lock:
            now = time.monotonic()
            self.liveness.tick(now, machine_slowdown())
            for index, error in answered.items():
                self._pings.pop(index, None)  # a new ping goes out below
                if error:
                    verdicts.append((index, error))
                elif error is not None and index in self._actors:
                    self.liveness.beat(index, now)
            verdicts += [(index, "heartbeat") for index in self.liveness.silent(now)]
            for index, _ in verdicts:
                self._actors.pop(index, None)
                self.liveness.forget(index)
            for index, actor in self._actors.items():
                if index not in self._pings:
                    self._pings[index] = actor.ping.remote()
        for index, cause in verdicts:
            self._report(index, cause)


def machine_slowdown() -> float:
    """This machine's run queue over its cores (the 1-minute load average; both are the
    whole machine's, whatever share of it this process may use)."""
    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except OSError:  # no load average on this platform
        return 1.0


def _answered(ray: Any, pings: dict[int, Any]) -> dict[int, str | None]:
    """The pings answered by now: index -> "" (alive), the name of Ray's error (the actor or
    its node is gone), or None (a ping Ray no longer knows: sent again, proving nothing)."""
    if not pings:
        return {}
    try:
        ready, _ = ray.wait(list(pings.values()), num_returns=len(pings), timeout=0)
    except ValueError:
        # "a Ray object whose owner is unknown": seen once on a saturated machine. One by
        # one, so one such ping does not stop the heartbeat of every instance.
        return _answered_one_by_one(ray, pings)
    done = set(ready)
    return {index: _result(ray, ref) for index, ref in pings.items() if ref in done}


def _answered_one_by_one(ray: Any, pings: dict[int, Any]) -> dict[int, str | None]:
    out: dict[int, str | None] = {}
    for index, ref in pings.items():
        try:
            ready, _ = ray.wait([ref], timeout=0)
        except ValueError:
            out[index] = None
            continue
        if ready:
            out[index] = _result(ray, ref)
    return out


def _result(ray: Any, ref: Any) -> str:
    try:
        ray.get(ref, timeout=0)
    except Exception as exc:  # RayActorError and kin: the actor or its node is gone
        return type(exc).__name__
    return ""
