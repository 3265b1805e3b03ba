"""One home per platform fact: cores under affinity and cgroup quotas, the settings grid."""

from __future__ import annotations

from pathlib import Path

import pytest

from surge import platform
from surge.errors import ConfigError
from surge.platform import available_cores, cgroup_cpu_quota, fits, settings_grid
from surge.workers.pool import plan_instances


def fake_cgroup(tmp_path: Path, files: dict[str, str], membership: str) -> tuple[Path, Path]:
    """A cgroup mount under tmp_path with `files` (relative paths) and a /proc/self/cgroup."""
    root = tmp_path / "cgroup"
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    root.mkdir(exist_ok=True)
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(membership)
    return root, proc


def test_v2_quota_is_quota_over_period(tmp_path: Path) -> None:
    root, proc = fake_cgroup(tmp_path, {"cpu.max": "150000 100000\n"}, "0::/\n")
    assert cgroup_cpu_quota(root, proc) == pytest.approx(1.5)


def test_v2_max_means_no_quota(tmp_path: Path) -> None:
    root, proc = fake_cgroup(tmp_path, {"cpu.max": "max 100000\n"}, "0::/\n")
    assert cgroup_cpu_quota(root, proc) is None


def test_v2_tightest_limit_on_the_way_to_the_root_applies(tmp_path: Path) -> None:
    root, proc = fake_cgroup(tmp_path, {
        "kubepods/cpu.max": "200000 100000",
        "kubepods/pod1/cpu.max": "400000 100000",
        "kubepods/pod1/box/cpu.max": "max 100000",
    }, "0::/kubepods/pod1/box\n")
    assert cgroup_cpu_quota(root, proc) == pytest.approx(2.0)


def test_v1_quota_and_unlimited(tmp_path: Path) -> None:
    root, proc = fake_cgroup(tmp_path, {"cpu,cpuacct/cpu.cfs_quota_us": "250000",
                                        "cpu,cpuacct/cpu.cfs_period_us": "100000"},
                             "4:cpu,cpuacct:/\n0::/\n")
    assert cgroup_cpu_quota(root, proc) == pytest.approx(2.5)
    (root / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text("-1")
    assert cgroup_cpu_quota(root, proc) is None


def test_no_cgroup_files_means_no_quota(tmp_path: Path) -> None:
    assert cgroup_cpu_quota(tmp_path / "absent", tmp_path / "absent-proc") is None


@pytest.mark.parametrize(("affinity", "quota", "cores"), [
    (8, None, 8),   # no quota: the affinity mask decides
    (8, 2.0, 2),    # a quota below the mask caps it
    (8, 1.5, 2),    # quotas round up: 1.5 CPUs still run two threads
    (8, 0.2, 1),    # never below one core
    (2, 6.0, 2),    # a mask below the quota decides
])
def test_available_cores_is_the_mask_capped_by_the_quota(
        monkeypatch: pytest.MonkeyPatch, affinity: int, quota: float | None, cores: int) -> None:
    monkeypatch.setattr(platform.os, "sched_getaffinity", lambda _pid: set(range(affinity)))
    monkeypatch.setattr(platform, "cgroup_cpu_quota", lambda: quota)
    assert available_cores() == cores


def test_grid_is_every_layout_that_fits() -> None:
    assert settings_grid(1) == [(1, 1)]
    assert settings_grid(2) == [(1, 1), (1, 2), (2, 1)]
    grid = settings_grid(4)
    assert (2, 2) in grid
    assert (4, 1) in grid
    assert (3, 2) not in grid
    assert all(fits(i, t, 4) for i, t in grid)
    assert len(grid) == 8  # 4 + 2 + 1 + 1


def test_the_pool_planner_accepts_exactly_the_grid() -> None:
    """The tuner proposes layouts from the grid; the server must accept every one of them."""
    cores = 4
    grid = set(settings_grid(cores))
    for instances in range(1, cores + 2):
        for threads in range(1, cores + 2):
            if (instances, threads) in grid:
                assert len(plan_instances(instances, threads, "cpu", cores)) == instances
            else:
                with pytest.raises(ConfigError, match="does not fit"):
                    plan_instances(instances, threads, "cpu", cores)


def test_tuner_space_follows_available_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    from surge.tuning import SearchSpace, build_space

    monkeypatch.setattr("surge.tuning.space.available_cores", lambda: 2)
    assert SearchSpace().layouts() == [(1, 1), (1, 2), (2, 1)]
    assert {(c.instances, c.threads) for c in build_space(["v"], (1,), (0.0,))} == \
        {(1, 1), (1, 2), (2, 1)}
    assert SearchSpace(settings=((1, 2),)).layouts() == [(1, 2)]
