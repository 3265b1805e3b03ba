"""Shared worker groups without processes: which group a model joins, its threads, and the
order in which models waiting for a free place are woken."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from surge.engine.groups import SharedGroups
from surge.engine.instances import PoolSpec
from surge.errors import ConfigError
from surge.repository.config import parse_config
from surge.workers.group import GroupMember, Member, WorkerGroup
from surge.workers.placement import Placement
from surge.workers.pool import State, Worker


class Events:
    """A served model as the group sees it: records wake-ups."""

    def __init__(self, name: str, woken: list[str]) -> None:
        self.name, self.woken = name, woken

    def wake(self) -> None:
        self.woken.append(self.name)

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"unexpected call {name}")


def spec(ref: str, **config: Any) -> PoolSpec:
    return PoolSpec(ref, 1, parse_config(config, f"{ref}/config.yaml"))


def groups(cores: int = 4) -> SharedGroups:
    return SharedGroups("/nonexistent", cores=lambda: cores)


def member(view: GroupMember) -> Member:
    return view.member


def test_models_naming_one_group_share_it() -> None:
    shared = groups()
    a = shared.member(spec("a", worker="shared"), Events("a", []))  # type: ignore[arg-type]
    b = shared.member(spec("b", worker={"group": "default"}), Events("b", []))  # type: ignore[arg-type]
    c = shared.member(spec("c", worker={"group": "other"}), Events("c", []))  # type: ignore[arg-type]
    assert a.group is b.group is shared.groups["default"]
    assert c.group is shared.groups["other"] is not a.group
    assert member(a).id != member(b).id


def test_each_load_of_a_model_is_its_own_member() -> None:
    """A reload runs its new copy beside the old one until the old one drains."""
    shared = groups()
    first = shared.member(spec("a", worker="shared"), Events("a", []))  # type: ignore[arg-type]
    second = shared.member(spec("a", worker="shared"), Events("a", []))  # type: ignore[arg-type]
    assert member(first).id != member(second).id


def test_a_group_runs_one_process_count() -> None:
    shared = groups()
    shared.member(spec("a", worker={"processes": 2}), Events("a", []))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"model 'b': worker group 'default' runs 2 processes, "
                                          r"not the worker.processes 1"):
        shared.member(spec("b", worker="shared"), Events("b", []))  # type: ignore[arg-type]


def test_a_closing_group_is_replaced_by_a_fresh_one() -> None:
    shared = groups()
    old = shared.member(spec("a", worker="shared"), Events("a", [])).group  # type: ignore[arg-type]
    old.closing = True
    new = shared.member(spec("b", worker={"processes": 2}), Events("b", [])).group  # type: ignore[arg-type]
    assert new is not old
    assert new.processes == 2


def test_threads_split_the_cores_between_the_processes() -> None:
    shared = groups(cores=4)
    view = shared.member(spec("a", worker={"processes": 2}), Events("a", []))  # type: ignore[arg-type]
    assert view.group.placements == [Placement("cpu", 2)] * 2
    assert member(view).load_message(1).threads == 2
    own = shared.member(spec("b", worker={"processes": 2}, threads=1), Events("b", []))  # type: ignore[arg-type]
    assert member(own).load_message(0).threads == 1
    with pytest.raises(ConfigError, match=r"model 'c': worker.processes 5: .*does not fit 4 cores"):
        shared.member(spec("c", worker={"group": "big", "processes": 5}), Events("c", []))  # type: ignore[arg-type]


def fake_worker(index: int, free: int) -> Worker:
    worker = Worker(index, Placement("cpu", 1), None, None, 0.0, State.READY)  # type: ignore[arg-type]
    worker.batches.extend([None] * (2 - free))  # type: ignore[list-item]
    return worker


def test_waiting_models_are_woken_oldest_first_one_per_free_place() -> None:
    async def body() -> list[str]:
        woken: list[str] = []
        group = WorkerGroup("/nonexistent", "g", [Placement("cpu", 1)])
        group._loop = asyncio.get_running_loop()
        members = [Member(n, 1, [Placement("cpu", 1)], Events(n, woken))  # type: ignore[arg-type]
                   for n in ("a", "b", "c")]
        group._workers = [fake_worker(0, free=0)]
        group._hosted = {0: {m.id: "cpu" for m in members}}
        for m in members:
            group.members[m.id] = m
        for m in (members[1], members[0], members[2]):  # b, a, c found no free place
            assert group.free_for(m) == 0
        group._workers[0].batches.pop()  # one place frees
        group._wake_waiting()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return woken

    # b asked first. It sends nothing (a fake), so its place goes on to a in the next round,
    # and to c after that: nothing is stranded while no batch computes.
    assert asyncio.run(body()) == ["b", "a", "c"]


def test_a_member_with_a_free_place_is_not_queued_for_a_wake_up() -> None:
    group = WorkerGroup("/nonexistent", "g", [Placement("cpu", 1)])
    m = Member("a", 1, [Placement("cpu", 1)], Events("a", []))  # type: ignore[arg-type]
    group.members[m.id] = m
    group._workers = [fake_worker(0, free=1)]
    group._hosted = {0: {m.id: "cpu"}}
    assert group.free_for(m) == 1
    assert not group._waiting
    group._hosted = {0: {}}  # loaded nowhere yet: no place for it, whatever is free
    assert group.free_for(m) == 0
    assert list(group._waiting) == [m.id]



def test_a_view_whose_group_stopped_meanwhile_starts_in_a_fresh_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The group's last model left between this model's view being made and its start."""
    shared = groups()
    view = shared.member(spec("a", worker="shared"), Events("a", []))  # type: ignore[arg-type]
    stopped = view.group
    stopped.closing = True
    joined: list[WorkerGroup] = []

    async def load_model(group: WorkerGroup, member: Member) -> None:
        joined.append(group)

    monkeypatch.setattr(WorkerGroup, "load_model", load_model)
    asyncio.run(view.start())
    assert joined == [shared.groups["default"]]
    assert joined[0] is not stopped
