"""The heartbeat rule on a fake clock: a silent instance is found, a jittery or merely late
one (a saturated machine) is not, a watcher that got no CPU blames no one, and a node taken
for silent is avoided only for a while."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from surge.cluster.heartbeat import GAP_MARGIN, MAX_SILENCE_S, Liveness, _answered
from surge.cluster.site import SUSPECT_S, ClusterSite

PERIOD = 0.5
MISSES = 4  # a fixed limit would be 2 s


def watched(answers: list[float], until: float) -> Liveness:
    """Instance 1 answers at `answers`; the watcher ticks every period up to `until`."""
    liveness = Liveness(PERIOD, MISSES)
    pending = sorted(answers)
    now = 0.0
    liveness.tick(now)
    liveness.beat(1, now)
    while now < until:
        now = round(now + PERIOD, 6)
        liveness.tick(now)
        while pending and pending[0] <= now:
            liveness.beat(1, pending.pop(0))
    return liveness


def test_an_instance_answering_every_period_is_never_silent() -> None:
    liveness = watched([i * PERIOD for i in range(1, 41)], until=20.0)
    assert liveness.silent(20.0) == []
    assert liveness.limit(1) == PERIOD * MISSES


def test_an_instance_that_stops_answering_is_silent_after_misses_periods() -> None:
    liveness = watched([i * PERIOD for i in range(1, 11)], until=5.0)  # last answer at 5 s
    assert liveness.silent(5.0 + PERIOD * MISSES) == []
    assert liveness.silent(5.0 + PERIOD * MISSES + 0.01) == [1]


def test_the_limit_follows_the_jitter_an_instance_has_shown() -> None:
    # A loaded node: answers 3 s apart at times (a fixed 2 s limit would declare it silent).
    answers = [0.5, 1.0, 4.0, 4.5, 7.5, 8.0]
    liveness = watched(answers, until=8.0)
    assert liveness.limit(1) == pytest.approx(GAP_MARGIN * 3.0)
    assert liveness.silent(8.0 + 3.5) == []  # late again, within what it has shown
    assert liveness.silent(8.0 + GAP_MARGIN * 3.0 + 0.01) == [1]  # but not for ever


def test_the_limit_never_exceeds_its_ceiling() -> None:
    liveness = watched([0.5, 30.0], until=30.0)  # one answer after a 29.5 s gap
    assert liveness.limit(1) == MAX_SILENCE_S
    assert liveness.silent(30.0 + MAX_SILENCE_S + 0.01) == [1]


def test_time_the_watcher_did_not_run_is_held_against_no_one() -> None:
    liveness = Liveness(PERIOD, MISSES)
    liveness.tick(0.0)
    liveness.beat(1, 0.0)
    liveness.tick(0.5)
    liveness.tick(6.5)  # the watcher's thread got no CPU for 5.5 s
    assert liveness.silent(6.5) == []  # only one period of it was the instance's to answer
    liveness.tick(7.0)
    liveness.tick(7.5)
    assert liveness.silent(7.5) == []  # 2 s counted: 0.5 + 0.5 (the late round) + 2 * 0.5
    assert liveness.silent(7.51) == [1]


def test_a_forgotten_instance_is_not_reported() -> None:
    liveness = watched([], until=1.0)
    liveness.forget(1)
    assert liveness.silent(100.0) == []


def test_every_instance_silent_at_once_is_the_watchers_trouble_not_theirs() -> None:
    liveness = Liveness(PERIOD, MISSES)
    liveness.tick(0.0)
    for key in (1, 2, 3):
        liveness.beat(key, 0.0)
    assert liveness.silent(3.0) == []  # all three at once: none is declared
    liveness.beat(2, 3.0)
    assert liveness.silent(3.0) == [1, 3]  # one still answers: the others are silent
    liveness.forget(2)
    liveness.forget(3)
    assert liveness.silent(3.0) == [1]  # a single instance has no one to compare with


def test_a_saturated_machine_stretches_the_limit_of_instances_on_it() -> None:
    liveness = Liveness(PERIOD, MISSES)
    liveness.tick(0.0, slowdown=5.0)  # load average 10 on 2 cores
    liveness.beat(1, 0.0)
    liveness.beat(2, 0.0)
    liveness.on_this_machine(1)
    assert liveness.limit(1) == MAX_SILENCE_S  # 2 s x 5, within the ceiling
    assert liveness.limit(2) == PERIOD * MISSES  # another machine's load is not ours
    assert liveness.silent(2.5) == [2]
    liveness.tick(0.5, slowdown=0.3)  # quiet again: never below the floor
    assert liveness.limit(1) == PERIOD * MISSES


def test_a_silent_node_is_avoided_for_a_while_not_for_ever(tmp_path: Path) -> None:
    now = [100.0]
    site = ClusterSite(str(tmp_path), clock=lambda: now[0])
    site.suspect("node-a")
    assert site.suspects == {"node-a"}
    now[0] += SUSPECT_S - 1
    assert site.suspects == {"node-a"}
    now[0] += 1
    assert site.suspects == set()  # replacements may go there again


class FakeRay:
    """`ray.wait`/`ray.get` over named pings: "ok" answered, "dead" its actor died, "slow"
    not answered yet, "unknown" a ref Ray refuses to wait on."""

    def wait(self, refs: list[str], num_returns: int = 1, timeout: float = 0) -> Any:
        if "unknown" in refs:
            raise ValueError("An application is trying to access a Ray object whose owner "
                             "is unknown")
        ready = [r for r in refs if r != "slow"]
        return ready, [r for r in refs if r == "slow"]

    def get(self, ref: str, timeout: float = 0) -> int:
        if ref == "dead":
            raise RuntimeError("RayActorError")
        return 1


@pytest.mark.parametrize("with_unknown", [False, True])
def test_answers_are_read_even_beside_a_ping_ray_no_longer_knows(with_unknown: bool) -> None:
    pings = {1: "ok", 2: "dead", 3: "slow"} | ({4: "unknown"} if with_unknown else {})
    answered = _answered(FakeRay(), pings)
    assert answered == {1: "", 2: "RuntimeError"} | ({4: None} if with_unknown else {})
