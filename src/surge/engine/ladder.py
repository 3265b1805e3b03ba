"""One model served as an accuracy ladder: a `ServedModel` per rung, one `LadderController`.

    make_request(inputs) -> LadderRequest (the client's pin checked against the rungs)
    infer(request)       -> arrival rate -> controller.update -> controller.choose(pin)
                         -> that rung's ServedModel: make_request, infer (its own queue,
                            admission, SLO batching and instances)
                         -> an unpinned answer of a rung below the top with NaN or infinite
                            floats: computed again on the top rung

Every rung is loaded and warm (each probes its batch times on load, as any model with
`slo_p99_ms` does), so a move down the ladder costs nothing at the moment of the surge. The
rungs keep their own queues: a pinned request waits only behind the traffic of its own rung.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Coroutine, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np

from surge.engine.interface import ModelHandle
from surge.engine.reload import Fingerprint, fingerprint
from surge.engine.route import check_pin, request_route
from surge.engine.served import ModelHost, ServedModel
from surge.engine.stats import ModelStats, Phases
from surge.errors import (
    ConfigError,
    DeadlineExceededError,
    ModelLoadError,
    ModelNotReadyError,
    NotFoundError,
)
from surge.repository import ModelConfig, Repository
from surge.repository.config import ORIGINAL
from surge.repository.repository import VARIANTS_DIR
from surge.scheduler.ladder import LadderController, LadderSettings, Rung, WindowRate
from surge.scheduler.queues import own_timeout_fails
from surge.scheduler.types import priority_level

log = logging.getLogger(__name__)
T = TypeVar("T")
# Config fields that leave how long a rung's batch of each size computes as it was: a reload
# changing only these keeps the rung's settled batch times (see `same_batch_times`). The others
# (engine, threads, instances, device, placement, max_batch_size, parameters...) may change them.
BATCH_TIME_NEUTRAL: set[str] = {
    "schema_version", "name", "queue", "slo_p99_ms", "batching", "hang_multiple", "hang_min_ms",
    "version_policy", "labels", "load", "pinned"}


def ladder_rungs(repository: Repository, name: str, config: ModelConfig) -> list[Rung]:
    """The rungs of `config.ladder` with their accuracy (percent): `ladder_accuracy` (what
    `surge tune` measured) first, else the variant's `variant.yaml` check (the original's is
    the reference accuracy the variants were checked against)."""
    checks = {r: _check(repository, name, r) for r in config.ladder if r != ORIGINAL}
    reference = next((c["reference_accuracy"] for c in checks.values()
                      if _fraction(c.get("reference_accuracy")) is not None), None)
    rungs = []
    for rung in config.ladder:
        accuracy = config.ladder_accuracy.get(rung)
        if accuracy is None:
            found = _fraction(reference if rung == ORIGINAL else checks[rung].get("accuracy"))
            accuracy = 100.0 * found if found is not None else None
        if accuracy is None:
            raise ConfigError(
                f"{name}/config.yaml: ladder rung {rung!r} has no measured accuracy: run "
                "`surge tune` (it writes ladder_accuracy) or `surge optimize` with labelled data")
        rungs.append(Rung(rung, float(accuracy), config.instances, max(1, config.max_batch_size)))
    return rungs


def rung_files(root: Path, name: str, version: int, rungs: Iterable[str]
               ) -> dict[str, Fingerprint]:
    """The files each rung loads: the version's directory for the original, the variant's for
    the others (a reload keeps the settled batch times of the rungs whose files are the same)."""
    return {r: fingerprint(root, f"{name}/{version}" if r == ORIGINAL
                           else f"{name}/{VARIANTS_DIR}/{r}") for r in rungs}


def _check(repository: Repository, name: str, variant: str) -> dict[str, Any]:
    try:
        check = repository.variant_info(name, variant).get("check", {})
    except NotFoundError as exc:  # the config names it: a bad config (400), not a missing model
        raise ConfigError(f"{name}/config.yaml: ladder rung {variant!r}: {exc}") from None
    return check if isinstance(check, dict) else {}


def _fraction(value: Any) -> float | None:
    """An accuracy from a variant.yaml (0 to 1), or None: that file is data, and a `true` or
    `.nan` there would route traffic by a made-up accuracy."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if 0.0 <= value <= 1.0 else None


def same_batch_times(old: ModelConfig, new: ModelConfig) -> bool:
    """Whether a rung served with `new` computes its batches as fast as with `old` (its files
    the same): a reload of queue limits or of the SLO alone once dropped the settled times, and
    priced at the load-time probe beside a surge, the ladder never climbed back up."""
    return (old.model_dump(exclude=BATCH_TIME_NEUTRAL)
            == new.model_dump(exclude=BATCH_TIME_NEUTRAL))


def rung_config(config: ModelConfig, rung: str) -> ModelConfig:
    """The config one rung is served with: the model's, as a plain model of that variant."""
    return config.model_copy(update={
        "ladder": [], "ladder_accuracy": {}, "max_accuracy_drop": None,
        "variant": None if rung == ORIGINAL else rung})


class LadderRequest(NamedTuple):
    """One request to a laddered model, before the controller picks its rung (a tuple: it is
    made for every request, and a frozen dataclass costs several times as much to build)."""

    inputs: Mapping[str, np.ndarray]
    outputs: list[str] | None
    priority: int
    timeout_us: int | None
    request_id: str
    pinned: str | None  # the rung the client pinned, or None: the controller chooses


class ServedLadder:
    """The rungs of one model version and the controller that routes among them."""

    def __init__(self, host: ModelHost, name: str, version: int, versions: tuple[int, ...],
                 config: ModelConfig, rungs: list[Rung]) -> None:
        self.name, self.version, self.versions, self.config = name, version, versions, config
        assert config.slo_p99_ms is not None, "a ladder's config has an SLO"
        assert config.max_accuracy_drop is not None, "and an accuracy budget"
        self._clock = host.clock
        self.rungs = {
            r.name: ServedModel(host, name, version, versions, rung_config(config, r.name),
                                None if r.name == ORIGINAL else f"{name}@{r.name}")
            for r in rungs}
        self.controller = LadderController(
            rungs, LadderSettings(config.slo_p99_ms / 1e3, config.max_accuracy_drop),
            self._batch_time, self._live_instances)
        if self.controller.excluded:
            log.info("model %s: ladder rungs %s are outside max_accuracy_drop %s and take only "
                     "pinned requests", name, ", ".join(self.controller.excluded),
                     config.max_accuracy_drop)
        self._rate = WindowRate()
        self.files: dict[str, Fingerprint] = {}  # what each rung was loaded from (`rung_files`)
        self._accepting = False
        self._batched = False  # whether requests carry a batch dimension (known once started)
        self.handle: ModelHandle | None = None
        self.counters = LadderCounters(self)
        metrics = host.metrics
        for rung_name, rung in self.rungs.items():
            rung.answers_counter = metrics.variant_requests.labels(name, rung_name)
        self._m_share = {r: metrics.ladder_share.labels(name, r) for r in self.rungs}
        self._m_predicted = metrics.ladder_predicted_p99.labels(name)
        self._m_recomputed = {r: metrics.ladder_recomputed.labels(name, r) for r in self.rungs}
        self._warned: set[str] = set()  # rungs whose non-finite answers were logged
        # Unpinned requests on a rung below the top, whose answer may go to the top rung.
        self._handed_up = 0
        self._none_handed_up = asyncio.Event()
        self._none_handed_up.set()

    def carry_from(self, old: Iterable[object]) -> None:
        """A reload: take over the load the ladder among `old` (what served the model) was
        under: the arrivals of its rate windows, and its controller's place when it had the
        same rungs. A fresh controller at the top rung admitted the first second of a surge
        in progress as if idle; with other rungs it starts at the top, and decides on the
        carried arrivals at the first request. Called just before the switch: no arrival
        comes in between."""
        previous = next((o for o in old if isinstance(o, ServedLadder)), None)
        if previous is None:
            return
        if previous._batched == self._batched:  # arrivals counted in the same unit
            self._rate = previous._rate  # the old ladder takes no arrival once switched from
        unchanged = [r for r, files in self.files.items()
                     if previous.files.get(r) == files and r in previous.rungs
                     and same_batch_times(previous.rungs[r].config, self.rungs[r].config)]
        if not self.controller.carry_from(previous.controller, unchanged):
            return
        self._publish_shares()
        log.info("model %s: the reloaded ladder keeps the shares %s", self.name,
                 self.controller.shares())

    def _batch_time(self, rung: str, size: int) -> float | None:
        return self.rungs[rung].scheduler.fitted_time(size)

    def _live_instances(self, rung: str) -> int:
        return self.rungs[rung].live

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        for rung in self.rungs.values():  # one at a time: each probes its batch times alone
            await rung.start()
        top = self.rungs[self.controller.top]
        assert top.handle is not None
        self.handle = top.handle
        self._batched = top.handle.signature.batched
        self._accepting = True
        self._publish_shares()

    @property
    def accepting(self) -> bool:
        return self._accepting

    @accepting.setter
    def accepting(self, value: bool) -> None:
        # The rungs keep accepting until `stop`: requests reach them only through the ladder,
        # and the top rung must still take the answers handed up for a second computation.
        self._accepting = value

    @property
    def ready(self) -> bool:
        """Accepting, with a rung that takes unpinned traffic able to compute it: one rung's
        instances lost (restarting) leaves the others to serve."""
        return self._accepting and any(self.rungs[r.name].ready for r in self.controller.rungs)

    async def stop(self, grace_s: float) -> None:
        """Drain the rungs below the top, then the top once the non-finite answers they handed
        up are computed again: stopped first, it refused them (a 503 for accepted requests in
        a reload or an eviction)."""
        self._accepting = False
        deadline = self._clock() + grace_s
        top = self.controller.top
        await asyncio.gather(*(r.stop(grace_s) for n, r in self.rungs.items() if n != top))
        if self._handed_up:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._none_handed_up.wait(),
                                       max(0.0, deadline - self._clock()))
        await self.rungs[top].stop(max(0.0, deadline - self._clock()))

    def instances_note(self) -> str:
        notes = [f"{name}: {note}" for name, rung in self.rungs.items()
                 if (note := rung.instances_note())]
        return "; ".join(notes)

    # -- requests ----------------------------------------------------------------------------
    def make_request(self, inputs: Mapping[str, np.ndarray], outputs: list[str] | None,
                     priority: int, timeout_us: int | None, request_id: str) -> LadderRequest:
        """The request with its pin checked (inputs are checked by the rung that takes it)."""
        pinned = check_pin(request_route.get(), self.controller.names)
        return LadderRequest(inputs, outputs, priority, timeout_us, request_id, pinned)

    def infer(self, request: LadderRequest) -> Coroutine[Any, Any, dict[str, np.ndarray]]:
        """The chosen rung's `infer` for `request`, to be awaited (one coroutine per request,
        the rung's: the laddered path adds no frame of its own, but for an unpinned request
        on a rung below the top, whose answer is checked for non-finite values)."""
        if not self._accepting:
            raise ModelNotReadyError(f"model {self.name!r} is not accepting requests")
        now = self._clock()
        self._rate.arrive(now, self._rows(request.inputs) if self._batched else 1)
        if self.controller.due(now):
            self._decide(now)
        chosen = self.controller.choose(request.pinned)
        rung = self.rungs[chosen]
        if not rung.ready:  # its instances lost since the last decision
            chosen = self._ready_rung(chosen, request.pinned)
            rung = self.rungs[chosen]
        queued = rung.make_request(request.inputs, request.outputs, request.priority,
                                   request.timeout_us, request.request_id)
        if request.pinned is not None or chosen == self.controller.top:
            return rung.infer(queued)
        return self._finite_or_top(rung.infer(queued), request, chosen, now)

    def _ready_rung(self, chosen: str, pinned: str | None) -> str:
        """The most accurate usable rung that can compute now, for an unpinned request
        routed to `chosen`, which cannot; a pinned one is refused (it asked for that rung)."""
        if pinned is None:
            for rung in self.controller.rungs:
                if self.rungs[rung.name].ready:
                    return rung.name
        raise ModelNotReadyError(
            f"model {self.name!r}: variant {chosen!r} has no live instance now; retry later"
            + (", or send the request without the variant pin" if pinned is not None else ""))

    async def _finite_or_top(self, work: Coroutine[Any, Any, dict[str, np.ndarray]],
                             request: LadderRequest, rung: str,
                             arrival: float) -> dict[str, np.ndarray]:
        """A cheaper rung's answer when its floats are all finite, else the top rung's: moving
        down the ladder must not turn the model's finite answer into NaN or infinity (fp16
        overflows past 65504). The top rung's own answer stands, whatever it holds. Counted
        while in progress: `stop` keeps the top rung up until none is."""
        self._handed_up += 1
        self._none_handed_up.clear()
        try:
            outputs = await work
            if all_finite(outputs):
                return outputs
            top = self.controller.top
            self._m_recomputed[rung].inc()
            if rung not in self._warned:
                self._warned.add(rung)
                log.warning("model %s: variant %s answered NaN or infinite values; such "
                            "requests are computed again on %s (counted in "
                            "surge_ladder_recomputed_total)", self.name, rung, top)
            timeout_us = self._time_left(request.timeout_us, arrival, rung,
                                         priority_level(request.priority))
            queued = self.rungs[top].make_request(request.inputs, request.outputs,
                                                  request.priority, timeout_us,
                                                  request.request_id)
            return await self.rungs[top].infer(queued)
        finally:
            self._handed_up -= 1
            if not self._handed_up:
                self._none_handed_up.set()

    def _time_left(self, timeout_us: int | None, arrival: float, rung: str,
                   level: int) -> int | None:
        """What is left of a request's timeout (microseconds) for its second computation;
        None where the top rung's queue would keep it past its timeout (timeout_action
        delay, or allow_timeout_override false): its own policy then decides."""
        if not timeout_us:
            return timeout_us
        left = timeout_us - (self._clock() - arrival) * 1e6
        top = self.rungs[self.controller.top].scheduler.config
        if left < 1.0 and not own_timeout_fails(top, level):
            return None
        if left < 1.0:
            raise DeadlineExceededError(
                f"model {self.name!r}: variant {rung!r} answered NaN or infinite values and the "
                f"deadline passed before {self.controller.top!r} could compute the request again")
        return int(left)

    def _decide(self, now: float) -> None:
        level = self.controller.level
        self.controller.update(now, self._rate.rate(now))
        if self.controller.level != level:
            log.info("model %s: ladder shares now %s (predicted p99 %.1f ms)", self.name,
                     self.controller.shares(), self.controller.predicted_p99 * 1e3)
            self._publish_shares()

    def _rows(self, inputs: Mapping[str, np.ndarray]) -> int:
        """Items a batched request brings: the controller plans in items, as batches are sized."""
        first = next(iter(inputs.values()), None)
        return int(first.shape[0]) if first is not None and first.ndim else 1

    def _publish_shares(self) -> None:
        shares = self.controller.shares()
        for name, gauge in self._m_share.items():
            gauge.set(shares.get(name, 0.0))
        predicted = self.controller.predicted_p99
        self._m_predicted.set(predicted if predicted != float("inf") else -1.0)


async def start_ladder(host: ModelHost, repository: Repository, name: str,
                       versions: tuple[int, ...], config: ModelConfig) -> ServedLadder:
    """Load every rung of `name`'s ladder (the newest served version for `original`) and
    return it serving; a rung that fails to load stops the others and fails the load."""
    rungs = await asyncio.to_thread(ladder_rungs, repository, name, config)
    if ORIGINAL in config.ladder and not versions:
        raise ModelLoadError(f"model {name!r} has no servable version for its ladder's "
                             f"{ORIGINAL!r} rung")
    ladder = ServedLadder(host, name, versions[-1] if versions else 1, versions or (1,),
                          config, rungs)
    ladder.files = await asyncio.to_thread(rung_files, repository.root, name, ladder.version,
                                           ladder.rungs)
    try:
        await ladder.start()
    except BaseException:
        await ladder.stop(0.0)
        raise
    return ladder


class LadderCounters:
    """The statistics of a laddered model: the rungs' counters summed, and the latency model of
    each rung with the controller's state beside them."""

    def __init__(self, ladder: ServedLadder) -> None:
        self._ladder = ladder

    def snapshot(self, name: str, version: int) -> ModelStats:
        ladder = self._ladder
        parts = {r: m.counters.snapshot(name, version) for r, m in ladder.rungs.items()}
        batches = {size: _sum_pairs(pairs)
                   for size, pairs in _per_size([p.batch_stats for p in parts.values()]).items()}
        controller = ladder.controller
        predicted = controller.predicted_p99
        latency: dict[str, object] = {
            "variants": {r: p.latency for r, p in parts.items()},
            "ladder": {"shares": controller.shares(), "level": controller.level,
                       "predicted_p99_ms": round(predicted * 1e3, 3)
                       if predicted != float("inf") else None,
                       "excluded": list(controller.excluded)},
        }
        def total(field: str) -> tuple[int, int]:
            return _sum_pairs([getattr(p, field) for p in parts.values()])

        return ModelStats(
            name, version, sum(p.inference_count for p in parts.values()),
            sum(p.execution_count for p in parts.values()),
            max(p.last_inference for p in parts.values()), total("success"), total("fail"),
            total("queue"), total("compute_input"), total("compute_infer"),
            total("compute_output"), batches, latency,
            compute_cpu=total("compute_cpu"), preprocess_cpu=total("preprocess_cpu"),
            batch_phases=_summed_phases([p.batch_phases for p in parts.values()]),
            fail_reasons=dict(sum((Counter(p.fail_reasons) for p in parts.values()), Counter())))


def all_finite(outputs: Mapping[str, np.ndarray]) -> bool:
    """Whether every float output holds only finite values."""
    return all(array.dtype.kind != "f" or bool(np.isfinite(array).all())
               for array in outputs.values())


def _sum_pairs(pairs: list[tuple[int, int]]) -> tuple[int, int]:
    return (sum(p[0] for p in pairs), sum(p[1] for p in pairs))


def _summed_phases(parts: list[dict[int, Phases]]) -> dict[int, Phases]:
    """Per batch size, each phase's (count, ns) summed over the rungs."""
    return {size: (_sum_pairs([r[0] for r in rows]), _sum_pairs([r[1] for r in rows]),
                   _sum_pairs([r[2] for r in rows]))
            for size, rows in _per_size(parts).items()}


def _per_size(parts: list[dict[int, T]]) -> dict[int, list[T]]:
    """The rungs' figures of each batch size, by size."""
    grouped: dict[int, list[T]] = {}
    for part in parts:
        for size, value in part.items():
            grouped.setdefault(size, []).append(value)
    return dict(sorted(grouped.items()))


__all__ = ["LadderRequest", "ServedLadder", "all_finite", "ladder_rungs", "rung_config",
           "start_ladder"]
