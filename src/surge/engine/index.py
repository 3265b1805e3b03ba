"""The repository index: one row per model of the repository, one per served version when
loaded, beside what a load in progress or a failed one is about.

A load that fails on a version already served (a config override its instances refused, the
same version's files) leaves that version READY, as Triton leaves a model's availability as it
was when a load fails: its row keeps why the load failed. A load that fails on a version not
served (a new version directory) gets a row of its own, UNAVAILABLE with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

# A module reference: surge.pipeline.served imports this package back (ModelHandle, Counters).
import surge.pipeline.served as pipelines
from surge.errors import SurgeError
from surge.repository import Repository

if TYPE_CHECKING:
    from surge.engine.engine import Served

Row = dict[str, str]
State = tuple[str, str]  # (state, reason) of a model's load when not (only) served


def index_rows(repository: Repository, served: Mapping[str, Mapping[int, Served]],
               states: Mapping[str, State], failed: Mapping[str, int]) -> list[Row]:
    """The rows of every model in the repository; `failed`: the version a model's last load
    failed on, where one did."""
    rows: list[Row] = []
    for name in repository.model_names():
        versions = served.get(name)
        if versions:
            rows.extend(_served_rows(repository, name, versions, states.get(name),
                                     failed.get(name)))
            continue
        state, reason = states.get(name, ("UNAVAILABLE", "unloaded"))
        rows.append(_row(name, "", state, reason))
    return rows


def _served_rows(repository: Repository, name: str, versions: Mapping[int, Served],
                 load: State | None, failed: int | None) -> list[Row]:
    rows = []
    for number, model in sorted(versions.items()):
        ready = model.ready
        rows.append(_row(name, str(number), "READY" if ready else "UNAVAILABLE",
                         model.instances_note() if ready else unready_reason(model)))
    if load is None:
        return rows
    state, reason = load
    version = _load_version(repository, name, versions, state, failed)
    if state == "UNAVAILABLE" and (version == "" or int(version) in versions):
        for row in rows:  # the versions it was about serve on (every one, where it names none)
            if version in ("", row["version"]):
                note = f"its last load failed, it serves on: {reason}"
                row["reason"] = f"{row['reason']}; {note}" if row["reason"] else note
        return rows
    rows.append(_row(name, version, state, reason))
    return rows


def _load_version(repository: Repository, name: str, versions: Mapping[int, Served],
                  state: str, failed: int | None) -> str:
    """The version a failed load failed on, else the one a load is about."""
    if failed is not None and state == "UNAVAILABLE":
        return str(failed)
    return _pending_version(repository, name, versions)


def _pending_version(repository: Repository, name: str, versions: Mapping[int, Served]) -> str:
    """The newest version on disk that is not served (what a reload is about), or ''."""
    try:
        on_disk = repository.versions(name)
    except SurgeError:
        return ""
    fresh = [v for v in on_disk if v not in versions]
    return str(max(fresh)) if fresh else ""


def _row(name: str, version: str, state: str, reason: str) -> Row:
    return {"name": name, "version": version, "state": state, "reason": reason}


def unready_reason(served: Served) -> str:
    """Why a served version is not ready (a pipeline: the models of its steps that are not)."""
    if not served.accepting:
        return "draining"
    if isinstance(served, pipelines.ServedPipeline):
        return served.unready_reason() or "starting"
    return "no live worker"
