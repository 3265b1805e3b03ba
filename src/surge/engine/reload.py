"""Repository changes while serving: polling for new versions, and config overrides on load.

`RepositoryPoller` (`surge serve --model-control poll --poll-interval S`) looks at the
repository every interval. A model whose files changed (a new version directory, a new
`config.yaml`, a replaced model file) is loaded again (`InferenceEngine.files_changed`), which
starts and warms the new instances before switching to them and draining the old ones, so
requests keep being answered throughout (a model that loads on demand and is not loaded now
stays so: its next request loads the new files). A load that fails leaves the old version
serving; the engine reports why (repository index, log,
`surge_model_loads_total{outcome="failure"}`).
A change is acted on once the files have stayed the same for one whole interval, so that a
version directory still being copied is not loaded half written.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from pydantic import ValidationError

from surge.configfile import describe_validation_error
from surge.errors import ConfigError, SurgeError
from surge.repository import ModelConfig, Repository
from surge.repository.config import ORIGINAL
from surge.repository.repository import check_labels

if TYPE_CHECKING:
    from surge.engine.interface import InferenceEngine
    from surge.engine.served import ServedModel

log = logging.getLogger(__name__)

# The config fields an override may set: those the front end applies. The others (engine,
# factory, inputs, outputs, max_batch_size, ...) are read from config.yaml by each worker
# as it loads the model, so an override of them would not reach the model.
OVERRIDABLE_FIELDS = frozenset({
    "batching", "instances", "threads", "device", "spin_wait", "hang_multiple", "hang_min_ms",
    "queue", "version_policy", "variant", "slo_p99_ms", "labels", "parameters", "placement",
    "cluster", "ladder", "max_accuracy_drop", "ladder_accuracy",  # the front end's ladder
    "model_warmup",  # handed to each instance as it loads (workers/messages.py Warmup)
    "load_timeout_s",  # the front end waits for the instances (workers/exits.py)
    "response_cache",  # the front end's cache (engine/response_cache.py)
})


def override_config(base: ModelConfig, override: Mapping[str, Any]) -> ModelConfig:
    """`base` with the fields of `override` replaced (whole fields, validated as config.yaml is)."""
    for key in override:
        if key not in OVERRIDABLE_FIELDS:
            if key in ModelConfig.model_fields:
                raise ConfigError(f"config override: {key!r} is read from config.yaml by the "
                                  f"workers; overridable: {', '.join(sorted(OVERRIDABLE_FIELDS))}")
            raise ConfigError(f"config override: unknown key {key!r}")
    merged = {**base.model_dump(exclude_unset=True), **override}
    try:
        return ModelConfig.model_validate(merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        if not first["loc"]:  # a rule across fields names no key, nor one value
            raise ConfigError(f"config override: {first['msg']}") from None
        # as config.yaml's errors: the key and the value it was given
        raise ConfigError(f"config override: {describe_validation_error(exc)}") from None


Fingerprint = tuple[tuple[str, int, int], ...]


def fingerprint(root: Path | str, name: str) -> Fingerprint:
    """(path, mtime, size) of every file of a model: what decides what gets served."""
    top = os.path.join(root, name)
    entries = []
    for folder, dirs, files in os.walk(top):
        dirs.sort()
        for file in sorted(files):
            path = os.path.join(folder, file)
            try:
                stat = os.stat(path)
            except OSError:  # removed while walking: the next poll sees the result
                continue
            entries.append((os.path.relpath(path, top), stat.st_mtime_ns, stat.st_size))
    return tuple(entries)



class _Stoppable(Protocol):
    def stop(self, grace_s: float) -> Awaitable[None]: ...


Started = TypeVar("Started", bound=_Stoppable)


async def checked_labels(repository: Repository, name: str, override: Mapping[str, Any] | None,
                         started: dict[int, Started], models: Iterable[ServedModel]
                         ) -> dict[int, Started]:
    """`started` once an override's `labels` are checked against the models' outputs as
    config.yaml's are (the workers check those only); stopped when they are refused."""
    if not override or "labels" not in override:
        return started
    try:
        for model in models:
            assert model.handle is not None, "a started model has its handle"
            variant = None if model.variant_name == ORIGINAL else model.variant_name
            path = await asyncio.to_thread(repository.model_file, name, model.version, variant)
            check_labels(name, model.config, model.handle.signature, path,
                         "the load's config override")
    except BaseException:
        await asyncio.gather(*(m.stop(0.0) for m in started.values()), return_exceptions=True)
        raise
    return started

class RepositoryPoller:
    """Loads models whose files changed, and unloads those removed, every `interval_s`."""

    def __init__(self, engine: InferenceEngine, repository: Repository, interval_s: float,
                 models: tuple[str, ...] | None = None) -> None:
        if interval_s <= 0:
            raise ValueError(f"poll interval must be positive, got {interval_s}")
        self.engine = engine
        self.repository = repository
        self.interval_s = interval_s
        self._models = models
        self._acted: dict[str, Fingerprint] = {}  # what the served state was built from
        self._seen: dict[str, Fingerprint] = {}  # what the previous poll saw
        self._task: asyncio.Task[None] | None = None

    def snapshot(self) -> None:
        """Take the repository as the engine is about to load it (before `engine.start`)."""
        self._acted = {name: fingerprint(self.repository.root, name) for name in self._names()}
        self._seen = dict(self._acted)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="surge-repository-poll")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.poll_logged()

    async def poll_logged(self) -> None:
        """One poll; a failure is logged and the next poll tries again."""
        try:
            await self.poll()
        except SurgeError as exc:  # a repository gone for now (unmounted): one line, no trace
            log.warning("repository poll: %s; looking again in %g s", exc, self.interval_s)
        except Exception:  # a bug here must not stop polling for good
            log.exception("repository poll failed")

    def _names(self) -> list[str]:
        names = self.repository.model_names()
        return [n for n in names if n in self._models] if self._models is not None else names

    async def poll(self) -> list[str]:
        """One look at the repository; returns the models loaded or unloaded."""
        current = {name: fingerprint(self.repository.root, name) for name in self._names()}
        changed = []
        for name in sorted(set(current) | set(self._acted)):
            now = current.get(name)
            settled = now == self._seen.get(name)
            if now != self._acted.get(name) and settled:
                changed.append(name)
                await self._apply(name, now)
        self._seen = current
        return changed

    async def _apply(self, name: str, now: Fingerprint | None) -> None:
        if now is None:
            self._acted.pop(name, None)
            log.warning("model %s left the repository: unloading it", name)
            try:
                await self.engine.unload(name)
            except SurgeError as exc:
                log.error("model %s not unloaded: %s", name, exc)
            return
        self._acted[name] = now  # a broken version is tried again only once its files change
        log.warning("model %s changed in the repository", name)
        try:
            await self.engine.files_changed(name)
        except SurgeError as exc:
            log.error("model %s not reloaded, what was served stays: %s", name, exc)


__all__ = ["OVERRIDABLE_FIELDS", "RepositoryPoller", "fingerprint", "override_config"]
