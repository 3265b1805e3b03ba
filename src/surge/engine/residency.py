"""Which models stay loaded under a memory budget: the pure bookkeeping behind eviction.

`Residency` knows, for every loaded model, the memory it was measured to use, its worker group
(None for dedicated workers), whether it is pinned and when it was last used. Asked to make
room for a model, it names the least recently used unpinned models to unload so that the
machine budget and the model's group budget both hold. It has no clock, no processes and no
event loop: the caller hands it the time and the measurements, so unit tests drive it with
made-up figures.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from surge.errors import SurgeError

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


_PLAIN_NUMBER = re.compile(r"[0-9]+(\.[0-9]+)?", re.ASCII)


def parse_bytes(text: str) -> int:
    """'1.5GB' -> 1500000000, '512MiB' -> 536870912, '2000000' -> 2000000 (positive only)."""
    value = text.strip().lower().replace(" ", "")
    digits = value.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = value[len(digits):]
    # ASCII digits and an optional fraction only: float() also reads '1_000', '1e400' (an
    # infinity int() cannot take) and non-ASCII digits
    number = float(digits) if _PLAIN_NUMBER.fullmatch(digits) else -1.0
    if unit not in _UNITS or not number > 0:
        raise SurgeError(f"memory size {text!r}: expected a positive number with a unit such "
                         "as 1.5GB, 800MB or 2GiB")
    return int(number * _UNITS[unit])


def format_bytes(size: int) -> str:
    """Bytes in MB with one decimal (the unit the budgets are usually given in)."""
    return f"{size / 1e6:.1f} MB"


@dataclass(frozen=True)
class MemoryBudget:
    """How much resident memory loaded models may use, on the machine and per worker group."""

    machine_bytes: int | None = None  # None: no machine-wide limit
    group_bytes: Mapping[str, int] = field(default_factory=dict)  # group name -> limit

    @property
    def limited(self) -> bool:
        return self.machine_bytes is not None or bool(self.group_bytes)


class NoRoomError(SurgeError):
    """Loading a model would exceed a budget that evicting unpinned idle models cannot meet."""


@dataclass
class _Resident:
    bytes: int
    group: str | None
    pinned: bool
    last_used: float


class Residency:
    """Loaded models with their measured memory, in least-recently-used order on demand."""

    def __init__(self, budget: MemoryBudget) -> None:
        self.budget = budget
        self._loaded: dict[str, _Resident] = {}
        # Kept after unload: (bytes, group) of each model's last load, for the next estimate.
        self._measured: dict[str, tuple[int, str | None]] = {}

    # -- what happened -------------------------------------------------------------------------
    def loaded(self, name: str, size: int, group: str | None, pinned: bool, now: float) -> None:
        """`name` is loaded and was measured at `size` bytes."""
        self._loaded[name] = _Resident(size, group, pinned, now)
        self._measured[name] = (size, group)

    def unloaded(self, name: str) -> None:
        self._loaded.pop(name, None)

    def touch(self, name: str, now: float) -> None:
        """`name` was used (a request reached it) at `now`."""
        resident = self._loaded.get(name)
        if resident is not None:
            resident.last_used = now

    # -- what is known -------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self._loaded)

    def used(self, group: str | None = None) -> int:
        """Bytes the loaded models use: all of them, or those of `group`."""
        return sum(r.bytes for r in self._loaded.values() if group is None or r.group == group)

    def size_of(self, name: str) -> int | None:
        resident = self._loaded.get(name)
        return None if resident is None else resident.bytes

    def measured(self, name: str) -> bool:
        """Whether `name` was loaded and measured before (its estimate is no guess)."""
        return name in self._measured

    def estimate(self, name: str, group: str | None) -> int:
        """Bytes `name` is expected to take once loaded: its last measurement; else, for a
        dedicated worker, the mean of the dedicated ones measured so far (their runtime
        dominates a small model's), for a model of a group, the least a model of that group
        added (the group's first model also paid for the runtime's imports); else 0."""
        known = self._measured.get(name)
        if known is not None:
            return known[0]
        sizes = [size for size, where in self._measured.values() if size > 0 and where == group]
        if not sizes:
            return 0
        return min(sizes) if group is not None else sum(sizes) // len(sizes)

    # -- decisions -----------------------------------------------------------------------------
    def steps_fit(self, name: str, steps: Collection[str]) -> None:
        """Raises NoRoomError when the step models of pipeline `name` were measured to need
        more than a whole budget together: loading one would evict another, in turn for every
        request. A step never measured counts nothing (as at a model's first load, its size
        would only be a guess)."""
        measured = {s: self._measured[s] for s in sorted(steps) if s in self._measured}
        for scope, limit in self._scopes({group for _, group in measured.values()}):
            inside = {s: size for s, (size, group) in measured.items()
                      if scope is None or group == scope}
            total = sum(inside.values())
            if total > limit:
                listed = ", ".join(f"{s} ({format_bytes(size)})" for s, size in inside.items())
                raise NoRoomError(
                    f"pipeline {name!r} needs about {format_bytes(total)} for its step models "
                    f"together, more than the whole memory budget of {_where(scope)} "
                    f"({format_bytes(limit)}): {listed}")

    def _scopes(self, groups: Collection[str | None]) -> list[tuple[str | None, int]]:
        """The budgets models of `groups` load under: their groups' (a group's budget only
        holds its models), then the machine's."""
        scopes: list[tuple[str | None, int]] = [
            (group, self.budget.group_bytes[group]) for group in sorted(
                g for g in groups if g is not None and g in self.budget.group_bytes)]
        if self.budget.machine_bytes is not None:
            scopes.append((None, self.budget.machine_bytes))
        return scopes

    def victims(self, name: str, needed: int, group: str | None,
                busy: Collection[str] = ()) -> list[str]:
        """The models to unload, least recently used first, so that `needed` more bytes for
        `name` (in `group`) fit every budget; pinned and `busy` models are never chosen.
        Raises NoRoomError when even unloading all the others would not make enough room."""
        chosen: list[str] = []
        for scope, limit in self._scopes((group,)):
            chosen += self._victims_in(scope, limit, name, needed, chosen, busy)
        return chosen

    def over_budget(self, name: str, busy: Collection[str] = ()) -> list[str]:
        """After `name` was loaded and measured: the other models to unload to get back within
        every budget (never `name` itself). Raises NoRoomError when that cannot be done: then
        nothing is unloaded in vain, and the caller says the budget is exceeded."""
        resident = self._loaded.get(name)
        if resident is None:
            return []
        return self.victims(name, resident.bytes, resident.group, busy)

    def _victims_in(self, scope: str | None, limit: int, name: str, needed: int,
                    going: Collection[str], busy: Collection[str]) -> list[str]:
        """Victims within one budget, besides those already `going` for another budget."""
        used = sum(r.bytes for n, r in self._loaded.items()
                   if n != name and n not in going and (scope is None or r.group == scope))
        excess = used + needed - limit
        if excess <= 0:
            return []
        chosen: list[str] = []
        for candidate in self._candidates(scope, name, [*going, *busy]):
            chosen.append(candidate)
            excess -= self._loaded[candidate].bytes
            if excess <= 0:
                return chosen
        where = _where(scope)
        if needed > limit:  # no eviction can help: say so, not that others hold the budget
            raise NoRoomError(
                f"model {name!r} needs about {format_bytes(needed)}, more than the whole memory "
                f"budget of {where} ({format_bytes(limit)})")
        pinned = sum(r.bytes for r in self._loaded.values()
                     if r.pinned and (scope is None or r.group == scope))
        # Name the holders: "busy" alone left the operator guessing (a loaded pipeline's steps).
        held = [f"{n} ({'pinned' if r.pinned else 'busy'}, {format_bytes(r.bytes)})"
                for n, r in self._loaded.items()
                if n != name and r.bytes > 0 and (r.pinned or n in busy)
                and (scope is None or r.group == scope)]
        raise NoRoomError(
            f"model {name!r} needs about {format_bytes(needed)} but the memory budget of "
            f"{where} ({format_bytes(limit)}) is held by pinned ({format_bytes(pinned)}) or "
            "busy models" + (f": {', '.join(held)}" if held else ""))

    def _candidates(self, scope: str | None, name: str, excluded: Collection[str]) -> list[str]:
        """Unpinned models other than `name`, least recently used first (ties by name)."""
        ranked = sorted((r.last_used, n) for n, r in self._loaded.items()
                        if n != name and n not in excluded and not r.pinned and r.bytes > 0
                        and (scope is None or r.group == scope))
        return [n for _, n in ranked]


def _where(scope: str | None) -> str:
    return "the machine" if scope is None else f"worker group {scope!r}"


__all__ = ["MemoryBudget", "NoRoomError", "Residency", "format_bytes", "parse_bytes"]
