"""Facts about the machine this process may use, defined once for serve, tune, profile and train.

A tuner and a server that counted cores differently would disagree inside a container: the
tuner would propose a layout the server then refuses. Everything here counts the cores this
process may actually run on: the CPU affinity mask, capped by the cgroup CPU quota.
"""

from __future__ import annotations

import math
import os
import platform as stdlib_platform
from pathlib import Path

# The variables through which OpenMP, MKL and OpenBLAS take their thread counts: set before an
# engine (or numpy) is imported in a process.
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
CPUINFO = Path("/proc/cpuinfo")


def available_cores() -> int:
    """Cores this process may use: the affinity mask capped by the cgroup quota (at least 1)."""
    cores = affinity_cores()
    quota = cgroup_cpu_quota()
    if quota is not None:
        # a quota of 1.5 CPUs still lets two threads make progress; round up, never below 1
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def affinity_cores() -> int:
    """CPUs in this process's affinity mask (all CPUs where there is no mask, e.g. macOS)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cgroup_cpu_quota(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """CPUs the cgroup quota allows (quota / period), or None when there is no quota.

    cgroup v2 keeps `cpu.max` ("max 100000" or "200000 100000") in the process's own cgroup
    directory and its ancestors; v1 keeps `cpu.cfs_quota_us` (-1: none) and `cpu.cfs_period_us`
    under the `cpu` controller. The tightest limit on the way to the root applies.
    """
    limits = [q for d in _cgroup_dirs(root, proc_cgroup, "") if (q := _v2_quota(d)) is not None]
    for mount in ("cpu", "cpu,cpuacct"):  # v1 mounts the controller under either name
        limits += [q for d in _cgroup_dirs(root / mount, proc_cgroup, "cpu")
                   if (q := _v1_quota(d)) is not None]
    return min(limits) if limits else None


def _cgroup_dirs(mount: Path, proc_cgroup: Path, controller: str) -> list[Path]:
    """The process's cgroup directory under `mount` and every ancestor up to `mount` itself."""
    own = _own_cgroup(proc_cgroup, controller)
    dirs = [mount]
    if own:
        path = mount
        for part in own.strip("/").split("/"):
            path = path / part
            dirs.append(path)
    return [d for d in dirs if d.is_dir()]


def _own_cgroup(proc_cgroup: Path, controller: str) -> str:
    """The cgroup path of `controller` ("" = the v2 unified hierarchy) in /proc/self/cgroup."""
    text = _read(proc_cgroup) or ""
    for line in text.splitlines():
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if (controller == "" and controllers == "") or controller in controllers.split(","):
            return path
    return ""


def _v2_quota(directory: Path) -> float | None:
    fields = (_read(directory / "cpu.max") or "").split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    return _ratio(fields[0], fields[1])


def _v1_quota(directory: Path) -> float | None:
    quota = _read(directory / "cpu.cfs_quota_us")
    period = _read(directory / "cpu.cfs_period_us")
    if quota is None or period is None:
        return None
    return _ratio(quota, period)


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def fits(instances: int, threads: int, cores: int) -> bool:
    """Whether `instances` workers of `threads` threads each fit `cores` without sharing."""
    return instances * threads <= cores


def settings_grid(cores: int) -> list[tuple[int, int]]:
    """Every (instances, threads) layout that fits `cores`: what the tuner searches and
    profiles, by the same rule the worker pool's planner enforces."""
    return [(i, t) for i in range(1, cores + 1) for t in range(1, cores + 1) if fits(i, t, cores)]


def set_thread_env(threads: int) -> None:
    """Tell the OpenMP, MKL and OpenBLAS this process will load to use `threads` threads."""
    for name in THREAD_ENV:
        os.environ[name] = str(threads)


def lacks_vnni() -> bool:
    """Whether this is an x86 CPU without VNNI. There ONNX Runtime multiplies uint8 activations
    by int8 weights with VPMADDUBSW, whose 16-bit sums of two products saturate: a tiny CNN's
    outputs came out 3.5 off on a scale of 19 (0.33 with uint8 weights, 0.76 with 7-bit int8
    ones). VNNI and AMX sum into 32 bits; other architectures have no such instruction."""
    if stdlib_platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        text = CPUINFO.read_text()
    except OSError:  # not Linux: no way to tell, so int8 weights
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    return not {"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags)
