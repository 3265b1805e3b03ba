"""The accuracy ladder controller with a fake clock and a fake latency model: it moves down only
within the accuracy budget, back up only after a calm period, and never moves a pinned request."""

from __future__ import annotations

import math
import random
import statistics
from collections import Counter

import pytest

from surge.scheduler.ladder import (
    LadderController,
    LadderSettings,
    Rung,
    WindowRate,
    rung_p99,
    shares_at,
    usable_rungs,
)

# Batch time a + b * n in seconds: the original 4 ms + 2 ms per item, int8 three times faster,
# prune-50 faster still but 3 points less accurate.
TIMES = {"original": (0.004, 0.002), "int8": (0.0013, 0.0007), "prune": (0.001, 0.0004)}
RUNGS = (Rung("original", 91.0, workers=1, max_batch=32),
         Rung("int8", 90.6, workers=1, max_batch=32),
         Rung("prune", 88.0, workers=1, max_batch=32))
SLO = 0.05


def latency(name: str, size: int) -> float | None:
    a, b = TIMES[name]
    return a + b * size


def controller(max_drop: float = 1.0, **kwargs: float) -> LadderController:
    return LadderController(RUNGS, LadderSettings(SLO, max_drop, **kwargs), latency)


def run(ladder: LadderController, start: float, seconds: float, rate: float,
        tick: float = 0.05) -> float:
    """Decide every `tick` for `seconds` at `rate`; returns the time reached."""
    now = start
    for _ in range(round(seconds / tick)):
        now += tick
        ladder.update(now, rate)
    return now


def capacity(name: str) -> float:
    """Requests/s the rung computes at its largest batch."""
    return 32 / latency(name, 32)  # type: ignore[operator]


def test_only_rungs_within_the_budget_take_traffic() -> None:
    assert [r.name for r in usable_rungs(RUNGS, 1.0)] == ["original", "int8"]
    assert [r.name for r in usable_rungs(RUNGS, 3.0)] == ["original", "int8", "prune"]
    assert [r.name for r in usable_rungs(RUNGS, 0.1)] == ["original"]


def test_shares_split_between_two_neighbouring_rungs() -> None:
    assert shares_at(0.0, 3) == (1.0, 0.0, 0.0)
    assert shares_at(1.5, 3) == (0.0, 0.5, 0.5)
    assert shares_at(9.0, 3) == (0.0, 0.0, 1.0)


def test_rung_p99_is_twice_the_batch_that_keeps_up_and_infinite_past_capacity() -> None:
    rung = RUNGS[0]

    def times(n: int) -> float | None:
        return latency("original", n)

    assert rung_p99(0.0, times, rung, 0.8) == pytest.approx(2 * 0.006)
    # 200/s: a batch of n keeps up when 0.8 n >= 200 (0.004 + 0.002 n): n = 2 (0.008 s)
    assert rung_p99(200.0, times, rung, 0.8) == pytest.approx(2 * 0.008)
    assert rung_p99(2 * capacity("original"), times, rung, 0.8) == math.inf
    assert rung_p99(100.0, lambda n: None, rung, 0.8) == 0.0  # unmeasured: no move


def test_stays_on_the_top_rung_while_it_meets_the_slo() -> None:
    ladder = controller()
    run(ladder, 0.0, 5.0, rate=0.5 * capacity("original"))
    assert ladder.level == 0.0
    assert ladder.shares()["original"] == 1.0
    assert {ladder.choose() for _ in range(20)} == {"original"}


def test_a_surge_moves_traffic_down_only_as_far_as_the_budget_allows() -> None:
    ladder = controller(max_drop=1.0)
    run(ladder, 0.0, 5.0, rate=3 * capacity("original"))
    # int8 alone cannot take 3x either: the ladder stops at its bottom within the budget
    assert ladder.level == ladder.depth == 1.0
    assert ladder.shares() == {"original": 0.0, "int8": 1.0}
    assert ladder.saturated  # what is left is admission's to shed
    assert "prune" not in {ladder.choose() for _ in range(50)}


def test_moves_only_as_far_as_needed() -> None:
    ladder = controller(max_drop=1.0)
    run(ladder, 0.0, 5.0, rate=1.3 * capacity("original"))
    assert 0.0 < ladder.level < 1.0
    assert ladder.predict(ladder.level, 1.3 * capacity("original")) <= SLO
    assert ladder.predict(ladder.level - ladder.settings.step,
                          1.3 * capacity("original")) > SLO


def test_a_wider_budget_uses_the_lower_rung() -> None:
    ladder = controller(max_drop=3.0)
    run(ladder, 0.0, 5.0, rate=3 * capacity("original"))
    assert ladder.level > 1.0
    assert ladder.shares()["prune"] > 0.0


def test_moves_back_up_only_after_the_calm_has_lasted() -> None:
    ladder = controller(hold_s=2.0)
    now = run(ladder, 0.0, 3.0, rate=3 * capacity("original"))
    assert ladder.level == 1.0
    now = run(ladder, now, 1.0, rate=0.3 * capacity("original"))
    assert ladder.level == 1.0  # calm for 1 s: still down
    now = run(ladder, now, 1.2, rate=0.3 * capacity("original"))
    assert ladder.level == 0.75  # one step after 2 s of calm
    run(ladder, now, 10.0, rate=0.3 * capacity("original"))
    assert ladder.level == 0.0


def test_a_break_in_the_calm_restarts_the_hold() -> None:
    ladder = controller(hold_s=2.0)
    now = run(ladder, 0.0, 3.0, rate=3 * capacity("original"))
    now = run(ladder, now, 1.5, rate=0.3 * capacity("original"))
    now = run(ladder, now, 0.1, rate=3 * capacity("original"))  # a short burst
    now = run(ladder, now, 1.5, rate=0.3 * capacity("original"))
    assert ladder.level == 1.0
    run(ladder, now, 0.6, rate=0.3 * capacity("original"))
    assert ladder.level == 0.75


class SlowingLatency:
    """The fake latency model, `factor` times slower while `slow` is set: a stretch of slow
    batches at a steady arrival rate (another process taking the core)."""

    def __init__(self, factor: float) -> None:
        self.factor, self.slow = factor, False

    def __call__(self, name: str, size: int) -> float | None:
        seconds = latency(name, size)
        assert seconds is not None
        return seconds * (self.factor if self.slow else 1.0)


def test_an_isolated_spike_in_the_prediction_moves_nothing_down() -> None:
    times = SlowingLatency(factor=8.0)
    ladder = LadderController(RUNGS, LadderSettings(SLO, 1.0, down_hold_s=0.3), times)
    rate = 0.3 * capacity("original")
    now = run(ladder, 0.0, 2.0, rate)
    for _ in range(3):  # three spikes of slow batches, 0.2 s each, at the same arrival rate
        times.slow = True
        now = run(ladder, now, 0.2, rate)
        assert ladder.predicted_p99 > SLO
        times.slow = False
        now = run(ladder, now, 0.5, rate)
    assert ladder.level == 0.0


def test_slow_batches_that_last_move_down_after_the_hold() -> None:
    times = SlowingLatency(factor=8.0)
    ladder = LadderController(RUNGS, LadderSettings(SLO, 1.0, down_hold_s=0.3), times)
    rate = 0.3 * capacity("original")
    now = run(ladder, 0.0, 2.0, rate)
    times.slow = True
    now = run(ladder, now, 0.25, rate)
    assert ladder.level == 0.0  # not yet: the pressure has lasted 0.2 s
    run(ladder, now, 0.25, rate)
    assert ladder.level > 0.0


class SharedCores:
    """The fake latency model with the rungs sharing the cores: the original computes its
    batches `contention` times slower at no share of the traffic, less so as its share grows
    (its few batches wait behind the other rung's), and `slower` times slower throughout once
    `slower` is set (the machine itself got slower)."""

    def __init__(self, contention: float) -> None:
        self.contention, self.slower = contention, 1.0
        self.ladder: LadderController | None = None

    def __call__(self, name: str, size: int) -> float | None:
        seconds = latency(name, size)
        assert seconds is not None
        assert self.ladder is not None
        if name != "original":
            return seconds
        share = self.ladder.shares()["original"]
        return seconds * (1.0 + (self.contention - 1.0) * (1.0 - share)) * self.slower


def shared_cores_ladder(contention: float) -> tuple[LadderController, SharedCores]:
    times = SharedCores(contention)
    ladder = LadderController(RUNGS, LadderSettings(SLO, 1.0, hold_s=2.0), times)
    times.ladder = ladder
    return ladder, times


def test_climbs_back_after_a_surge_though_a_small_share_computes_slower() -> None:
    # Half load, a surge, half load again: at a quarter of the traffic the original's batches
    # read 2.1 times as long as when it took all of it, which priced by its times now keeps
    # the mix one step up past the calm margin for good. Priced at the times it showed when
    # it took all the traffic, the ladder climbs back a step per hold.
    ladder, _ = shared_cores_ladder(contention=2.5)
    half = capacity("original") / 2
    now = run(ladder, 0.0, 3.0, rate=half)
    assert ladder.level == 0.0
    now = run(ladder, now, 3.0, rate=3 * capacity("original"))
    assert ladder.level == 1.0
    now = run(ladder, now, 4 * 2.0 + 1.0, rate=half)
    assert ladder.level == 0.0


def test_a_step_up_that_meets_pressure_is_not_tried_again() -> None:
    # The machine got slower during the surge: the settled times promise a step up that the
    # times now cannot carry. The ladder steps up, meets the pressure, steps back down and
    # stays there instead of bouncing every hold.
    ladder, times = shared_cores_ladder(contention=1.0)
    half = capacity("original") / 2
    now = run(ladder, 0.0, 3.0, rate=half)
    now = run(ladder, now, 3.0, rate=3 * capacity("original"))
    times.slower = 3.0
    levels = []
    for _ in range(200):  # 20 s at half load, 0.1 s at a time
        now = run(ladder, now, 0.1, rate=half)
        levels.append(ladder.level)
    moves = sum(1 for a, b in zip(levels, levels[1:], strict=False) if a != b)
    assert moves <= 3
    assert ladder.predict(ladder.level, half) <= SLO
    assert levels[-1] == levels[-40]  # settled for the last 4 s


def test_a_rate_surge_moves_all_the_way_down_at_the_first_decision() -> None:
    ladder = controller(down_hold_s=0.5)
    now = run(ladder, 0.0, 2.0, rate=0.3 * capacity("original"))
    ladder.update(now + 0.05, 3 * capacity("original"))
    assert ladder.level == ladder.depth  # no hold, no step-by-step walk: one decision


def test_a_move_down_goes_as_far_as_the_prediction_needs_in_one_decision() -> None:
    ladder = controller(down_hold_s=0.0)
    rate = 1.3 * capacity("original")
    ladder.update(1.0, rate)
    assert 0.0 < ladder.level < 1.0
    assert ladder.predict(ladder.level, rate) <= SLO
    assert ladder.predict(ladder.level - ladder.settings.step, rate) > SLO


def test_a_cheaper_rung_measured_slower_takes_no_traffic_when_no_mix_meets_the_slo() -> None:
    # int8 on the ladder but measured ten times slower than the original: past the original's
    # capacity no mix is within the SLO, and all of it on int8 would answer later and less
    # accurately. The traffic stays where it is and admission sheds what cannot be met.
    def slower_below(name: str, size: int) -> float | None:
        seconds = latency("original", size)
        assert seconds is not None
        return seconds * (10.0 if name == "int8" else 1.0)

    ladder = LadderController(RUNGS, LadderSettings(SLO, 1.0), slower_below)
    run(ladder, 0.0, 2.0, rate=3 * capacity("original"))
    assert ladder.level == 0.0
    assert {ladder.choose() for _ in range(20)} == {"original"}
    assert ladder.predicted_p99 > SLO


def test_a_rung_is_priced_with_its_live_instances() -> None:
    # The original's only instance is lost: it computes nothing, and its share goes down the
    # ladder at the next decision; back, it takes the traffic again after the calm holds.
    live = {"original": 1, "int8": 1, "prune": 1}
    ladder = LadderController(RUNGS, LadderSettings(SLO, 1.0, hold_s=2.0), latency,
                              live.__getitem__)
    rate = 0.3 * capacity("original")
    now = run(ladder, 0.0, 2.0, rate)
    assert ladder.level == 0.0
    live["original"] = 0
    now = run(ladder, now, 0.05, rate)
    assert ladder.shares()["int8"] == 1.0
    live["original"] = 1
    run(ladder, now, 4 * 2.0 + 1.0, rate)
    assert ladder.level == 0.0


def test_a_lost_bottom_rung_sends_its_share_back_up_at_once() -> None:
    live = {"original": 1, "int8": 1, "prune": 1}
    ladder = LadderController(RUNGS, LadderSettings(SLO, 1.0), latency, live.__getitem__)
    now = run(ladder, 0.0, 2.0, rate=3 * capacity("original"))
    assert ladder.level == ladder.depth
    live["int8"] = 0
    run(ladder, now, 0.05, rate=3 * capacity("original"))
    assert ladder.shares() == {"original": 1.0, "int8": 0.0}  # past the SLO, but computed
    live["original"] = 0
    run(ladder, now + 0.05, 0.05, rate=3 * capacity("original"))
    assert ladder.level == 0.0  # nothing can compute: the model is not ready, nothing moves


def test_load_between_thresholds_does_not_bounce() -> None:
    """Predicted one step up above up_margin * SLO but below the SLO: no move either way."""
    ladder = controller(hold_s=0.5)
    rate = 1.3 * capacity("original")
    now = run(ladder, 0.0, 3.0, rate)
    level = ladder.level
    run(ladder, now, 10.0, rate)
    assert ladder.level == level


def test_pinned_requests_are_never_downgraded() -> None:
    ladder = controller()
    run(ladder, 0.0, 5.0, rate=3 * capacity("original"))
    assert ladder.shares()["original"] == 0.0
    assert {ladder.choose("original") for _ in range(20)} == {"original"}
    # a pin may name a rung outside the budget: the client asked for it
    assert ladder.choose("prune") == "prune"
    with pytest.raises(ValueError, match="not on the ladder"):
        ladder.choose("fp16")


def test_shares_route_exact_counts() -> None:
    ladder = controller(step=0.25, down_hold_s=0.0)
    ladder.update(0.0, 1.3 * capacity("original"))  # down as far as needed: a share of int8
    down = ladder.level
    assert down in (0.25, 0.5, 0.75)
    counts = Counter(ladder.choose() for _ in range(100))
    assert counts == {"original": round(100 * (1 - down)), "int8": round(100 * down)}


def test_decides_at_most_once_per_interval() -> None:
    ladder = controller(interval_s=0.1, down_hold_s=0.0)
    ladder.update(1.0, 0.3 * capacity("original"))
    ladder.update(1.05, 3 * capacity("original"))  # within the interval: not looked at
    assert ladder.level == 0.0
    ladder.update(1.1, 3 * capacity("original"))
    assert ladder.level == ladder.depth


def test_window_rate_counts_recent_arrivals() -> None:
    rate = WindowRate(window_s=0.5)
    for i in range(100):
        rate.arrive(i * 0.01)  # 100/s for 1 s
    assert rate.rate(0.99) == pytest.approx(100.0)
    assert rate.rate(2.0) == 0.0


def test_window_rate_reads_a_steady_poisson_stream_without_the_quick_windows_noise() -> None:
    # 390 arrivals/s for 30 s, read every 50 ms as the controller reads it: the larger of the
    # two windows always read it up to 1.56x too fast (1.26x in one read of 20), enough to
    # move a rung near its capacity down the ladder with no surge at all.
    rng, rate, now, reads = random.Random(1), WindowRate(), 0.0, []
    next_read = 1.0
    while now < 30.0:
        now += rng.expovariate(390.0)
        rate.arrive(now)
        if now >= next_read:
            reads.append(rate.rate(now) / 390.0)
            next_read += 0.05
    reads.sort()
    assert statistics.mean(reads) == pytest.approx(1.0, abs=0.02)
    assert reads[int(0.95 * len(reads))] < 1.15
    assert reads[-1] < 1.25


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="slo_s"):
        LadderSettings(0.0, 1.0)
    with pytest.raises(ValueError, match="max_accuracy_drop"):
        LadderSettings(0.05, -1.0)
    with pytest.raises(ValueError, match="down_hold_s"):
        LadderSettings(0.05, 1.0, down_hold_s=-0.1)
    with pytest.raises(ValueError, match="surge_ratio"):
        LadderSettings(0.05, 1.0, surge_ratio=1.0)


def test_window_rate_counts_items() -> None:
    rate = WindowRate(window_s=1.0)
    rate.arrive(0.0, 8)
    rate.arrive(0.5, 8)
    assert rate.rate(0.9) == 16.0
    assert rate.rate(1.2) == 8.0


def test_window_rate_keeps_counting_after_forgetting_old_arrivals() -> None:
    rate = WindowRate(window_s=0.5, quick_s=0.1)
    for i in range(300):  # 2 items 100 times a second for 3 s, read every 50 ms (as the
        rate.arrive((i + 0.5) * 0.01, 2)  # controller reads it) once both windows are full
        if i >= 50 and i % 5 == 0:
            assert rate.rate((i + 1) * 0.01) == pytest.approx(200.0)
    assert rate.rate(3.0) == pytest.approx(200.0)
    assert rate.rate(3.3) == pytest.approx(80.0)  # 20 arrivals left in (2.8, 3.3]
    assert rate.rate(10.0) == 0.0
    rate.arrive(10.0, 5)
    assert rate.rate(10.0) == pytest.approx(50.0)  # the quick window: 5 / 0.1


def test_window_rate_shows_a_rise_within_the_quick_window_and_a_fall_over_the_long() -> None:
    rate = WindowRate(window_s=0.5, quick_s=0.1)
    for i in range(100):
        rate.arrive(i * 0.01)  # 100/s for 1 s, then 1,000/s
    for i in range(50):
        rate.arrive(1.0 + i * 0.001)
    assert rate.rate(1.049) == pytest.approx(550.0)  # (50 + 5) in the last 0.1 s
    slow = WindowRate(window_s=0.5, quick_s=None)
    for i in range(100):
        slow.arrive(i * 0.01)
    for i in range(50):
        slow.arrive(1.0 + i * 0.001)
    assert slow.rate(1.049) == pytest.approx(190.0)  # (45 + 50) / 0.5: a ramp
    assert rate.rate(1.4) == slow.rate(1.4) > 0.0  # a fall shows over the long window
    with pytest.raises(ValueError, match="quick_s"):
        WindowRate(window_s=0.5, quick_s=1.0)


def surge_mix_reached_after(quick_s: float | None) -> float:
    """Seconds after a 2.5x surge starts until the controller's mix is the one the surge's
    rate needs, with the controller fed each arrival's rate as `ServedLadder.infer` feeds it."""
    ladder = controller()
    rate = WindowRate(window_s=0.5, quick_s=quick_s)
    calm, surge = 0.5 * capacity("original"), 2.5 * capacity("original")
    needed = controller().needed_level(surge)
    assert 0.0 < needed <= ladder.depth
    now = 0.0
    while now < 2.0:
        now += 1.0 / calm
        rate.arrive(now)
        ladder.update(now, rate.rate(now))
    assert ladder.level == 0.0
    start = now
    while ladder.level < needed:
        now += 1.0 / surge
        rate.arrive(now)
        ladder.update(now, rate.rate(now))
    return now - start


def test_the_ladder_moves_within_a_tenth_of_a_second_of_a_surge() -> None:
    assert surge_mix_reached_after(0.1) <= 0.1
    assert surge_mix_reached_after(None) > 0.2  # the long window alone reads a ramp


def test_a_reloaded_controller_goes_on_where_the_old_one_stood() -> None:
    old = controller()
    now = run(old, 0.0, 2.0, rate=0.3 * capacity("original"))
    now = run(old, now, 1.0, rate=3 * capacity("original"))
    assert old.level > 0.0
    new = controller()
    assert new.carry_from(old)
    assert (new.level, new.shares(), new.predicted_p99) == (
        old.level, old.shares(), old.predicted_p99)
    assert not new.due(now)  # the old one decided at `now`: the interval runs on
    run(new, now, 0.5, rate=3 * capacity("original"))
    assert new.level == old.level
    other = LadderController(RUNGS[:2], LadderSettings(SLO, 1.0), latency)
    assert not other.carry_from(old)  # other rungs: their levels mean other mixes
    assert other.level == 0.0
    wider = controller(max_drop=5.0)  # the same rungs, more of them usable
    assert not wider.carry_from(old)


def test_a_reloaded_controller_keeps_the_settled_times_only_of_unchanged_rungs() -> None:
    # Reloaded at the bottom of a surge with the same files: the old settled times still
    # describe the rungs, and the new controller climbs back as the old one would. A rung
    # whose files changed is priced settled at its times now (its load-time probe).
    half = capacity("original") / 2
    for unchanged in (("original", "int8"), ("int8",)):
        old, _ = shared_cores_ladder(contention=2.5)
        now = run(old, 0.0, 3.0, rate=half)
        now = run(old, now, 3.0, rate=3 * capacity("original"))
        assert old.level == 1.0
        new, times = shared_cores_ladder(contention=2.5)
        assert new.carry_from(old, unchanged)
        kept = new._settled["original"] == old._settled["original"]
        assert kept == ("original" in unchanged)
        if kept:
            run(new, now, 4 * 2.0 + 1.0, rate=half)
            assert new.level == 0.0
        else:
            assert new._settled["original"][0] == times("original", 1)
