"""The Engine: the models of one repository by name and version, loaded, indexed and unloaded.

Each served version is a `ServedModel` (scheduler + instance pool + driver, in `served.py`);
the Engine finds the right one for a request and hands the request to it. It builds every
pool through one factory: worker processes in production, a scripted pool in unit tests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any, TypeAlias

import numpy as np

# A module reference: surge.pipeline.served imports this package back (ModelHandle, Counters).
import surge.pipeline.served as pipelines
from surge.engine.dispatch import compute
from surge.engine.groups import SharedGroups
from surge.engine.index import index_rows, unready_reason
from surge.engine.instances import Clock, InstancePool, PoolEvents, PoolFactory, PoolSpec
from surge.engine.interface import ModelHandle
from surge.engine.ladder import ServedLadder, start_ladder
from surge.engine.metrics import SurgeMetrics
from surge.engine.ondemand import OnDemand, ResidencyOptions
from surge.engine.reload import checked_labels, override_config
from surge.engine.response_cache import ResponseCache
from surge.engine.sequences import EVICTED, UNLOADED, DroppedSequences
from surge.engine.served import ServedModel
from surge.engine.stats import ModelStats
from surge.errors import ConfigError, ModelLoadError, ModelNotReadyError, NotFoundError, SurgeError
from surge.platform import available_cores
from surge.repository import ModelConfig, Repository, served_version
from surge.repository.config import CONFIG_FILE
from surge.scheduler.types import check_options
from surge.workers.hang import HangRule
from surge.workers.pool import WorkerPool, cuda_device_count, plan_instances

log = logging.getLogger(__name__)

UNLOAD_GRACE_S = 30.0
# What serves one version of a model: a model, a pipeline, or a model's accuracy ladder.
# A string: surge.pipeline.served may still be loading when this module is (it imports this
# package back), so its class cannot be looked up at import time.
Served: TypeAlias = "ServedModel | pipelines.ServedPipeline | ServedLadder"
COLD_REASON = "loads on its first request"
EVICTED_REASON = ("unloaded to fit the memory budget (least recently used); loads on its next "
                  "request")


class Engine:
    """Serves the models of one repository: load/unload, readiness, inference, statistics."""

    def __init__(self, repository: Repository, *, models: list[str] | None = None,
                 pool_factory: PoolFactory | None = None, clock: Clock | None = None,
                 cluster_pools: PoolFactory | None = None,
                 residency: ResidencyOptions | None = None) -> None:
        self.repository = repository
        self.metrics = SurgeMetrics()
        self.response_cache = ResponseCache(self.metrics)  # sized by the server (none: 0 bytes)
        # Load on demand, the memory budget and LRU eviction (docs/many-models.md).
        self.on_demand = OnDemand(self, residency or ResidencyOptions())
        self._selected = models
        self._pool_factory = pool_factory or self._placed_pool
        # Ray actor pools (`surge serve --ray`), for models whose placement says so.
        self._cluster_pools = cluster_pools
        # Models whose config asks for a shared worker group (docs/many-models.md).
        self.groups = SharedGroups(str(repository.root))
        self._clock = clock
        self._served: dict[str, dict[int, Served]] = {}
        self._state: dict[str, tuple[str, str]] = {}  # name -> (state, reason) when not served
        self._failed_version: dict[str, int] = {}  # name -> the version whose last load failed
        self._locks: dict[str, asyncio.Lock] = {}
        self._starting: Counter[str] = Counter()  # the step models of pipelines starting
        self.sequence_drops = DroppedSequences()  # why a sequence is gone, across loads
        self._live = False
        self._started = False  # start() finished: every selected model loaded (or failed)

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the selected models (all in the repository when none were named)."""
        names = self._selected if self._selected is not None else self.repository.model_names()
        self._live = True
        for name in names:  # the index says so while config.yaml is read
            self._state[name] = ("LOADING", "")
        try:
            await self._load_all(names)
        except asyncio.CancelledError:  # stopped while starting: none is left LOADING
            for name in names:
                if self._state.get(name, ("", ""))[0] == "LOADING":
                    self._state[name] = ("UNAVAILABLE", "the server stopped before the model "
                                         "loaded; load it again")
            raise
        self._started = True

    async def _load_all(self, names: list[str]) -> None:
        now = await asyncio.gather(*(self._loads_at_start(n) for n in names))
        names = [name for name, eager in zip(names, now, strict=True) if eager]
        results = await asyncio.gather(*(self._load_at_start(n) for n in names),
                                       return_exceptions=True)
        for name, result in zip(names, results, strict=True):
            if isinstance(result, BaseException):
                if self._selected is not None:
                    await self.stop(0.0)
                    raise result
                log.warning("model %s not loaded: %s", name, result)

    async def _load_at_start(self, name: str) -> None:
        """ensure_served, not load: a pipeline may have started its model steps already; under
        a memory budget behind the other loads, as loads at run time are (`OnDemand.gated`)."""
        async with self.on_demand.gated():
            await self.ensure_served(name)

    async def _loads_at_start(self, name: str) -> bool:
        """Whether `name` loads now; one that loads on demand is listed cold (a config that does
        not parse loads now, so that start reports it as before)."""
        try:
            config = await asyncio.to_thread(self.repository.config, name)
        except SurgeError:
            return True
        if self.on_demand.loads_eagerly(config):
            return True
        self.on_demand.cold.add(name)
        self._state[name] = ("UNLOADED", COLD_REASON)
        return False

    async def stop(self, grace_s: float = 30.0) -> None:
        """Drain accepted work (at most `grace_s`), then stop every worker."""
        await self.on_demand.stop()
        served = [m for versions in self._served.values() for m in versions.values()]
        self._started = False
        for model in served:  # at once, before any drain task runs
            model.accepting = False
        # Still found while draining: new requests get ModelNotReadyError (503), not 404.
        await asyncio.gather(*(m.stop(grace_s) for m in served))
        self._served.clear()
        self._live = False

    def live(self) -> bool:
        return self._live

    def ready(self) -> bool:
        """Started, and every loaded model is ready (all instances warm)."""
        return self._live and self._started and all(
            m.ready for versions in self._served.values() for m in versions.values()
        )

    # -- what each served version is built with (ModelHost) -----------------------------------
    @property
    def clock(self) -> Clock:
        """The drivers' time source: `time.monotonic` unless one was given. Not the event
        loop's clock: uvloop's (what `surge serve` runs on) ticks in whole milliseconds, read
        once per turn of the loop, too coarse for batch times of a millisecond or two."""
        return self._clock or time.monotonic

    def make_pool(self, spec: PoolSpec, events: PoolEvents) -> InstancePool:
        return self._pool_factory(spec, events)

    def _placed_pool(self, spec: PoolSpec, events: PoolEvents) -> InstancePool:
        """Ray actors when the config's placement asks for the cluster, threads of this
        process for `in-process`, worker processes else."""
        from surge.cluster.placement import wants_cluster

        if spec.config.placement == "in-process":
            return self._thread_pool(spec, events)
        if not wants_cluster(spec.config.placement, self._cluster_pools is not None):
            return self._worker_pool(spec, events)
        if self._cluster_pools is None:
            raise ConfigError(f"model {spec.ref!r} has placement: cluster; serve it with "
                              "--ray ADDRESS")
        return self._cluster_pools(spec, events)

    def _thread_pool(self, spec: PoolSpec, events: PoolEvents) -> InstancePool:
        """Instances on threads of this process, laid out on the cores as worker processes
        would be."""
        from surge.workers.threads import InProcessPool

        config = spec.config
        placements = plan_instances(config.instances, config.threads, config.device,
                                    available_cores(), cuda_device_count(config.device))
        return InProcessPool(str(self.repository.root), spec.ref, spec.version, placements,
                             events, spin_wait=config.spin_wait,
                             hang=HangRule(config.hang_multiple, config.hang_min_ms / 1e3),
                             warmup=tuple(config.model_warmup))

    def _worker_pool(self, spec: PoolSpec, events: PoolEvents) -> InstancePool:
        """Production pools: one worker process per instance, placed to fit the cores, or a view
        onto the shared worker group the config names."""
        config = spec.config
        if config.worker is not None:
            return self.groups.member(spec, events)
        placements = plan_instances(config.instances, config.threads, config.device,
                                    available_cores(), cuda_device_count(config.device))
        return WorkerPool(
            str(self.repository.root), spec.ref, spec.version, placements, events.on_done,
            on_restart=events.on_restart, on_requeue=events.on_requeue, on_ready=events.on_ready,
            max_batch_size=max(1, config.max_batch_size), spin_wait=config.spin_wait,
            hang=HangRule(config.hang_multiple, config.hang_min_ms / 1e3),
            estimate=events.batch_estimate, on_hung=events.on_hung,
            on_spawn_failure=events.on_spawn_failure, warmup=tuple(config.model_warmup),
            load_timeout_s=config.load_timeout_s,
        )

    # -- lookup ------------------------------------------------------------------------------
    def _find(self, name: str, version: int | None) -> Served:
        versions = self._served.get(name)
        if not versions:
            state = self._state.get(name)
            if state is not None and state[0] == "LOADING":
                raise ModelNotReadyError(f"model {name!r} is loading")
            reason = f": {state[1]}" if state is not None and state[1] else ""
            raise NotFoundError(f"model {name!r} is not loaded{reason}")
        return versions[served_version(name, list(versions),
                                       None if version is None else int(version))]

    def model_ready(self, name: str, version: int | None = None) -> bool:
        try:
            return self._find(name, version).ready
        except SurgeError:
            return False

    def model(self, name: str, version: int | None = None) -> ModelHandle:
        try:
            served = self._find(name, version)
        except ModelNotReadyError as exc:
            raise NotFoundError(str(exc)) from None
        assert served.handle is not None
        return served.handle

    def index(self) -> list[dict[str, str]]:
        """One row per model in the repository (per served version when loaded; see
        `surge.engine.index`)."""
        return index_rows(self.repository, self._served, self._state, self._failed_version)

    def stats(self, name: str, version: int | None = None) -> ModelStats:
        served = self._find(name, version)
        return served.counters.snapshot(served.name, served.version)

    # -- load / unload -----------------------------------------------------------------------
    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def load(self, name: str, config: Mapping[str, Any] | None = None) -> None:
        """(Re)load `name`, with `config` fields replacing config.yaml's when given: the new
        instances start and warm up before requests switch to them and the old ones drain. A
        failed reload leaves the old version serving and says why in the index. Under a memory
        budget it waits for the loads in progress (see `OnDemand.gated`)."""
        async with self.on_demand.gated(), self._lock(name):
            await self._load_locked(name, config)

    async def ensure_served(self, name: str) -> None:
        """Load `name` unless it is served already (a pipeline's model steps, at start)."""
        async with self._lock(name):
            if not self._served.get(name):
                await self._load_locked(name, None)

    async def _load_locked(self, name: str, config: Mapping[str, Any] | None) -> None:
        self._state[name] = ("LOADING", "")
        self._failed_version.pop(name, None)
        try:
            fresh = await self._start_model(name, config)
        except Exception as exc:
            self._load_failed(name, exc)
            raise
        except asyncio.CancelledError:  # the server stops: never left LOADING
            self._load_failed(name, ModelLoadError(
                f"the load of model {name!r} was cancelled before it finished; load it again"))
            raise
        self.metrics.model_loads.labels(name, "success").inc()
        old = self._served.get(name, {})
        for served in fresh.values():  # a reload under a surge goes on where it stood
            if isinstance(served, ServedLadder):
                served.carry_from(old.values())
        self.sequence_drops.carry(name, fresh.values(), old.values())  # told why, next time
        self._served[name] = fresh
        self.response_cache.loaded(name, next(iter(fresh.values())).config)
        self._count_loaded()
        self._state.pop(name, None)
        await asyncio.gather(*(m.stop(UNLOAD_GRACE_S) for m in old.values()))
        await self.on_demand.after_load(name, fresh.values(), next(iter(fresh.values())).config)

    def _count_loaded(self) -> None:
        """Set the loaded-models gauge (set, not computed at scrape: with several front ends
        a scrape reads the values each front end wrote)."""
        self.metrics.models_loaded.set(sum(1 for versions in self._served.values() if versions))

    def _load_failed(self, name: str, error: Exception) -> None:
        self._state[name] = ("UNAVAILABLE", str(error))  # first: whatever follows fails too
        if isinstance(error, NotFoundError) and not self._listed(name):
            # Nothing kept for a name the repository lacks (no state, lock or metric label):
            # clients asking to load made-up names must not grow the server.
            self._state.pop(name, None)
            self._locks.pop(name, None)
            return
        self.metrics.model_loads.labels(name, "failure").inc()
        if name in self._served:
            log.error("model %s: reload failed, the served version stays: %s", name, error)

    def _listed(self, name: str) -> bool:
        """Whether the repository lists `name`; True when it cannot be listed (moved,
        unmounted): the model's failure is kept, with its reason, rather than forgotten."""
        try:
            return name in self.repository.model_names()
        except SurgeError:
            return True

    async def _start_model(self, name: str, override: Mapping[str, Any] | None = None
                           ) -> dict[int, Served]:
        # config.yaml is untrusted data: parsing a large one must not hold the event loop.
        config = await asyncio.to_thread(self.repository.config, name)
        if override:
            config = override_config(config, override)
        await self.on_demand.make_room(name, config)
        if config.kind == "pipeline":
            return await self._start_pipeline(name, config)
        served_versions = tuple(
            await asyncio.to_thread(self.repository.served_versions, name, config))
        if config.ladder:
            ladder = await start_ladder(self, self.repository, name, served_versions, config)
            started: dict[int, Served] = {ladder.version: ladder}
            return await checked_labels(self.repository, name, override, started, ladder.rungs.values())
        if config.variant:
            targets: list[tuple[int, str | None]] = [
                (served_versions[-1] if served_versions else 1, f"{name}@{config.variant}")
            ]
        else:
            if not served_versions:  # the model is there: its config or files are at fault (400)
                source = (f"the load's config override of {name}/{CONFIG_FILE}"
                          if override and "version_policy" in override else None)
                raise ModelLoadError(await asyncio.to_thread(
                    self.repository.no_version, name, config, source))
            targets = [(v, None) for v in served_versions]
        models = {v: ServedModel(self, name, v, served_versions or (v,), config, ref)
                  for v, ref in targets}
        try:
            await asyncio.gather(*(self._start_version(name, m) for m in models.values()))
        except BaseException:
            await asyncio.gather(*(m.stop(0.0) for m in models.values()),
                                 return_exceptions=True)
            raise
        return await checked_labels(self.repository, name, override, dict(models), models.values())

    async def _start_version(self, name: str, model: ServedModel) -> None:
        """Start one version of `name`; the index names the one that failed."""
        try:
            await model.start()
        except Exception:
            self._failed_version.setdefault(name, model.version)
            raise

    async def _start_pipeline(self, name: str, config: ModelConfig) -> dict[int, Served]:
        """A pipeline whose step models need more than a memory budget together is refused:
        by their sizes measured before (`make_room`), else by those its start measured. Its
        steps are busy while it starts: one evicted to load another failed the start."""
        pipeline = pipelines.ServedPipeline(self, name, config)
        self._starting.update(pipeline.models)
        try:
            await pipeline.start()
        finally:
            self._starting.subtract(pipeline.models)
        try:
            self.on_demand.steps_fit(name, pipeline.models)
        except SurgeError:
            await pipeline.stop(0.0)
            raise
        return {pipeline.version: pipeline}

    async def files_changed(self, name: str) -> None:
        """`name`'s files changed on disk (`--model-control poll`): reload it, unless it waits
        unloaded for its next request (on demand, evicted), which then reads the new files;
        loading it now would load every model a repository sync touches (and evict others
        under a budget). A failed load's backoff ends: the files it failed on are gone."""
        if (name in self.on_demand.cold and not self._served.get(name)
                and not self.on_demand.loading(name)):
            self.on_demand.files_changed(name)
            log.info("model %s: not loaded now; its next request loads the new files", name)
            if self._state.get(name, ("", ""))[0] == "UNAVAILABLE":  # its last load failed
                self._state[name] = ("UNLOADED", COLD_REASON)
            return
        await self.load(name)

    async def unload(self, name: str) -> None:
        """Stop serving `name` after its accepted requests finish."""
        async with self._lock(name):
            old = self._served.get(name)
            if old is None:
                self.repository.model_dir(name)  # NotFoundError for an unknown model
            self.sequence_drops.left(name, (old or {}).values(), UNLOADED)
            await asyncio.gather(*(m.stop(UNLOAD_GRACE_S) for m in (old or {}).values()))
            self._served.pop(name, None)
            self.response_cache.forget(name)
            self._count_loaded()
            self._state[name] = ("UNAVAILABLE", "unloaded")
            self.on_demand.forget(name)

    async def evict(self, name: str) -> bool:
        """Unload `name` to make room (its accepted requests finish first); its next request
        loads it again. False when it is busy loading or unloading, or not loaded."""
        lock = self._lock(name)
        if lock.locked() or not self._served.get(name):
            return False
        async with lock:  # free: taken at once, so nothing can slip in between
            old = self._served.pop(name)
            self.response_cache.forget(name)
            self.sequence_drops.left(name, old.values(), EVICTED)
            self._count_loaded()
            self._state[name] = ("EVICTED", EVICTED_REASON)
            self.on_demand.evicted(name)
            await asyncio.gather(*(m.stop(UNLOAD_GRACE_S) for m in old.values()))
        return True

    def busy(self) -> set[str]:
        """Models being loaded or unloaded now, and the models of loaded pipelines (a pipeline
        is ready only while its models are: evicting one would refuse the pipeline's requests)."""
        busy = {name for name, lock in self._locks.items() if lock.locked()}
        busy.update(name for name, count in self._starting.items() if count)
        for versions in self._served.values():
            for served in versions.values():
                if isinstance(served, pipelines.ServedPipeline):
                    busy.update(step.model for step in served.steps if step.model)
        return busy

    # -- inference ---------------------------------------------------------------------------
    async def infer(
        self,
        name: str,
        version: int | None,
        inputs: dict[str, np.ndarray],
        *,
        outputs: list[str] | None = None,
        priority: int = 0,
        timeout_us: int | None = None,
        request_id: str = "",
    ) -> dict[str, np.ndarray]:
        """Queue one request and await its outputs (see the module docstring for the path)."""
        if name in self.on_demand.cold and not self._served.get(name):
            timeout_us = await self.on_demand.wait_loaded(name, priority, timeout_us)
        served = self._find(name, version)
        if self.on_demand.tracking:
            self.on_demand.touch(name)
        if not served.ready:
            why = unready_reason(served)
            raise ModelNotReadyError(f"model {name!r} is not ready" + (f": {why}" if why else ""))
        if isinstance(served, ServedModel) and self.response_cache.serves(served):
            check_options(priority, timeout_us)  # a hit never reaches the queue's checks
            return await self.response_cache.infer(served, inputs, outputs, lambda held: compute(
                served, held, outputs, priority, timeout_us, request_id))
        return await compute(served, inputs, outputs, priority, timeout_us, request_id)

