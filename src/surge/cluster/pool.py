"""The instances of one model version as Ray actors on compute nodes: an `InstancePool`.

The served model's scheduler stays the only queue: this pool only takes a batch when one of
its live instances has a free place (two per instance: one computing, one waiting on the
node), sends it to the least loaded (then the fastest) on the instance's direct channel (Ray
calls when there is none), and reports the result, with the instance that computed it, back
on the event loop. Everything blocking (packing a large batch, a put, the node table) runs
off the loop.

Faults: an actor that dies, a node that goes away, or a node that stops answering heartbeats
(`surge.cluster.heartbeat`, on its own thread) loses that instance. Its batches go back to the
head of the queue once (another instance computes them) while their deadlines allow, else
fail with WorkerCrashedError; the instance is replaced with backoff, away from a silent node
for a while (a replacement still waiting for a node after that while starts afresh). With no
instance left, what waits for one fails once a replacement cannot load the model, no live node
could hold one, or none is ready within `start_timeout_s` (it would wait for ever otherwise).
Actors are killed on a thread (`ClusterSite.kill`). Scaling: see `ScalePolicy`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import Any

from surge.cluster.actor import ActorSpec, BatchReply, InstanceInfo, same_surge, unpack_batch
from surge.cluster.channel import Channel, ChannelClosedError
from surge.cluster.heartbeat import Heartbeat
from surge.cluster.instance import Instance, State, close_channel, note_placement
from surge.cluster.paths import open_channel, path_name, ray_call
from surge.cluster.placement import (
    actor_options,
    check_settings,
    describe_demand,
    fitting_nodes,
    instance_threads,
)
from surge.cluster.scaling import ScalePolicy
from surge.cluster.site import ClusterSite
from surge.engine.instances import PoolEvents, PoolSpec
from surge.errors import ModelLoadError, ServingError, WorkerCrashedError
from surge.runtimes.base import Signature
from surge.scheduler import Batch
from surge.workers.messages import BatchDone
from surge.workers.pool import BatchResult

log = logging.getLogger(__name__)

BACKOFF_START_S = 0.2
BACKOFF_MAX_S = 30.0
RETRIED_KEPT = 100_000  # retried requests remembered (see RayPool._retried)
CHANNEL_TIMEOUT_S = 5.0  # to open an instance's channel before falling back to Ray calls
NODE_CHECK_S = 2.0  # how often the node table is read while no instance lives


class RayPool:
    """Start, dispatch to, watch, replace and scale the Ray actors of one model version."""

    def __init__(self, spec: PoolSpec, events: PoolEvents, site: ClusterSite) -> None:
        self.spec, self._events, self._site = spec, events, site
        self.model = spec.ref.split("@", 1)[0]
        self._config = spec.config.cluster
        self.signature: Signature | None = None
        self._instances: list[Instance] = []
        self._indexes = 0
        self._failures = 0  # launches in a row that did not become ready: the backoff
        self._replacements = 0  # lost instances whose replacement waits out its backoff
        self._warm = False
        self._stopping = False
        self._changed = asyncio.Event()
        # Ids of requests already sent back to the queue once, oldest first; one that then
        # expires in the queue is never seen here again, hence the bound (RETRIED_KEPT).
        self._retried: dict[int, None] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._watcher: asyncio.Task[None] | None = None
        self._loop = asyncio.get_running_loop()
        self._empty_since: float | None = None  # when the last live instance was lost
        # When the last node check ended (None while one runs).
        self._nodes_checked: float | None = -math.inf
        ceiling = self._config.max_instances or self._config.instances
        self._heartbeat = Heartbeat(self._config.heartbeat_ms / 1e3,
                                    self._config.heartbeat_misses, self._heard_threadsafe)
        self._policy = ScalePolicy(self._config.instances, ceiling,
                                   self._config.scale_up_after_s, self._config.scale_down_idle_s)

    # -- what the driver reads (InstancePool) ------------------------------------------------
    @property
    def instances(self) -> int:
        return max(self._config.instances, len(self._instances))

    @property
    def live(self) -> list[Instance]:
        return [i for i in self._instances if i.state is State.READY]

    @property
    def ready(self) -> bool:
        return self._warm and not self._stopping and bool(self.live)

    @property
    def idle_count(self) -> int:
        return sum(i.free for i in self._instances)

    @property
    def idle_workers(self) -> int:
        return sum(1 for i in self.live if not i.inflight)

    def devices(self) -> tuple[str, ...]:
        return tuple(i.device for i in self.live if i.device)

    def nodes(self) -> dict[str, int]:
        """Live instances per node id."""
        count: dict[str, int] = {}
        for instance in self.live:
            count[instance.node_id] = count.get(instance.node_id, 0) + 1
        return count

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Place every instance, wait until all loaded the model (ModelLoadError otherwise)."""
        check_settings(self._config, self._site.actor_class(), self.spec.ref)
        nodes = await self._site.node_table()
        if not fitting_nodes(self._config, nodes):
            raise ModelLoadError(f"model {self.spec.ref!r}: no node of the Ray cluster can hold "
                                 f"an instance (one needs {describe_demand(self._config)})")
        for _ in range(self._config.instances):
            self._launch()
        try:
            await asyncio.wait_for(self._all_loaded(), self._config.start_timeout_s)
        except TimeoutError:
            waiting = sum(1 for i in self._instances if i.state is State.STARTING)
            await self.stop(0.0)
            raise ModelLoadError(
                f"model {self.spec.ref!r}: {waiting} cluster instance(s) not placed and loaded "
                f"within {self._config.start_timeout_s:g} s (each needs "
                f"{describe_demand(self._config)})") from None
        except ModelLoadError:
            await self.stop(0.0)
            raise
        self._warm = True
        self._watcher = asyncio.create_task(self._watch(), name=f"surge-cluster-{self.model}")
        self._heartbeat.start()

    async def _all_loaded(self) -> None:
        while not all(i.state is State.READY for i in self._instances):
            failed = [i for i in self._instances if i.state is State.DEAD]
            if failed:
                raise ModelLoadError(f"model {self.spec.ref!r}: {failed[0].error}")
            self._changed.clear()
            await self._changed.wait()

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Kill every actor; batches still held fail with WorkerCrashedError."""
        self._stopping = True
        self._heartbeat.stop()
        if self._watcher is not None:
            self._watcher.cancel()
        for instance in list(self._instances):
            self._retire(instance, WorkerCrashedError("model is being stopped"))
        self._instances.clear()
        self._update_gauge()
        for task in list(self._tasks):
            task.cancel()

    def _retire(self, instance: Instance, error: Exception | None) -> None:
        """Take an instance out and kill its actor; fail what it held with `error`."""
        instance.state = State.DEAD
        self._heartbeat.forget(instance.index)
        close_channel(instance)
        self._site.kill(instance.actor)
        batches = list(instance.inflight.values())
        instance.inflight.clear()
        for batch in batches:
            self._events.on_done(batch, None, error or WorkerCrashedError("instance removed"),
                                 None)

    # -- instances ---------------------------------------------------------------------------
    def _launch(self) -> Instance:
        """Create one actor (Ray places it) and load the model in it, in the background."""
        spec = self.spec
        avoided = frozenset(self._site.suspects)
        options = actor_options(self._config, avoided)
        actor = self._site.actor_class().options(**options).remote(ActorSpec(
            self._site.root, spec.ref, spec.version, instance_threads(self._config),
            "cpu" if not self._config.gpus else "cuda", spec.config.spin_wait,
            tuple(spec.config.model_warmup)))
        self._indexes += 1
        instance = Instance(self._indexes, actor, time.monotonic(), avoided=avoided)
        self._instances.append(instance)
        self._spawn(self._load(instance))
        self._spawn(note_placement(instance))
        self._update_gauge()
        return instance

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _load(self, instance: Instance) -> None:
        from ray.exceptions import RayError

        info: InstanceInfo | None = None
        try:
            info = same_surge(await instance.actor.load.remote())
        except RayError as exc:
            instance.error = f"its actor died while loading ({type(exc).__name__}: {exc})"
        if instance.state is State.DEAD:  # stopped or replaced meanwhile
            return
        if info is None or info.error:
            if info is not None:
                instance.error = f"on node {info.node_ip}: {info.error}"
            self._failed_load(instance, model_error=info is not None)
            return
        if self.signature is None:
            self.signature = info.signature
        if self._site.channel:
            instance.channel = await self._open_channel(instance)
            if instance.state is State.DEAD:
                close_channel(instance)
                return
        now = time.monotonic()
        instance.state, instance.node_id, instance.device = State.READY, info.node_id, info.device
        instance.idle_since, self._empty_since = now, None
        self._heartbeat.watch(instance.index, instance.actor,
                              instance.channel is not None and instance.channel.shared)
        self._failures = 0
        log.info("instance %s[%d] ready on node %s (%s, pid %d)", self.spec.ref, instance.index,
                 info.node_ip, info.device, info.pid)
        self._changed.set()
        self._update_gauge()
        self._events.on_ready()

    async def _open_channel(self, instance: Instance) -> Channel | None:
        """The instance's direct channel, or None (batches go as Ray calls) when it cannot
        be opened: a firewall between the nodes, say."""
        try:
            return await open_channel(instance.actor, self._site.shared_memory,
                                      CHANNEL_TIMEOUT_S)
        except Exception as exc:  # anything: Ray calls still work
            log.warning("instance %s[%d]: no direct channel (%s: %s); batches go as Ray calls",
                        self.spec.ref, instance.index, type(exc).__name__, exc)
            return None

    def _failed_load(self, instance: Instance, model_error: bool = True) -> None:
        """`model_error`: the model itself did not load (not: the actor or its node died)."""
        instance.state = State.DEAD
        self._changed.set()
        if not self._warm or self._stopping:
            return  # start() reports it
        log.error("instance %s[%d] could not load: %s", self.spec.ref, instance.index,
                  instance.error)
        self._instances.remove(instance)
        self._replace_later()
        if model_error and not self.live:
            self._unavailable(f"instance {instance.index} could not load: {instance.error}",
                              time.monotonic())

    def _unavailable(self, why: str, now: float) -> None:
        """No instance lives and none is sure to come (its load failed, or none was ready
        within `start_timeout_s`): the requests waiting for one fail now rather than hang."""
        self._empty_since = now  # once more after as long, should any wait then
        self._events.on_unavailable(WorkerCrashedError(
            f"model {self.spec.ref!r} has no live instance: {why}"))

    def _replace_later(self) -> None:
        delay = min(BACKOFF_MAX_S, BACKOFF_START_S * 2 ** self._failures)
        self._failures += 1
        self._replacements += 1
        self._loop.call_later(delay, self._replace)

    def _replace(self) -> None:
        self._replacements -= 1
        if not self._stopping:
            self._launch()

    # -- batches -----------------------------------------------------------------------------
    def dispatch(self, batch: Batch) -> None:
        """Send `batch` to the least loaded live instance, the fastest among equals."""
        instance = min((i for i in self._instances if i.free > 0),
                       key=lambda i: (len(i.inflight), i.item_s or 0.0))
        instance.inflight[batch.id] = batch
        self._spawn(self._compute(instance, batch))

    async def _compute(self, instance: Instance, batch: Batch) -> None:
        from ray.exceptions import RayError, RayTaskError

        parts = {name: [r.inputs[name] for r in batch.requests]
                 for name in batch.requests[0].inputs}
        channel = instance.channel
        try:
            reply = await self._send(instance, batch.id, parts)
        except ChannelClosedError as exc:  # a dead channel is a lost instance
            if batch.id in instance.inflight:
                self._lose(instance, f"channel: {exc}")
            return
        except RayTaskError as exc:  # raised by the actor's own code: this batch only
            if instance.inflight.pop(batch.id, None) is not None:
                self._events.on_done(batch, None, ServingError(
                    f"model {self.spec.ref!r} failed: {exc.cause}"), None)
            return
        except RayError as exc:
            if batch.id in instance.inflight:
                self._lose(instance, f"{type(exc).__name__}")
            return
        except Exception as exc:  # not sent (no room for it, say): this batch, not the instance
            if instance.inflight.pop(batch.id, None) is not None:
                self._events.on_done(batch, None, exc if isinstance(exc, ServingError) else
                                     ServingError(f"batch not sent: {exc}"), None)
            return
        try:
            if instance.inflight.pop(batch.id, None) is None:
                return  # the instance was lost meanwhile: its batches are answered already
            self._finished(instance, batch, reply)
        finally:
            if channel is not None:  # the outputs are consumed: its slots take the next
                channel.release(batch.id)

    async def _send(self, instance: Instance, batch_id: int,
                    parts: dict[str, list[Any]]) -> BatchReply:
        """Compute the batch on `instance`: on its channel, else as a Ray call."""
        if instance.channel is None:
            return await ray_call(instance.actor, batch_id, parts)
        return await instance.channel.run(batch_id, parts)

    def _finished(self, instance: Instance, batch: Batch, reply: BatchReply) -> None:
        now = time.monotonic()
        self._heartbeat.beat(instance.index)
        if not instance.inflight:
            instance.idle_since = now
        self._forget_retried(batch)
        if reply.error or reply.outputs is None:
            self._events.on_done(batch, None, ServingError(
                f"model {self.spec.ref!r} failed: {reply.error}"), None)
            return
        own_s = (reply.input_ns + reply.infer_ns + reply.output_ns) / 1e9
        # As the front end sees it, from when the instance could start this batch (see
        # WorkerPool): admission must count the hops too.
        service_s = max(own_s, now - max(batch.dispatched, instance.last_done))
        instance.last_done = now
        instance.record(batch.size, service_s)
        self._site.metrics.batches.labels(self.model, instance.node_id[:12],
                                          path_name(instance.channel)).inc()
        done = BatchDone(batch.id, input_ns=reply.input_ns, infer_ns=reply.infer_ns,
                         output_ns=reply.output_ns, rejected=reply.rejected)
        self._events.on_done(batch, unpack_batch(reply.outputs), None,
                             BatchResult(done, service_s, instance.index))

    # -- faults ------------------------------------------------------------------------------
    def _lose(self, instance: Instance, cause: str) -> None:
        """The instance is gone (or silent): retry or fail its batches, replace it."""
        if instance.state is State.DEAD:
            return
        was_ready = instance.state is State.READY
        instance.state = State.DEAD
        self._heartbeat.forget(instance.index)
        close_channel(instance)
        self._site.kill(instance.actor)
        if instance in self._instances:
            self._instances.remove(instance)
        batches = list(instance.inflight.values())
        instance.inflight.clear()
        now = time.monotonic()
        if was_ready and not self.live:
            self._empty_since = now
        for batch in batches:
            self._retry_or_fail(batch, instance, cause, now)
        self._site.metrics.lost.labels(self.model, cause).inc()
        log.warning("instance %s[%d] on node %s lost (%s): %d batch(es) in flight; replacing it",
                    self.spec.ref, instance.index, instance.node_id[:12], cause, len(batches))
        self._update_gauge()
        if self._stopping:
            return
        if was_ready:
            self._events.on_restart()
        self._replace_later()

    def _retry_or_fail(self, batch: Batch, instance: Instance, cause: str, now: float) -> None:
        estimate = self._estimate(batch.size)
        again = all(r.id not in self._retried and (r.deadline is None or r.deadline > now +
                                                   estimate) for r in batch.requests)
        if again:
            self._retried.update(dict.fromkeys(r.id for r in batch.requests))
            for oldest in list(self._retried)[:max(0, len(self._retried) - RETRIED_KEPT)]:
                del self._retried[oldest]
            self._site.metrics.retried.labels(self.model).inc()
            self._events.on_requeue(batch)
            return
        self._forget_retried(batch)
        self._events.on_done(batch, None, WorkerCrashedError(
            f"instance {instance.index} of model {self.spec.ref!r} on node "
            f"{instance.node_id[:12]} was lost ({cause}) while computing this request"), None)

    def _forget_retried(self, batch: Batch) -> None:
        for request in batch.requests:
            self._retried.pop(request.id, None)

    def _estimate(self, size: int) -> float:
        times = [i.item_s for i in self.live if i.item_s is not None]
        return min(times) * size if times else 0.0

    # -- heartbeat and scaling ---------------------------------------------------------------
    def _heard_threadsafe(self, index: int, cause: str) -> None:
        """The heartbeat's verdict on an instance, from its thread."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: the pool is gone
            self._loop.call_soon_threadsafe(self._heard, index, cause)

    def _heard(self, index: int, cause: str) -> None:
        instance = next((i for i in self.live if i.index == index), None)
        if instance is None:
            return
        if cause == "heartbeat":
            self._site.suspect(instance.node_id)
        self._lose(instance, cause)

    async def _watch(self) -> None:
        period = self._config.heartbeat_ms / 1e3
        while not self._stopping:
            await asyncio.sleep(period)
            try:
                self._tick(time.monotonic())
            except Exception:  # a bug here must not stop scaling for good
                log.exception("cluster watch of model %s failed a tick", self.model)

    def _tick(self, now: float) -> None:
        live = self.live
        self._policy.sample(now, bool(live) and all(i.free == 0 for i in live))
        self._scale(now)
        self._unshun()
        waited = self._config.start_timeout_s
        if self._empty_since is not None and now - self._empty_since >= waited:
            self._unavailable(f"none became ready within {waited:g} s (start_timeout_s) of "
                              "the loss of the last one", now)
        checked = self._nodes_checked
        if self._empty_since is not None and checked is not None and now - checked >= NODE_CHECK_S:
            self._nodes_checked = None
            self._spawn(self._check_nodes())

    async def _check_nodes(self) -> None:
        """With no instance live and no live node that could hold one (every node gone, or
        those left too small), what waits fails now, not after `start_timeout_s`."""
        try:
            nodes = await self._site.node_table()
            if self._empty_since is not None and not fitting_nodes(self._config, nodes):
                self._unavailable(f"no live node of the Ray cluster can hold one (each needs "
                                  f"{describe_demand(self._config)})", time.monotonic())
        except Exception as exc:  # the GCS unread: start_timeout_s decides
            log.debug("node table of model %s unread: %s", self.model, exc)
        finally:
            self._nodes_checked = time.monotonic()

    def _unshun(self) -> None:
        """An instance started while a node was suspected never goes there (Ray fixed its
        label selector): once that suspicion lapses, one still waiting for a node starts
        afresh, that node allowed (else, with no room elsewhere, it would wait for ever). One
        placed and loading is left to finish its load."""
        suspects = self._site.suspects
        for instance in [i for i in self._instances if i.state is State.STARTING
                         and not i.placed and i.avoided - suspects]:
            self._instances.remove(instance)
            self._retire(instance, None)
            log.info("instance %s[%d] waited for a node while one was avoided; started "
                     "again, that node allowed now", self.spec.ref, instance.index)
            self._launch()

    def _scale(self, now: float) -> None:
        live = self.live
        # A replacement on its way counts as starting: a lost instance is not a reason to
        # scale up beside it (that once made three instances of a model capped at two).
        starting = self._replacements + sum(
            1 for i in self._instances if i.state is State.STARTING)
        idle = [i for i in live if not i.inflight]
        longest = max((now - i.idle_since for i in idle), default=0.0)
        step = self._policy.decide(now, len(self._instances) + self._replacements, starting,
                                   longest)
        if step > 0:
            instance = self._launch()
            self._scaled("up", f"instance {instance.index} added")
        elif step < 0:
            oldest = max(idle, key=lambda i: now - i.idle_since)
            self._instances.remove(oldest)
            self._retire(oldest, None)
            self._scaled("down", f"instance {oldest.index} idle for {longest:.0f} s removed")

    def _scaled(self, direction: str, what: str) -> None:
        self._site.metrics.scale_events.labels(self.model, direction).inc()
        self._update_gauge()
        log.info("model %s scaled %s: %s (%d instances)", self.spec.ref, direction, what,
                 len(self._instances))

    def _update_gauge(self) -> None:
        gauge = self._site.metrics.instances
        for state in State:
            count = sum(1 for i in self._instances if i.state is state)
            gauge.labels(self.model, state.value).set(count)

