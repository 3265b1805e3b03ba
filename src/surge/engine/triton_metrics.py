"""Triton's Prometheus metric names (`nv_inference_*`, `nv_cache_*`), made from the statistics
extension's counters (surge/engine/stats.py) when they are asked for, so that dashboards and
alert rules written for Triton read Surge unchanged and the request path does no extra work.

One front end: the families are built from the engine's statistics at scrape time. Several
(`--frontends N`): a collector in one process sees only its own engine, so every front end
copies its statistics into prometheus_client's multiprocess files (`Publisher`, once a second
and at each scrape it answers), and the scrape reads the sum over front ends from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from operator import methodcaller

from prometheus_client import Gauge
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

from surge.engine.interface import InferenceEngine
from surge.engine.stats import FAIL_REASONS, ModelStats
from surge.errors import SurgeError

log = logging.getLogger(__name__)

# `--metrics-names`: which names the metrics port exports.
METRIC_NAMES = ("surge", "triton")
PUBLISH_INTERVAL_S = 1.0  # how often each of several front ends copies its counters out


@dataclass(frozen=True)
class Family:
    """One Triton metric: its name, help text and the value a version's statistics give."""

    name: str
    doc: str
    value: Callable[[ModelStats], int]
    reason: str | None = None  # nv_inference_request_failure's: one series per reason

    def labels(self) -> dict[str, str]:
        """Its labels besides the version's (`model`, `version`)."""
        return {} if self.reason is None else {"reason": self.reason}


def _us(ns: int) -> int:
    return ns // 1000


# Triton's per-model counters, in the order and with the help texts Triton exports them.
COUNTERS = (
    Family("nv_inference_request_success", "Number of successful inference requests, all "
           "batch sizes", lambda s: s.success[0]),
    *(Family("nv_inference_request_failure", "Number of failed inference requests, all "
             "batch sizes", methodcaller("failures", reason), reason)
      for reason in FAIL_REASONS),
    Family("nv_inference_count", "Number of inferences performed (does not include cached "
           "requests)", lambda s: s.inference_count),
    Family("nv_inference_exec_count", "Number of model executions performed (does not include "
           "cached requests)", lambda s: s.execution_count),
    Family("nv_inference_request_duration_us", "Cumulative inference request duration in "
           "microseconds (includes cached requests)", lambda s: _us(s.success[1])),
    Family("nv_inference_queue_duration_us", "Cumulative inference queuing duration in "
           "microseconds (includes cached requests)", lambda s: _us(s.queue[1])),
    Family("nv_inference_compute_input_duration_us", "Cumulative compute input duration in "
           "microseconds (does not include cached requests)",
           lambda s: _us(s.compute_input[1])),
    Family("nv_inference_compute_infer_duration_us", "Cumulative compute inference duration "
           "in microseconds (does not include cached requests)",
           lambda s: _us(s.compute_infer[1])),
    Family("nv_inference_compute_output_duration_us", "Cumulative inference compute output "
           "duration in microseconds (does not include cached requests)",
           lambda s: _us(s.compute_output[1])),
)
# Exported only by a server with a response cache, and there only for the models that enable
# it (`response_cache: true`), as Triton does.
CACHE_COUNTERS = (
    Family("nv_cache_num_hits_per_model", "Number of cache hits per model",
           lambda s: s.cache_hit[0]),
    Family("nv_cache_num_misses_per_model", "Number of cache misses per model",
           lambda s: s.cache_miss[0]),
    Family("nv_cache_hit_duration_per_model", "Total cache hit duration per model, in "
           "microseconds", lambda s: _us(s.cache_hit[1])),
    Family("nv_cache_miss_duration_per_model", "Total cache miss (insert) duration per model, "
           "in microseconds", lambda s: _us(s.cache_miss[1])),
)
# A gauge of the queue, not of the statistics: its value comes from VersionSample.pending.
PENDING = Family("nv_inference_pending_request_count", "Instantaneous number of pending "
                 "requests awaiting execution per-model.", lambda s: 0)
GAUGES = frozenset({PENDING.name})
NAMES = frozenset(f.name for f in (*COUNTERS, *CACHE_COUNTERS, PENDING))
_ORDER = {f.name: i for i, f in enumerate((*COUNTERS, PENDING, *CACHE_COUNTERS))}
_LABELS = ("model", "version")


def metric_names(value: str | Iterable[str]) -> tuple[str, ...]:
    """`--metrics-names surge,triton`: which of METRIC_NAMES to export (at least one); the
    Python API's `ServeOptions(metrics_names=...)` may give a tuple or list of them."""
    if isinstance(value, str):
        parts: list[object] = list(value.split(","))
    elif isinstance(value, (tuple, list, set, frozenset)):
        parts = list(value)
    else:  # a number, None...: the same one-line error, not a TypeError
        parts = [value]
    names = tuple(dict.fromkeys(str(part).strip().lower() for part in parts))
    unknown = [name for name in names if name not in METRIC_NAMES]
    if unknown or not names or names == ("",):
        raise SurgeError(f"--metrics-names {value!r}: give surge, triton or surge,triton "
                         "(surge_* names, Triton's nv_* names, or both)")
    return names


# Every counter, with or without a cache: the values a VersionSample carries, in this order.
ALL_COUNTERS = (*COUNTERS, *CACHE_COUNTERS)
# Versions read between two turns of the event loop: a scrape or a publication of hundreds
# of models otherwise held every request for tens of ms (500 versions: 17 ms each second).
CHUNK = 64


@dataclass(frozen=True)
class VersionSample:
    """What the Triton families say of one served model version."""

    name: str
    version: int
    counts: tuple[int, ...]  # ALL_COUNTERS' values, never falling (see Continuity)
    pending: int  # requests of the model waiting in its queue
    cached: bool = False  # its config enables the response cache: the nv_cache_* are its

    def labels(self) -> dict[str, str]:
        return {"model": self.name, "version": str(self.version)}


class Continuity:
    """Keeps each version's counters from falling: a reload (or an unload and a load, an
    eviction and a load on demand) starts the version's statistics from zero, and a Prometheus
    counter that falls is read as a reset, which with several front ends (one reloaded, one not
    yet) counts the other's whole value again. A fall of any of its counters since the last
    reading means a new load: the totals read last are added to what it counts from then on,
    as Triton's counters go on across a reload."""

    def __init__(self) -> None:
        # (name, version) -> (the statistics' values read last, the earlier loads' totals)
        self._seen: dict[tuple[str, int], tuple[tuple[int, ...], tuple[int, ...]]] = {}

    def counts(self, stats: ModelStats) -> tuple[int, ...]:
        raw = tuple(family.value(stats) for family in ALL_COUNTERS)
        key = (stats.name, stats.version)
        last, base = self._seen.get(key, (raw, (0,) * len(raw)))
        if any(now < before for now, before in zip(raw, last, strict=True)):
            base = tuple(b + before for b, before in zip(base, last, strict=True))
        self._seen[key] = (raw, base)
        return tuple(b + now for b, now in zip(base, raw, strict=True))


def served_versions(engine: InferenceEngine) -> list[tuple[str, int]]:
    """(name, version) of every version the engine serves now."""
    found = set()
    for row in engine.index():
        if row["version"].isdigit() and row["state"] in ("READY", "UNAVAILABLE"):
            found.add((row["name"], int(row["version"])))
    return sorted(found)


def _queue_depths(engine: InferenceEngine) -> dict[str, int]:
    """surge_queue_depth by model: this process's own value, one per model (not version)."""
    return {sample.labels["model"]: int(sample.value)
            for family in engine.metrics.queue_depth.collect() for sample in family.samples}


async def sample_chunks(engine: InferenceEngine, continuity: Continuity
                        ) -> AsyncIterator[list[VersionSample]]:
    """Each served version's statistics, CHUNK versions at a time with a turn of the event
    loop between, and the queue depth under its latest version (the queue and its depth are
    the model's; Triton's dashboards sum it by model)."""
    depths, versions = _queue_depths(engine), served_versions(engine)
    latest = dict(versions)  # sorted: each name's last version is its latest
    for start in range(0, len(versions), CHUNK):
        if start:
            await asyncio.sleep(0)
        samples = []
        for name, version in versions[start:start + CHUNK]:
            try:
                stats = engine.stats(name, version)
            except SurgeError:  # unloaded since the index was read
                continue
            pending = depths.get(name, 0) if latest[name] == version else 0
            samples.append(VersionSample(name, version, continuity.counts(stats), pending,
                                         stats.response_cache))
        yield samples


async def sample_engine(engine: InferenceEngine, continuity: Continuity) -> list[VersionSample]:
    return [sample async for chunk in sample_chunks(engine, continuity) for sample in chunk]


def families(samples: list[VersionSample], cache: bool) -> list[Metric]:
    """The Triton families (counters typed `counter`) of these versions; the nv_cache_* ones
    only of the versions that enable the response cache, on a server that has one (none at
    all without such a version)."""
    cached = [sample for sample in samples if sample.cached] if cache else []
    chosen = [(family, at, samples) for at, family in enumerate(COUNTERS)]
    chosen.append((PENDING, -1, samples))  # -1: its value is the sample's pending count
    if cached:
        chosen += [(family, at, cached) for at, family in enumerate(ALL_COUNTERS)
                   if at >= len(COUNTERS)]
    out: dict[str, Metric] = {}  # the failure's reasons: one family, a series each
    for family, at, shown in chosen:
        metric = out.get(family.name)
        if metric is None:
            metric = out[family.name] = Metric(family.name, family.doc,
                                               "gauge" if family is PENDING else "counter")
        for sample in shown:
            value = sample.pending if at < 0 else sample.counts[at]
            metric.add_sample(family.name, {**sample.labels(), **family.labels()}, value)
    return list(out.values())


class Publisher:
    """Copies one front end's statistics into the multiprocess files as gauges of Triton's
    names: `sum` over every front end that ever wrote (a dead one's counts stay in the totals,
    as the surge_* counters' do), `livesum` for the pending count. Only what changed since it
    last wrote is written again (most of hundreds of models are idle)."""

    def __init__(self, cache: bool) -> None:
        chosen = ALL_COUNTERS if cache else COUNTERS
        gauges: dict[str, Gauge] = {}  # one per name: the failure's reasons share theirs
        for family in chosen:
            if family.name not in gauges:
                gauges[family.name] = Gauge(family.name, family.doc,
                                            (*_LABELS, *family.labels()), registry=None,
                                            multiprocess_mode="sum")
        # (index in counts, gauge, its labels besides the version's, a cache counter)
        self._counters = [(at, gauges[family.name], family.labels(), at >= len(COUNTERS))
                          for at, family in enumerate(chosen)]
        self._pending = Gauge(PENDING.name, PENDING.doc, _LABELS, registry=None,
                              multiprocess_mode="livesum")
        self._written: dict[tuple[str, int], VersionSample] = {}

    def write(self, samples: list[VersionSample]) -> None:
        """Write these versions' values (on the event loop: the counters' own)."""
        for sample in samples:
            key = (sample.name, sample.version)
            if self._written.get(key) == sample:
                continue
            labels = sample.labels()
            for at, gauge, extra, of_cache in self._counters:
                if sample.cached or not of_cache:
                    gauge.labels(**labels, **extra).set(sample.counts[at])
            self._pending.labels(**labels).set(sample.pending)
            self._written[key] = sample

    def forget_others(self, served: set[tuple[str, int]]) -> None:
        """Versions no longer served keep their counts in the files but wait on no queue: a
        pending count left there would stay in the sums for as long as this front end lives."""
        for key in [key for key in self._written if key not in served]:
            self._pending.labels(model=key[0], version=str(key[1])).set(0)
            del self._written[key]


class TritonSource:
    """The Triton families of one front end's engine. Gathered on the event loop, where the
    counters change (a snapshot taken from the rendering thread could see a dict grow)."""

    def __init__(self, engine: InferenceEngine, cache: bool, shared: bool) -> None:
        self.engine, self.cache = engine, cache
        self.continuity = Continuity()
        self.publisher = Publisher(cache) if shared else None
        self._task: asyncio.Task[None] | None = None
        self._publishing = asyncio.Lock()  # one round at a time: each one's forget_others

    async def gather(self) -> list[VersionSample] | None:
        """This engine's samples; None with several front ends, whose sums the multiprocess
        files hold (this front end's share brought up to date first)."""
        if self.publisher is None:
            return await sample_engine(self.engine, self.continuity)
        await self.publish()
        return None

    def start(self) -> None:
        if self.publisher is not None:
            self._task = asyncio.ensure_future(self._keep_published())

    async def stop(self) -> None:
        """Stop publishing, once the listeners drained: their requests' counts written."""
        if self._task is None or self.publisher is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self.publish()

    async def _keep_published(self) -> None:
        while True:
            await self.publish()
            await asyncio.sleep(PUBLISH_INTERVAL_S)

    async def publish(self) -> None:
        """Write this front end's values into the multiprocess files, each chunk as soon as it
        is read (so that no older reading overwrites it)."""
        publisher = self.publisher
        if publisher is None:
            return
        async with self._publishing:
            served: set[tuple[str, int]] = set()
            try:
                async for chunk in sample_chunks(self.engine, self.continuity):
                    publisher.write(chunk)
                    served.update((sample.name, sample.version) for sample in chunk)
                publisher.forget_others(served)
            except OSError as exc:  # the directory's disk: written again a second later
                log.warning("Triton metrics not written to the multiprocess directory: %s",
                            exc)


def split(collected: Iterable[Metric]) -> tuple[list[Metric], list[Metric]]:
    """Surge's families and the Triton ones read from the multiprocess files (gauges there),
    typed back as Triton types them, in Triton's order."""
    surge, triton = [], []
    for metric in collected:
        if metric.name not in NAMES:
            surge.append(metric)
            continue
        typed = Metric(metric.name, metric.documentation,
                       "gauge" if metric.name in GAUGES else "counter")
        typed.samples = [s._replace(value=int(s.value)) for s in metric.samples]
        triton.append(typed)
    return surge, sorted(triton, key=lambda m: _ORDER[m.name])


def restrict(metrics: list[Metric], names: tuple[str, ...]) -> list[Metric]:
    """The families and samples `?name[]=...` asks for, as prometheus_client's filter keeps."""
    if not names:
        return metrics
    kept = []
    for metric in metrics:
        samples = [s for s in metric.samples if s.name in names]
        if samples:
            narrowed = Metric(metric.name, metric.documentation, metric.type, metric.unit)
            narrowed.samples = samples
            kept.append(narrowed)
    return kept


def text(metrics: list[Metric]) -> bytes:
    """Triton's families in the Prometheus text format as Triton writes them: a counter's
    name without the `_total` prometheus_client's writer would add."""
    lines = []
    for metric in metrics:
        lines.append(f"# HELP {metric.name} {_escape_help(metric.documentation)}\n")
        lines.append(f"# TYPE {metric.name} {metric.type}\n")
        for s in metric.samples:
            labels = ",".join(f'{k}="{_escape_label(v)}"' for k, v in sorted(s.labels.items()))
            lines.append(f"{s.name}{{{labels}}} {_number(s.value)}\n")
    return "".join(lines).encode("utf-8")


def openmetrics(metrics: list[Metric]) -> list[Metric]:
    """For the OpenMetrics format, whose counters must end in `_total`: Triton's counters as
    `unknown`, so that their samples keep Triton's names (which PromQL queries name)."""
    out = []
    for metric in metrics:
        retyped = Metric(metric.name, metric.documentation,
                         "gauge" if metric.type == "gauge" else "unknown")
        retyped.samples = metric.samples
        out.append(retyped)
    return out


def _number(value: float) -> str:
    """Whole numbers as Triton writes them (`3`, not `3.0`)."""
    if float(value).is_integer():
        return str(int(value))
    return floatToGoString(value)


def _escape_help(doc: str) -> str:
    return doc.replace("\\", r"\\").replace("\n", r"\n")


def _escape_label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


__all__ = ["ALL_COUNTERS", "CHUNK", "METRIC_NAMES", "NAMES", "PUBLISH_INTERVAL_S", "Continuity",
           "Publisher", "TritonSource", "VersionSample", "families", "metric_names",
           "openmetrics", "restrict", "sample_chunks", "sample_engine", "split", "text"]
