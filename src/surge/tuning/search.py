"""The selector: the highest sustainable throughput that meets the SLO and the accuracy budget.

Pure: measurements come from a `measure(candidate, rung)` callable (a prediction, a real run
through the server, or a synthetic profile in tests) and time from an injected clock.

Small spaces are searched by brute force at the last rung. Large ones by rungs of rising
fidelity (a prediction, then short runs, then full runs): after each rung, points dominated in
(throughput, p99) are dropped and the best 1/eta survive (successive halving).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from surge.tuning.predict import Measurement
from surge.tuning.space import AccuracyBudget, Candidate, Slo

Measure = Callable[[Candidate, "Rung"], Measurement]

CHOSEN = "chosen"
LOST = "lost"


@dataclass(frozen=True)
class Rung:
    """One level of measurement fidelity; `cost_s` is what one measurement is expected to take."""

    name: str
    cost_s: float = 0.0


@dataclass
class CandidateResult:
    """A candidate, its accuracy, every measurement taken, and the verdict with its reason."""

    candidate: Candidate
    accuracy: float | None
    measurements: list[Measurement] = field(default_factory=list)
    status: str = LOST
    reason: str = "not measured"

    @property
    def last(self) -> Measurement | None:
        return self.measurements[-1] if self.measurements else None


@dataclass
class SelectionReport:
    """The chosen configuration (None if nothing qualified), every candidate and why it lost."""

    slo_p99_ms: float
    load: str
    strategy: str
    chosen: CandidateResult | None
    candidates: list[CandidateResult]
    elapsed_s: float
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def feasible(m: Measurement, slo: Slo) -> bool:
    """Meets the p99, without errors, and (open loop) keeps up with the offered rate."""
    keeps_up = slo.load.rate is None or m.throughput >= 0.95 * slo.load.rate
    return m.errors == 0 and m.p99_ms <= slo.p99_ms and keeps_up


def score(m: Measurement, slo: Slo) -> float:
    """Sustainable throughput: served requests/s (closed loop) or capacity (open loop, where
    every feasible configuration serves the same offered rate)."""
    if slo.load.rate is not None and m.capacity is not None:
        return m.capacity
    return m.throughput


def _rank_key(result: CandidateResult, slo: Slo) -> tuple[int, float]:
    m = result.last
    assert m is not None
    # feasible first by score; infeasible after, closest to the SLO first
    return (0, -score(m, slo)) if feasible(m, slo) else (1, m.p99_ms)


def _dominates(a: CandidateResult, b: CandidateResult) -> bool:
    """a is at least as good on both axes and better on one; on an exact tie (common among
    predictions: a delay that full batches never wait for changes nothing) the simpler
    configuration wins, so ties do not crowd the next rung with copies."""
    ma, mb = a.last, b.last
    assert ma is not None
    assert mb is not None
    if ma.throughput < mb.throughput or ma.p99_ms > mb.p99_ms:
        return False
    if ma.throughput > mb.throughput or ma.p99_ms < mb.p99_ms:
        return True
    return _simplicity(a.candidate) < _simplicity(b.candidate)


def _point(result: CandidateResult) -> tuple[float, float]:
    m = result.last
    return (m.throughput, m.p99_ms) if m is not None else (0.0, math.inf)


def _simplicity(c: Candidate) -> tuple[float, int, int, int, str]:
    return (c.max_queue_delay_ms, c.max_batch_size, c.instances, c.threads, c.variant)


class _Search:
    def __init__(self, slo: Slo, measure: Measure, time_budget_s: float | None,
                 clock: Callable[[], float]) -> None:
        self.slo = slo
        self.measure = measure
        self.clock = clock
        self.started = clock()
        self.deadline = math.inf if time_budget_s is None else self.started + time_budget_s
        self.out_of_time = False

    def run_rung(self, results: list[CandidateResult], rung: Rung) -> list[CandidateResult]:
        """Measure each result at `rung` while the budget lasts; returns those measured."""
        done = []
        for result in results:
            # free rungs (predictions) always run: they cost milliseconds
            if rung.cost_s > 0 and self.clock() + rung.cost_s > self.deadline:
                self.out_of_time = True
                break
            result.measurements.append(self.measure(result.candidate, rung))
            done.append(result)
        for result in results[len(done):]:
            result.reason = f"not measured at {rung.name}: the time budget was spent"
        return done

    def prune_dominated(self, results: list[CandidateResult], rung: Rung) -> list[CandidateResult]:
        kept = []
        for result in results:
            m = result.last
            assert m is not None
            winner = next((o for o in results if _dominates(o, result)), None)
            if winner is None:
                kept.append(result)
                continue
            w = winner.last
            assert w is not None
            result.reason = (f"dominated at {rung.name} by {winner.candidate.key}: "
                             f"{w.throughput:.0f} req/s at p99 {w.p99_ms:.1f} ms vs "
                             f"{m.throughput:.0f} req/s at {m.p99_ms:.1f} ms")
        return kept

    def halve(self, results: list[CandidateResult], rung: Rung, keep: int) -> list[CandidateResult]:
        ordered = sorted(results, key=lambda r: _rank_key(r, self.slo))
        for rank, result in enumerate(ordered[keep:], start=keep + 1):
            result.reason = (f"cut by successive halving after {rung.name}: ranked {rank} of "
                             f"{len(ordered)} ({_describe(result.last)})")
        return ordered[:keep]


def _describe(m: Measurement | None) -> str:
    if m is None:
        return "not measured"
    p99 = "unsustainable" if math.isinf(m.p99_ms) else f"p99 {m.p99_ms:.1f} ms"
    return f"{m.throughput:.0f} req/s, {p99}"


def select(
    candidates: Sequence[Candidate],
    accuracy: dict[str, float],
    budget: AccuracyBudget,
    slo: Slo,
    measure: Measure,
    rungs: Sequence[Rung] = (Rung("full run"),),
    *,
    reference: float,
    eta: int = 3,
    finalists: int = 2,
    brute_force_limit: int = 16,
    survivors: Sequence[int] = (),
    time_budget_s: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> SelectionReport:
    """Search `candidates` for the highest sustainable throughput meeting `slo` and `budget`.

    `accuracy` maps each variant to its headline metric (percent), `reference` is the original
    model's value the budget's drop is counted from. `rungs` go from cheap to
    exact; brute force measures every admissible candidate at the last rung only.
    `survivors[i]` caps how many candidates go on to rung i + 1 (the last rung always gets
    `finalists`).
    """
    search = _Search(slo, measure, time_budget_s, clock)
    results = [CandidateResult(c, accuracy.get(c.variant)) for c in candidates]
    alive = _admissible(results, budget, reference)
    strategy = "brute force" if len(alive) <= brute_force_limit else "successive halving"
    if strategy == "brute force":
        alive = search.run_rung(alive, rungs[-1])
    else:
        alive = _halving(search, alive, rungs, eta, finalists, survivors)
    return _finish(results, alive, slo, strategy, clock() - search.started, search.out_of_time)


def _admissible(results: list[CandidateResult], budget: AccuracyBudget,
                reference: float) -> list[CandidateResult]:
    alive = []
    for result in results:
        why = ("no accuracy measured for this variant" if result.accuracy is None
               else budget.rejects(result.accuracy, reference))
        if why:
            result.reason = why
        else:
            alive.append(result)
    return alive


def _halving(search: _Search, alive: list[CandidateResult], rungs: Sequence[Rung], eta: int,
             finalists: int, survivors: Sequence[int]) -> list[CandidateResult]:
    for index, rung in enumerate(rungs):
        alive = search.run_rung(alive, rung)
        if index == len(rungs) - 1 or search.out_of_time or not alive:
            break
        remaining = len(rungs) - index - 1
        # shrink by eta per rung, but never below the number of finalists for the last rung
        keep = max(finalists, math.ceil(len(alive) / eta)) if remaining > 1 else finalists
        if index < len(survivors):
            keep = min(keep, max(finalists, survivors[index]))
        front = search.prune_dominated(alive, rung)
        if len(front) < keep:
            # a cheap rung's front can be a single point; the next rung still gets `keep`
            # candidates, the best dominated ones by rank, so it has a real choice; exact
            # ties of a kept point (a delay that full batches never wait for) come last
            seen = {_point(r) for r in front}
            spare = sorted((r for r in alive if r not in front),
                           key=lambda r: (_point(r) in seen, _rank_key(r, search.slo)))
            front += spare[:keep - len(front)]
        alive = search.halve(front, rung, min(keep, len(front)))
    return alive


def _finish(results: list[CandidateResult], last_rung: list[CandidateResult], slo: Slo,
            strategy: str, elapsed: float, out_of_time: bool) -> SelectionReport:
    for result in last_rung:
        m = result.last
        assert m is not None
        if not feasible(m, slo):
            result.reason = _miss_reason(m, slo)
    winners = sorted((r for r in last_rung if r.last and feasible(r.last, slo)),
                     key=lambda r: _rank_key(r, slo))
    chosen = winners[0] if winners else None
    if chosen is not None:
        chosen.status, chosen.reason = CHOSEN, f"highest sustainable throughput: {_describe(chosen.last)}"
        best = score(chosen.last, slo) if chosen.last else 0.0
        for result in winners[1:]:
            assert result.last is not None
            result.reason = f"lower throughput: {score(result.last, slo):.0f} vs {best:.0f} req/s"
    message = _message(chosen, last_rung, slo, out_of_time)
    return SelectionReport(slo.p99_ms, slo.load.describe(), strategy, chosen, results, elapsed,
                           message)


def _miss_reason(m: Measurement, slo: Slo) -> str:
    if m.errors:
        return f"{m.errors} requests failed"
    if m.p99_ms > slo.p99_ms:
        return f"misses the SLO: {_describe(m)} > {slo.p99_ms:g} ms"
    return f"cannot keep up with {slo.load.describe()}: served {m.throughput:.0f} req/s"


def _message(chosen: CandidateResult | None, measured: list[CandidateResult], slo: Slo,
             out_of_time: bool) -> str:
    budget_note = " (search stopped early: time budget spent)" if out_of_time else ""
    if chosen is not None:
        return f"chose {chosen.candidate.key}: {_describe(chosen.last)}{budget_note}"
    if not measured and out_of_time:
        return "no configuration chosen: the time budget was spent before any was served"
    if not measured:
        return "no configuration qualified: none is within the accuracy budget"
    closest = min(measured, key=lambda r: r.last.p99_ms if r.last else math.inf)
    return (f"no configuration meets p99 <= {slo.p99_ms:g} ms at {slo.load.describe()}; "
            f"closest was {closest.candidate.key} ({_describe(closest.last)}){budget_note}")
