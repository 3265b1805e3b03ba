"""Triton's response cache: identical requests answered from memory, without running the model.

A model opts in with `response_cache: true` in its config.yaml, and the server holds a cache
of `surge serve --response-cache-bytes SIZE` (0, the default: none; a model that opts in is
then served uncached, with a warning as it loads). `Engine.infer` hands every request of a
served version to `ResponseCache.infer`, after the version is found and before its scheduler,
so HTTP (JSON and binary), gRPC and shared-memory requests all go through it:

    key   = blake2b(model name, version, each input's name, dtype, shape and bytes (by name),
            the requested output names in their order)
    hit   -> copies of the cached outputs; `cache_hit` and `success` counted, nothing queued
    miss  -> the request as usual; a successful answer is stored as read-only copies, least
             recently used entries evicted until it fits; one larger than the cache is not
             stored; a failed request stores nothing

An input in memory the client may still write (a system shared-memory region) is copied once,
as the request is admitted, and only for a model that uses the cache: the key hashes that copy
and the model computes on it, so a client rewriting its region while the request waits cannot
make a stored answer disagree with its key (Triton's key hashes the input bytes too). The
copies in flight take at most the cache's size: past it such a request is served uncached.

Output shaping that follows the model (binary or JSON encoding, shared-memory output regions)
happens in the front ends on the answer, a hit's as a computed one's, so the key leaves it out
and a hit still fills the output regions a request names. Priority, timeout and
request id do not change an answer either. Entries are dropped when their model is reloaded,
unloaded or evicted. Laddered models and pipelines are refused the option (config.yaml): the
answer of a ladder depends on the rung the controller picks, and a pipeline's on step models
that reload on their own (a step model may itself enable the cache).

One cache per front-end process: with `--frontends N` each holds its own (of the full size).
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from surge.engine.metrics import SurgeMetrics
from surge.engine.route import check_pin, request_route
from surge.engine.stats import Counters
from surge.errors import SurgeError
from surge.repository import ModelConfig

log = logging.getLogger(__name__)

Key = tuple[str, int, bytes]  # (model, version, digest of the request)
Outputs = dict[str, np.ndarray]
# Runs a request on the inputs given: the ones the key was made of.
Compute = Callable[[dict[str, np.ndarray]], Awaitable[Outputs]]


class Cacheable(Protocol):
    """What the cache reads of a served model version (a `ServedModel`)."""

    name: str
    version: int
    config: ModelConfig
    counters: Counters
    variant_name: str


# What Python holds for one entry besides its arrays: the key tuple and digest, the entry, its
# outputs dict and the ordered dict's link (measured: about 480 bytes). Counted, so that a
# flood of distinct small requests stays within the size instead of 17 times over it.
_ENTRY_OVERHEAD = 512


@dataclass(frozen=True, slots=True)
class _Entry:
    outputs: Outputs  # read-only copies
    size: int


class ResponseCache:
    """The answers of one server's models, least recently used evicted past `capacity` bytes."""

    def __init__(self, metrics: SurgeMetrics, capacity: int = 0) -> None:
        self.metrics = metrics
        self.capacity = capacity
        self.used = 0
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()
        # Bumped by `forget`: an answer computed by instances a reload has since replaced
        # arrives after its model's entries were dropped, and must not be stored.
        self._generation: dict[str, int] = {}
        # Bytes of shared-memory inputs copied (`held`) for the requests in flight: bounded by
        # `capacity`, as the requests of one region could otherwise copy it queue size times.
        self.copied = 0

    def resize(self, capacity: int) -> None:
        """Set the size in bytes (0: no cache), evicting what no longer fits."""
        if capacity < 0:
            raise SurgeError(f"response cache size {capacity}: give 0 (none) or more bytes")
        self.capacity = capacity
        self._evict(0)

    def loaded(self, name: str, config: ModelConfig) -> None:
        """`name` was (re)loaded: its old answers go; say so when it asks for a cache the
        server does not have (Triton serves such a model uncached too)."""
        self.forget(name)
        if config.response_cache and not self.capacity:
            log.warning("model %s: config.yaml sets response_cache but the server has no "
                        "response cache (surge serve --response-cache-bytes SIZE): serving it "
                        "uncached", name)

    def forget(self, name: str) -> None:
        """Drop every answer of model `name` (unloaded, evicted or reloaded)."""
        self._generation[name] = self._generation.get(name, 0) + 1
        for key in [key for key in self._entries if key[0] == name]:
            self.used -= self._entries.pop(key).size
        self._gauge()

    def __len__(self) -> int:
        return len(self._entries)

    def serves(self, served: Cacheable) -> bool:
        """Whether `served`'s requests go through the cache (pipelines and ladders never do:
        their configs refuse response_cache), checked first to keep other requests' path as
        it was."""
        return bool(self.capacity and served.config.response_cache)

    async def infer(self, served: Cacheable, inputs: Mapping[str, np.ndarray],
                    outputs: list[str] | None, compute: Compute) -> Outputs:
        """The answer of one request: from the cache, else `compute(inputs)`'s (then stored),
        on copies of the inputs the client may still write (`held`)."""
        if not self.serves(served):
            return await compute(dict(inputs))
        lent = _lent_bytes(inputs)
        if lent and self.copied + lent > self.capacity:
            # Past the bound a request over a region is served uncached, read in place as a
            # model without the cache reads it: neither looked up nor stored.
            return await compute(dict(inputs))
        self.copied += lent
        try:
            return await self._through(served, inputs, outputs, compute)
        finally:
            self.copied -= lent

    async def _through(self, served: Cacheable, inputs: Mapping[str, np.ndarray],
                       outputs: list[str] | None, compute: Compute) -> Outputs:
        """A hit, else `compute`'s answer, stored; on `held` copies of `inputs`."""
        started = time.perf_counter_ns()
        kept = held(inputs)
        key = request_key(served.name, served.version, kept, outputs)
        if key is not None and (entry := self._entries.get(key)) is not None:
            return self._hit(served, key, entry, started)
        # A miss is counted when found, whatever the request's fate; its ns are the lookup's
        # and, once answered, the insertion's (Triton's cache_miss).
        served.counters.cache_miss.add(time.perf_counter_ns() - started)
        self.metrics.cache_misses.labels(served.name).inc()
        generation = self._generation.get(served.name, 0)
        answer = await compute(kept)
        if key is not None and generation == self._generation.get(served.name, 0):
            stored = time.perf_counter_ns()
            self._store(key, answer)
            served.counters.cache_miss.add(time.perf_counter_ns() - stored, count=0)
        return answer

    def _hit(self, served: Cacheable, key: Key, entry: _Entry, started: int) -> Outputs:
        """Copies of a cached answer, counted as Triton counts a hit (success and cache_hit;
        neither inference_count nor execution_count: the model did not run)."""
        # A pin the model cannot honour is refused as its uncached request would be.
        check_pin(route := request_route.get(), (served.variant_name,))
        if route is not None:
            route.served = served.variant_name
            route.version = served.version if route.version is None else route.version
        self._entries.move_to_end(key)
        answer = {name: array.copy() for name, array in entry.outputs.items()}
        took = time.perf_counter_ns() - started
        counters = served.counters
        counters.cache_hit.add(took)
        counters.success.add(took)
        counters.last_inference = time.time_ns() // 1_000_000
        self.metrics.cache_hits.labels(served.name).inc()
        return answer

    def _store(self, key: Key, answer: Outputs) -> None:
        size = _ENTRY_OVERHEAD + sum(sys.getsizeof(name) + _nbytes(array)
                                     for name, array in answer.items())
        if size > self.capacity or key in self._entries:
            return  # larger than the whole cache (Triton skips it), or stored meanwhile
        self._evict(size)
        self._entries[key] = _Entry({name: _frozen(array) for name, array in answer.items()},
                                    size)
        self.used += size
        self._gauge()

    def _evict(self, room: int) -> None:
        """Drop the least recently used entries until `room` more bytes fit."""
        while self._entries and self.used + room > self.capacity:
            self.used -= self._entries.popitem(last=False)[1].size
        self._gauge()

    def _gauge(self) -> None:
        self.metrics.cache_bytes.set(self.used)


def request_key(name: str, version: int, inputs: Mapping[str, np.ndarray],
                outputs: list[str] | None) -> Key | None:
    """The key of a request; None for one the cache cannot key (an object input holding
    something other than bytes or str, which no decoder makes)."""
    digest = hashlib.blake2b(digest_size=32)
    for input_name in sorted(inputs):
        array = inputs[input_name]
        for part in (input_name.encode(), array.dtype.str.encode(), repr(array.shape).encode()):
            _feed(digest, part)
        if array.dtype == object:
            if not _feed_objects(digest, array):
                return None
        else:
            digest.update(np.ascontiguousarray(array).view(np.uint8).reshape(-1).data)
    _feed(digest, repr(None if outputs is None else tuple(outputs)).encode())
    return (name, version, digest.digest())


def _feed(digest: hashlib.blake2b, part: bytes) -> None:
    """Length-prefixed, so that no two different sequences of parts hash the same stream."""
    digest.update(len(part).to_bytes(8, "little"))
    digest.update(part)


def _feed_objects(digest: hashlib.blake2b, array: np.ndarray) -> bool:
    """BYTES elements, each with a type tag and its length; False for any other object."""
    for item in array.reshape(-1):
        if isinstance(item, bytes):
            digest.update(b"b")
            _feed(digest, item)
        elif isinstance(item, str):
            digest.update(b"s")
            _feed(digest, item.encode("utf-8", "surrogatepass"))
        else:
            return False
    return True


def held(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`inputs`, each one that lies in memory the client may still write (`_lent`) replaced
    by a read-only copy taken now: the bytes the key hashes are then the bytes the model
    computes on, whatever the client writes into its region while the request waits. The
    others are kept as they are (no copy of a body's bytes)."""
    return {name: _frozen(array) if _lent(array) else array for name, array in inputs.items()}


def _lent_bytes(inputs: Mapping[str, np.ndarray]) -> int:
    """The bytes `held` would copy of `inputs`."""
    return sum(array.nbytes for array in inputs.values() if _lent(array))


def _lent(array: np.ndarray) -> bool:
    """Whether `array` views memory that its request does not hold and the client may write
    while the request waits in the queue (a shared-memory region): the model would read what
    is there at dispatch, which need not be what was keyed. An array that owns its bytes (JSON
    data, a decoded BYTES tensor) or views an immutable body (HTTP binary data, gRPC raw
    contents) is what was keyed."""
    base: object = array
    while isinstance(base, np.ndarray):
        if base.base is None:
            return False
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    return not isinstance(base, bytes)


def _nbytes(array: np.ndarray) -> int:
    """The memory a stored copy of `array` holds: the array object with its data and, for
    BYTES, each element object."""
    size = sys.getsizeof(array) + (0 if array.base is None else array.nbytes)
    if array.dtype != object:
        return int(size)
    return int(size) + sum(sys.getsizeof(item) for item in array.reshape(-1))


def _frozen(array: np.ndarray) -> np.ndarray:
    """A copy nobody else holds, made read-only: the caller's own array may be written later
    (an encoder, a region it lies in), and a hit hands out copies of this one."""
    copy = np.array(array, copy=True)
    copy.setflags(write=False)
    return copy


def check_cache_size(capacity: int, given: object) -> int:
    """`capacity` (`--response-cache-bytes`, typed as `given`), refused past the machine's
    memory: the cache grows as answers come, and a size it can never hold would let a flood
    of distinct requests take memory until the kernel kills the server and its accepted
    work (Triton allocates the whole size at start and fails there)."""
    from surge.tasks.data import memory_bytes

    memory = memory_bytes()
    if capacity > memory:
        raise SurgeError(f"--response-cache-bytes {given!r}: {capacity} bytes is more than "
                         f"this machine's memory ({memory} bytes): give a smaller size")
    return capacity


def size_cache(engine: object, capacity: int) -> None:
    """Give `engine`'s response cache `capacity` bytes (`surge serve --response-cache-bytes`);
    an engine without one (a test's stand-in) may only be asked for none."""
    cache = getattr(engine, "response_cache", None)
    if isinstance(cache, ResponseCache):
        cache.resize(capacity)
    elif capacity:
        raise SurgeError(f"--response-cache-bytes {capacity}: this engine has no response cache")
