"""The scaling policy: up after steady saturation, down after idleness, within its bounds."""

from __future__ import annotations

from surge.cluster.scaling import ScalePolicy


def policy() -> ScalePolicy:
    return ScalePolicy(floor=1, ceiling=3, up_after_s=2.0, down_idle_s=10.0)


def run(p: ScalePolicy, full: bool, start: float, seconds: float, count: int) -> list[int]:
    steps = []
    t = start
    while t <= start + seconds:
        p.sample(t, full)
        steps.append(p.decide(t, count, 0, 0.0))
        t += 0.5
    return steps


def test_steady_saturation_adds_one_instance_after_the_window() -> None:
    p = policy()
    steps = run(p, True, 0.0, 2.5, count=1)
    assert steps[:3] == [0, 0, 0]  # not watched long enough
    assert steps.count(1) == 1  # then one, and the window starts over


def test_no_scale_up_while_one_is_starting_or_at_the_ceiling() -> None:
    p = policy()
    for t in range(6):
        p.sample(t * 0.5, True)
    assert p.decide(2.5, 1, 1, 0.0) == 0
    assert p.decide(2.5, 3, 0, 0.0) == 0
    assert p.decide(2.5, 2, 0, 0.0) == 1


def test_intermittent_load_does_not_scale_up() -> None:
    p = policy()
    for i in range(12):
        p.sample(i * 0.5, i % 2 == 0)
    assert p.decide(5.5, 1, 0, 0.0) == 0


def test_idle_instances_go_down_to_the_floor() -> None:
    p = policy()
    assert p.decide(0.0, 2, 0, 10.0) == -1
    assert p.decide(0.0, 2, 0, 9.0) == 0
    assert p.decide(0.0, 1, 0, 100.0) == 0
