"""The shared worker groups of one engine, by name (`worker: shared` in a model's config).

A model whose config names a group gets a `GroupMember`, a view onto the group's processes,
as its instance pool. A group's processes start with its first model and stop with its last;
a model loaded after that starts a fresh group. See docs/many-models.md.
"""

from __future__ import annotations

from collections.abc import Callable

from surge.engine.instances import PoolEvents, PoolSpec
from surge.errors import ConfigError
from surge.platform import available_cores
from surge.workers.group import GroupMember, Member, WorkerGroup
from surge.workers.hang import HangRule
from surge.workers.placement import Placement, cuda_device_count, plan_instances


class SharedGroups:
    """Groups by name, each created when a model first asks for it."""

    def __init__(self, root: str, cores: Callable[[], int] = available_cores,
                 transport: str | None = None) -> None:
        self.root = root
        self.groups: dict[str, WorkerGroup] = {}
        self._cores = cores
        self._transport = transport

    def member(self, spec: PoolSpec, events: PoolEvents) -> GroupMember:
        """A view onto the group `spec`'s config names, for the served model `events`."""
        config = spec.config
        assert config.worker is not None, "a model with a dedicated worker has no group"
        cores = self._cores()
        name, processes = config.worker.group, config.worker.processes
        group = self._group(spec.ref, name, processes, cores)
        placements = _plan(spec.ref, processes, config.threads, config.device, cores)
        hang = HangRule(config.hang_multiple, config.hang_min_ms / 1e3)
        return GroupMember(group, Member(spec.ref, spec.version, placements, events, hang,
                                         config.spin_wait, tuple(config.model_warmup),
                                         config.load_timeout_s),
                           rejoin=lambda: self._group(spec.ref, name, processes, cores))

    def _group(self, ref: str, name: str, processes: int, cores: int) -> WorkerGroup:
        group = self.groups.get(name)
        if group is not None and not group.closing:
            if group.processes != processes:
                raise ConfigError(
                    f"model {ref!r}: worker group {name!r} runs {group.processes} processes, "
                    f"not the worker.processes {processes} its config asks for; give every "
                    "model of a group the same worker.processes")
            return group
        group = WorkerGroup(self.root, name, _plan(ref, processes, 0, "cpu", cores),
                            transport=self._transport, on_empty=self._forget)
        self.groups[name] = group
        return group

    def _forget(self, group: WorkerGroup) -> None:
        if self.groups.get(group.name) is group:
            del self.groups[group.name]

    def pids(self) -> list[int]:
        """The live processes of every group."""
        return [pid for group in self.groups.values() for pid in group.pids()]


def _plan(ref: str, processes: int, threads: int, device: str, cores: int) -> list[Placement]:
    """Threads and device of a group's processes (or of one model in them)."""
    try:
        return plan_instances(processes, threads, device, cores, cuda_device_count(device))
    except ConfigError as exc:
        raise ConfigError(f"model {ref!r}: worker.processes {processes}: {exc}") from None
