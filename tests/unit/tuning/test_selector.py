"""The selector on synthetic profiles, the queueing prediction and the config it writes."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from pathlib import Path

import pytest

from surge.errors import ConfigError
from surge.evaluate.metrics import latency_percentiles
from surge.evaluate.profile import ProfilePoint, ProfileReport
from surge.repository import Repository
from surge.repository.config import read_config
from surge.tuning import (
    ORIGINAL,
    AccuracyBudget,
    Candidate,
    Load,
    Measurement,
    Rung,
    ServingCosts,
    Slo,
    build_space,
    parse_duration_s,
    parse_rate,
    predict,
    select,
    write_selection,
)
from surge.tuning.predict import fit_costs, observe

SPEED = {ORIGINAL: 1.0, "int8": 2.5, "pruned": 1.6, "lowrank": 1.3}
ACCURACY = {ORIGINAL: 91.0, "int8": 90.5, "pruned": 88.0, "lowrank": 90.8}
SLO = Slo(50.0, Load(concurrency=64))
REFERENCE = 91.0  # the original model's accuracy
BUDGET = AccuracyBudget(max_drop=1.0)


def synthetic(candidate: Candidate, rung: Rung) -> Measurement:
    """A made-up but plausible system: batching and instances raise throughput, big batches
    and long delays raise p99, two cores cap instances x threads."""
    c = candidate
    per_batch_ms = (2.0 + 0.25 * c.max_batch_size) / SPEED[c.variant] / min(c.threads, 2)
    parallel = min(c.instances, 2) / max(1.0, c.instances * c.threads / 2)
    throughput = parallel * c.max_batch_size * 1000.0 / (per_batch_ms + c.max_queue_delay_ms)
    p99 = 64 * 1000.0 / throughput + per_batch_ms + c.max_queue_delay_ms
    return Measurement(throughput, p99, rung=rung.name)


def true_optimum(space: list[Candidate], slo: Slo, budget: AccuracyBudget) -> Candidate:
    ok = [c for c in space if budget.rejects(ACCURACY[c.variant], REFERENCE) is None
          and synthetic(c, Rung("x")).p99_ms <= slo.p99_ms]
    return max(ok, key=lambda c: synthetic(c, Rung("x")).throughput)


def test_brute_force_picks_the_true_optimum() -> None:
    space = build_space([ORIGINAL, "int8"], (1, 8, 32), (0.0, 2.0), [(1, 2), (2, 1)])
    report = select(space, ACCURACY, BUDGET, SLO, synthetic, brute_force_limit=100, reference=REFERENCE)
    assert report.strategy == "brute force"
    assert report.chosen is not None
    assert report.chosen.candidate == true_optimum(space, SLO, BUDGET)
    assert report.chosen.status == "chosen"
    others = [r for r in report.candidates if r is not report.chosen]
    assert all(r.status == "lost" and r.reason for r in others)


def test_successive_halving_finds_the_optimum_with_fewer_full_runs() -> None:
    space = build_space(list(SPEED), (1, 2, 4, 8, 16, 32, 64), (0.0, 1.0, 2.0, 5.0),
                        [(1, 1), (1, 2), (2, 1)])
    calls: dict[str, int] = {}

    def measure(candidate: Candidate, rung: Rung) -> Measurement:
        calls[rung.name] = calls.get(rung.name, 0) + 1
        exact = synthetic(candidate, rung)
        if rung.name == "predicted":  # a biased but order-keeping cheap estimate
            return Measurement(exact.throughput * 1.3, exact.p99_ms * 0.8, rung=rung.name)
        return exact

    rungs = (Rung("predicted"), Rung("short run"), Rung("full run"))
    report = select(space, ACCURACY, BUDGET, SLO, measure, rungs, brute_force_limit=16, reference=REFERENCE)
    assert report.strategy == "successive halving"
    assert report.chosen is not None
    assert report.chosen.candidate == true_optimum(space, SLO, BUDGET)
    admissible = sum(1 for c in space if BUDGET.rejects(ACCURACY[c.variant], REFERENCE) is None)
    assert calls["predicted"] == admissible
    assert calls["full run"] == 2
    reasons = [r.reason for r in report.candidates]
    assert any(r.startswith("dominated at predicted by") for r in reasons)


def test_a_thin_front_is_refilled_so_the_next_rung_has_a_choice() -> None:
    # the cheap rung thinks b64 beats everything; the real runs disagree
    space = [Candidate(ORIGINAL, b, 0.0, 1, 1) for b in (8, 16, 32, 64)]
    space.append(Candidate(ORIGINAL, 64, 2.0, 1, 1))  # predicted exactly as b64 d0
    real = {8: 700.0, 16: 1500.0, 32: 1200.0, 64: 900.0}

    def measure(candidate: Candidate, rung: Rung) -> Measurement:
        b = candidate.max_batch_size
        if rung.name == "predicted":
            return Measurement(100.0 * b, 10.0 - b / 100, rung=rung.name)
        return Measurement(real[b], 30.0, rung=rung.name)

    report = select(space, ACCURACY, BUDGET, SLO, measure,
                    (Rung("predicted"), Rung("full run")), brute_force_limit=0, finalists=3,
                    reference=REFERENCE)
    assert report.chosen is not None
    assert report.chosen.candidate.max_batch_size == 16
    full = sorted((r.candidate.max_batch_size, r.candidate.max_queue_delay_ms)
                  for r in report.candidates if r.last is not None and r.last.rung == "full run")
    assert full == [(16, 0.0), (32, 0.0), (64, 0.0)]  # not the copy of b64 with a delay
    b8 = next(r for r in report.candidates if r.candidate.max_batch_size == 8)
    assert b8.reason.startswith("dominated at predicted by original b")


def test_successive_halving_cuts_a_pareto_front_by_eta() -> None:
    # throughput and p99 both grow with the batch: no point dominates another
    space = [Candidate(ORIGINAL, b, 0.0, 1, 1) for b in range(1, 28)]
    seen: list[str] = []

    def measure(candidate: Candidate, rung: Rung) -> Measurement:
        seen.append(rung.name)
        b = candidate.max_batch_size
        return Measurement(100.0 * b, float(b), rung=rung.name)

    rungs = (Rung("predicted"), Rung("short run"), Rung("full run"))
    report = select(space, ACCURACY, BUDGET, Slo(20.0, Load(concurrency=8)), measure, rungs,
                    eta=3, finalists=2, brute_force_limit=4, reference=REFERENCE)
    assert (seen.count("predicted"), seen.count("short run"), seen.count("full run")) == (27, 9, 2)
    assert report.chosen is not None
    assert report.chosen.candidate.max_batch_size == 20
    cut = next(r for r in report.candidates if r.candidate.max_batch_size == 27)
    # infeasible points rank after every feasible one
    assert cut.reason == ("cut by successive halving after predicted: ranked 27 of 27 "
                          "(2700 req/s, p99 27.0 ms)")


def test_exact_ties_keep_only_the_simplest_configuration() -> None:
    space = [Candidate(ORIGINAL, 32, d, 1, 1) for d in (5.0, 0.0, 2.0)]
    report = select(space, ACCURACY, BUDGET, SLO, lambda c, r: Measurement(900.0, 20.0, r.name),
                    (Rung("predicted"), Rung("full run")), brute_force_limit=0, finalists=1,
                    reference=REFERENCE)
    assert report.chosen is not None
    assert report.chosen.candidate.max_queue_delay_ms == 0.0
    losers = [r for r in report.candidates if r is not report.chosen]
    assert all(r.reason.startswith("dominated at predicted by original b32 d0ms") for r in losers)
    assert all(len(r.measurements) == 1 for r in losers)


def test_rejects_everything_when_no_point_meets_the_slo() -> None:
    space = build_space([ORIGINAL, "int8"], (1, 8), (0.0,), [(1, 1)])
    tight = Slo(0.5, Load(concurrency=64))
    report = select(space, ACCURACY, BUDGET, tight, synthetic, reference=REFERENCE)
    assert report.chosen is None
    assert report.message.startswith("no configuration meets p99 <= 0.5 ms at 64 concurrent")
    assert all(r.reason.startswith("misses the SLO") for r in report.candidates)


def test_respects_the_accuracy_budget() -> None:
    space = build_space(list(SPEED), (8, 32), (0.0,), [(1, 2)])
    # int8 is fastest but 0.5 points down: a 0.3 budget must refuse it
    strict = AccuracyBudget(max_drop=0.3)
    report = select(space, ACCURACY, strict, SLO, synthetic, reference=REFERENCE)
    assert report.chosen is not None
    assert report.chosen.candidate.variant == "lowrank"
    int8 = next(r for r in report.candidates if r.candidate.variant == "int8")
    assert int8.reason == "accuracy 90.50 is 0.50 points below the reference 91.00 (budget 0.3)"
    assert not int8.measurements  # never measured: no time spent on it
    floor = AccuracyBudget(max_drop=None, min_metric=90.9)
    chosen = select(space, ACCURACY, floor, SLO, synthetic, reference=REFERENCE).chosen
    assert chosen is not None
    assert chosen.candidate.variant == ORIGINAL


def test_respects_the_time_budget() -> None:
    space = build_space(list(SPEED), (1, 8, 32), (0.0, 2.0), [(1, 2)])
    now = [0.0]

    def slow(candidate: Candidate, rung: Rung) -> Measurement:
        now[0] += 3.0
        return synthetic(candidate, rung)

    report = select(space, ACCURACY, BUDGET, SLO, slow, (Rung("full run", cost_s=3.0),),
                    brute_force_limit=100, time_budget_s=20.0, clock=lambda: now[0], reference=REFERENCE)
    assert report.elapsed_s <= 20.0
    measured = [r for r in report.candidates if r.measurements]
    assert len(measured) == 6  # 6 x 3 s fits in 20 s, a 7th would not
    assert report.message.endswith("(search stopped early: time budget spent)")
    assert any("the time budget was spent" in r.reason for r in report.candidates)


def test_a_spent_budget_still_predicts_but_serves_nothing() -> None:
    space = build_space(list(SPEED), (1, 8, 32), (0.0, 2.0), [(1, 2)])
    rungs = (Rung("predicted"), Rung("full run", cost_s=5.0))
    report = select(space, ACCURACY, BUDGET, SLO, synthetic, rungs, brute_force_limit=0,
                    time_budget_s=0.0, reference=REFERENCE)
    assert report.chosen is None
    assert report.message == ("no configuration chosen: the time budget was spent before any "
                              "was served")
    assert all(len(r.measurements) <= 1 for r in report.candidates)
    assert any(r.measurements for r in report.candidates)  # the predictions were made


def test_nothing_within_the_accuracy_budget_says_so() -> None:
    space = build_space(["pruned"], (8,), (0.0,), [(1, 2)])
    report = select(space, ACCURACY, BUDGET, SLO, synthetic, reference=REFERENCE)
    assert report.message == "no configuration qualified: none is within the accuracy budget"


def test_open_loop_ranks_by_capacity_and_needs_to_keep_up() -> None:
    slo = Slo(100.0, Load(rate=500.0))
    a, b, c = (Candidate(ORIGINAL, n, 0.0, 1, 2) for n in (1, 8, 32))
    table = {a: Measurement(400.0, 20.0, capacity=400.0),  # cannot keep up with 500/s
             b: Measurement(500.0, 30.0, capacity=2000.0),
             c: Measurement(500.0, 40.0, capacity=3000.0)}
    report = select([a, b, c], ACCURACY, BUDGET, slo, lambda cand, _: table[cand], reference=REFERENCE)
    assert report.chosen is not None
    assert report.chosen.candidate == c
    loser = next(r for r in report.candidates if r.candidate == a)
    assert loser.reason.startswith("cannot keep up with 500 requests/s")


# -- prediction --------------------------------------------------------------------------------
def linear_profile(fixed_ms: float = 1.0, per_sample_ms: float = 0.1) -> ProfileReport:
    report = ProfileReport("m", ORIGINAL, 2)
    for b in (1, 2, 4, 8, 16, 32, 64):
        ms = fixed_ms + per_sample_ms * b
        report.points.append(ProfilePoint(b, 1, 1, latency_percentiles([ms / 1000.0]),
                                          b * 1000.0 / ms))
    return report


def test_closed_loop_prediction_by_hand() -> None:
    profile = linear_profile()
    unbatched = predict(profile, Candidate(ORIGINAL, 1, 0.0, 1, 1), Load(concurrency=64))
    assert unbatched.throughput == pytest.approx(1000.0 / 1.1)  # one 1.1 ms request at a time
    assert unbatched.p99_ms == pytest.approx(64 * 1.1 + 1.1)  # Little's law + one service
    batched = predict(profile, Candidate(ORIGINAL, 64, 2.0, 1, 1), Load(concurrency=64))
    assert batched.throughput == pytest.approx(64 * 1000.0 / 7.4)  # full batches, no waiting
    # 16 clients cannot fill a batch of 64: every batch waits out the 2 ms delay
    waiting = predict(profile, Candidate(ORIGINAL, 64, 2.0, 1, 1), Load(concurrency=16))
    assert waiting.throughput == pytest.approx(16 * 1000.0 / (2.6 + 2.0))


def test_serving_overhead_is_charged_per_batch() -> None:
    costs = ServingCosts(batch_overhead_ms=2.0)
    one = predict(linear_profile(), Candidate(ORIGINAL, 1, 0.0, 1, 1), Load(concurrency=64), costs)
    assert one.throughput == pytest.approx(1000.0 / 3.1)
    full = predict(linear_profile(), Candidate(ORIGINAL, 64, 0.0, 1, 1), Load(concurrency=64),
                   costs)
    assert full.throughput == pytest.approx(64 * 1000.0 / 9.4)  # amortized over 64 requests
    tail = ServingCosts(batch_overhead_ms=2.0, p99_scale=3.0)
    scaled = predict(linear_profile(), Candidate(ORIGINAL, 64, 0.0, 1, 1), Load(concurrency=64),
                     tail)
    assert scaled.p99_ms == pytest.approx(3.0 * full.p99_ms)
    assert scaled.throughput == full.throughput


def test_open_loop_prediction_saturates() -> None:
    profile = linear_profile()
    light = predict(profile, Candidate(ORIGINAL, 8, 1.0, 1, 1), Load(rate=100.0))
    assert light.throughput == 100.0
    assert 1.1 < light.p99_ms < 10.0
    over = predict(profile, Candidate(ORIGINAL, 1, 0.0, 1, 1), Load(rate=2000.0))
    assert math.isinf(over.p99_ms)
    assert over.capacity == pytest.approx(1000.0 / 1.1)


def test_profile_round_trips_json(tmp_path: Path) -> None:
    profile = linear_profile()
    loaded = ProfileReport.load(profile.save(tmp_path / "p.json"))
    assert loaded == profile
    assert loaded.service_ms(3, 1, 1) == pytest.approx(1.3)  # interpolated between 2 and 4


# -- applying the choice and parsing options ---------------------------------------------------
def test_write_selection_is_what_the_repository_serves(tmp_path: Path) -> None:
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "config.yaml").write_text(
        "name: m\nmax_batch_size: 64\nbatching: {preferred_batch_sizes: [32, 64]}\nlabels: [a]\n")
    write_selection(model_dir, Candidate("int8", 16, 5.0, 2, 1), 50.0)
    config = Repository(tmp_path).config("m")
    assert (config.variant, config.max_batch_size, config.instances, config.threads) == (
        "int8", 16, 2, 1)
    assert config.batching.max_queue_delay_ms == 5.0
    assert config.batching.preferred_batch_sizes == []
    assert (config.slo_p99_ms, config.labels) == (50.0, ["a"])
    write_selection(model_dir, Candidate(ORIGINAL, 1, 0.0, 1, 2), 50.0)
    assert read_config(model_dir / "config.yaml").variant is None


@pytest.mark.parametrize(("text", "seconds"), [("50ms", 0.05), ("2.5s", 2.5), ("10m", 600.0),
                                               ("1h", 3600.0)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration_s(text, "--budget") == pytest.approx(seconds)


def test_bad_options_name_the_value() -> None:
    with pytest.raises(ConfigError, match=r"--slo-p99 'fast'"):
        parse_duration_s("fast", "--slo-p99")
    with pytest.raises(ConfigError, match=r"--rate '-3/s'"):
        parse_rate("-3/s")
    assert parse_rate("12000/min") == 200.0
    with pytest.raises(ConfigError, match="exactly one of --concurrency and --rate"):
        Load(concurrency=4, rate=10.0)


def test_space_gives_max_batch_one_no_delay() -> None:
    space = build_space([ORIGINAL], (1, 8), (0.0, 2.0), [(1, 1)])
    assert [(c.max_batch_size, c.max_queue_delay_ms) for c in space] == [
        (1, 0.0), (8, 0.0), (8, 2.0)]
    assert len(set(itertools.chain(space))) == len(space)


def test_cost_fit_recovers_per_batch_and_per_request_costs() -> None:
    profile = linear_profile()  # engine: 1 ms + 0.1 ms per sample, one instance
    truth = ServingCosts(batch_overhead_ms=2.0, request_overhead_ms=0.3)
    load = Load(concurrency=64)
    seen = []
    for batch in (1, 16, 64):
        c = Candidate(ORIGINAL, batch, 0.0, 1, 1)
        true = predict(profile, c, load, truth)
        seen.append(observe(profile, c, load, replace(true, p99_ms=true.p99_ms * 2.0)))
    fitted = fit_costs([o for o in seen if o is not None])
    assert fitted.batch_overhead_ms == pytest.approx(2.0)
    assert fitted.request_overhead_ms == pytest.approx(0.3)
    assert fitted.p99_scale == pytest.approx(2.0)
    # one run (the baseline) cannot separate the two: all of it is charged per batch
    alone = fit_costs([o for o in seen[:1] if o is not None])
    assert (alone.batch_overhead_ms, alone.request_overhead_ms) == (pytest.approx(2.3), 0.0)
    assert fit_costs([]) == ServingCosts()


def test_failed_runs_teach_nothing() -> None:
    c = Candidate(ORIGINAL, 8, 0.0, 1, 1)
    assert observe(linear_profile(), c, SLO.load, Measurement(100.0, 30.0, errors=3)) is None
    assert observe(linear_profile(), c, SLO.load, Measurement(0.0, math.inf)) is None


def test_the_measurer_refits_after_each_served_run(tmp_path: Path) -> None:
    from surge.tuning.tune import ServedRun, TuneOptions, TuningReport, _Measurer

    options = TuneOptions("d", "classification", SLO)
    report = TuningReport("m", "classification", "d", 50.0, "64", 64, None, 1.0, None)
    measurer = _Measurer(tmp_path, {ORIGINAL: linear_profile()}, options, report, None)
    baseline = Candidate(ORIGINAL, 1, 0.0, 1, 1)
    # 250 req/s at max batch 1 -> 4 ms a request, 1.1 ms of it in the engine
    measurer.learn(ServedRun(baseline, "baseline", Measurement(0.0, math.inf),
                             Measurement(250.0, 600.0), 1.0))
    assert measurer.costs.batch_overhead_ms == pytest.approx(2.9)
    assert measurer.predicted(baseline).throughput == pytest.approx(250.0)
    assert measurer.predicted(baseline).p99_ms == pytest.approx(600.0)


def test_final_comparison_alternates_and_takes_medians() -> None:
    from surge.tuning.tune import ServedRun, compare_back_to_back

    untuned, tuned = Candidate(ORIGINAL, 1, 0.0, 1, 2), Candidate("int8", 32, 0.0, 1, 1)
    speeds = {untuned: iter([100.0, 80.0, 120.0]), tuned: iter([400.0, 300.0, 900.0])}
    order: list[Candidate] = []

    def serve(candidate: Candidate, rung: str) -> ServedRun:
        order.append(candidate)
        m = Measurement(next(speeds[candidate]), 10.0, rung)
        return ServedRun(candidate, rung, m, m, 1.0)

    base, best, ratio = compare_back_to_back(serve, untuned, tuned, rounds=3)
    assert order == [untuned, tuned, tuned, untuned, untuned, tuned]
    assert ratio == pytest.approx(400.0 / 100.0)  # medians, so one odd run does not decide
    assert (base.measured.throughput, best.measured.throughput) == (100.0, 400.0)
