"""The memory budget's bookkeeping: least recently used unpinned models go first, within the
machine budget and the model's worker-group budget; sizes are made up, time is handed in."""

from __future__ import annotations

import pytest

from surge.engine.residency import MemoryBudget, NoRoomError, Residency, parse_bytes
from surge.errors import SurgeError
from tests.cli_runner import run_cli

MB = 10**6


def residency(machine: int | None = None, **groups: int) -> Residency:
    return Residency(MemoryBudget(machine, groups))


def test_the_least_recently_used_models_are_chosen_first() -> None:
    state = residency(300 * MB)
    for name, loaded_at in (("a", 1.0), ("b", 2.0), ("c", 3.0)):
        state.loaded(name, 100 * MB, None, False, loaded_at)
    state.touch("a", 10.0)  # a is now the most recently used
    assert state.victims("d", 100 * MB, None) == ["b"]
    assert state.victims("d", 200 * MB, None) == ["b", "c"]
    assert state.victims("d", 300 * MB, None) == ["b", "c", "a"]
    assert state.victims("d", 0, None) == []  # fits as it is


def test_pinned_and_busy_models_are_never_chosen() -> None:
    state = residency(300 * MB)
    state.loaded("old", 100 * MB, None, True, 0.0)  # pinned, and the least recently used
    state.loaded("busy", 100 * MB, None, False, 1.0)
    state.loaded("idle", 100 * MB, None, False, 2.0)
    assert state.victims("new", 100 * MB, None, busy={"busy"}) == ["idle"]
    with pytest.raises(NoRoomError, match=r"model 'new' needs about 200.0 MB .* pinned "
                                          r"\(100.0 MB\)"):
        state.victims("new", 200 * MB, None, busy={"busy"})


def test_a_group_budget_evicts_within_the_group_only() -> None:
    state = residency(None, small=50 * MB)
    state.loaded("dedicated", 100 * MB, None, False, 0.0)  # oldest, but not in the group
    state.loaded("s1", 20 * MB, "small", False, 1.0)
    state.loaded("s2", 20 * MB, "small", False, 2.0)
    assert state.victims("s3", 20 * MB, "small") == ["s1"]
    assert state.victims("other", 500 * MB, None) == []  # no machine budget
    assert state.used("small") == 40 * MB
    assert state.used() == 140 * MB


def test_group_and_machine_budgets_both_hold() -> None:
    state = residency(200 * MB, small=50 * MB)
    state.loaded("dedicated", 150 * MB, None, False, 0.0)
    state.loaded("s1", 30 * MB, "small", False, 1.0)
    # The group needs s1 gone; the machine (180 + 30 > 200) then has room without more.
    assert state.victims("s2", 30 * MB, "small") == ["s1"]
    # 60 MB more: the group evicts s1 and the machine still needs the dedicated model gone.
    with pytest.raises(NoRoomError, match="worker group 'small'"):
        state.victims("s2", 60 * MB, "small")
    assert state.victims("s2", 40 * MB, "small") == ["s1"]
    state.loaded("s0", 5 * MB, "small", False, 5.0)
    assert state.victims("big", 60 * MB, None) == ["dedicated"]


def test_a_reload_does_not_count_its_own_current_size() -> None:
    state = residency(200 * MB)
    state.loaded("a", 100 * MB, None, False, 0.0)
    state.loaded("b", 100 * MB, None, False, 1.0)
    assert state.victims("a", 100 * MB, None) == []


def test_a_model_larger_than_the_whole_budget_is_refused_as_such() -> None:
    """Not "held by pinned (0.0 MB) or busy models": no eviction could make room."""
    state = residency(150 * MB)
    state.loaded("a", 100 * MB, None, False, 0.0)
    with pytest.raises(NoRoomError, match=r"model 'ladder' needs about 200.0 MB, more than the "
                                          r"whole memory budget of the machine \(150.0 MB\)"):
        state.victims("ladder", 200 * MB, None)


def test_a_pipelines_steps_must_fit_each_budget_together_by_their_measurements() -> None:
    state = residency(500 * MB, small=150 * MB)
    state.loaded("a", 100 * MB, "small", False, 0.0)
    state.loaded("b", 80 * MB, "small", False, 1.0)
    state.unloaded("b")  # measured once: its size is known while unloaded
    state.loaded("c", 300 * MB, None, False, 2.0)
    state.steps_fit("p", ["a", "c", "never-loaded"])  # 400 MB of 500; a guess counts nothing
    with pytest.raises(NoRoomError, match=r"pipeline 'p' needs about 180.0 MB for its step "
                                          r"models together, more than the whole memory budget "
                                          r"of worker group 'small' \(150.0 MB\): a \(100.0 MB\), "
                                          r"b \(80.0 MB\)$"):
        state.steps_fit("p", ["b", "a"])
    state.loaded("d", 250 * MB, None, False, 3.0)
    with pytest.raises(NoRoomError, match=r"of the machine \(500.0 MB\): c \(300.0 MB\), "
                                          r"d \(250.0 MB\)$"):
        state.steps_fit("p", ["d", "c"])


def test_a_budget_held_by_models_that_cannot_go_names_them() -> None:
    state = residency(250 * MB)
    state.loaded("kept", 100 * MB, None, True, 0.0)
    state.loaded("step", 100 * MB, None, False, 1.0)  # a loaded pipeline's model, say
    with pytest.raises(NoRoomError, match=r"held by pinned \(100.0 MB\) or busy models: "
                                          r"kept \(pinned, 100.0 MB\), step \(busy, 100.0 MB\)$"):
        state.victims("a", 100 * MB, None, busy={"step"})


def test_over_budget_after_a_measurement_names_the_others_to_unload() -> None:
    state = residency(250 * MB)
    state.loaded("a", 100 * MB, None, False, 0.0)
    state.loaded("b", 100 * MB, None, False, 1.0)
    state.loaded("c", 120 * MB, None, False, 2.0)  # measured larger than estimated
    assert state.over_budget("c") == ["a"]
    state.loaded("huge", 400 * MB, None, False, 3.0)
    with pytest.raises(NoRoomError):
        state.over_budget("huge")


def test_estimates_come_from_measurements() -> None:
    state = residency(1000 * MB)
    assert state.estimate("a", None) == 0  # nothing measured: the first load is measured
    state.loaded("a", 90 * MB, None, False, 0.0)
    state.loaded("b", 110 * MB, None, False, 0.0)
    state.loaded("s", 4 * MB, "small", False, 0.0)
    state.loaded("s2", 2 * MB, "small", False, 0.0)
    assert state.estimate("c", None) == 100 * MB  # the dedicated ones' mean
    assert state.estimate("t", "small") == 2 * MB  # the least a model of the group added
    assert state.measured("a")
    assert not state.measured("c")
    state.unloaded("a")
    assert state.estimate("a", None) == 90 * MB  # its own, kept after unload
    assert sorted(state.names) == ["b", "s", "s2"]


def test_memory_sizes_parse_with_units_and_bad_ones_are_named() -> None:
    assert parse_bytes("1.5GB") == 1_500_000_000
    assert parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes("800 mb") == 800 * MB
    assert parse_bytes("2000000") == 2_000_000
    # float() also reads these: 1e400 is an infinity int() cannot take (a traceback)
    for bad in ("abc", "-1GB", "0", "12XB", "", "1e400", "1_000MB", "\u0663GB", "infGB"):
        with pytest.raises(SurgeError, match="memory size"):
            parse_bytes(bad)


@pytest.mark.parametrize(("args", "message"), [
    (["--memory-budget", "lots"], "memory size 'lots'"),
    (["--load", "lazy"], "--load 'lazy': use eager or on-demand"),
    (["--group-memory-budget", "shared"], "expected GROUP=SIZE"),
    (["--group-memory-budget", "shared=-5MB"], "memory size '-5MB'"),
])
def test_serve_refuses_bad_budgets_in_one_line(args: list[str], message: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["serve", "no-such-repo", *args], capsys)
    assert code == 2
    assert message in out + err
    assert len((out + err).strip().splitlines()) == 1


def test_serve_options_reach_the_engine_options() -> None:
    from surge.commands.serve import _residency

    options = _residency("on-demand", "1.5GB", ["shared=800MB", "big=2GiB"])
    assert options.load == "on-demand"
    assert options.budget == MemoryBudget(1_500_000_000, {"shared": 800 * MB, "big": 2 * 2**30})
    assert _residency("eager", None, None).budget.limited is False
