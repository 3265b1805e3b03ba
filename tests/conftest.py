"""Shared fixtures: the example repository and tiny deterministic models."""

from __future__ import annotations

import fcntl
import logging
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import pytest
from xdist.scheduler import LoadFileScheduling

from surge.platform import THREAD_ENV  # stdlib only: nothing that reads the variables yet

os.environ.setdefault("KERAS_BACKEND", "torch")
# One OpenMP/BLAS thread in this process and in the processes it starts (servers' workers and
# training ranks set their own). On a 2-core machine, where another test's processes keep a core
# busy, two torch threads spin-wait for a descheduled sibling: a small convolution's forward and
# backward took 66 ms with two threads against 14 ms with one while one other process ran.
for _threads in THREAD_ENV:
    os.environ.setdefault(_threads, "1")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_REPOSITORY = ROOT / "examples" / "repository"


@pytest.fixture(scope="session")
def example_repo() -> Path:
    return EXAMPLE_REPOSITORY


# Written once per session by TensorFlow and Caffe's schema (each in its own venv), and shared
# by the unit format tests and the served-formats integration test; tests copy them, never
# change them.
@pytest.fixture(scope="session")
def tf_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.unit.formats.builders import build_tf_models

    return build_tf_models(tmp_path_factory.mktemp("tf-models"))


@pytest.fixture(scope="session")
def caffe_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.unit.formats.builders import build_caffe_model

    return build_caffe_model(tmp_path_factory.mktemp("caffe-model"))


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    """A test that starts a server in process configures the root logger; the next test must
    not inherit its level and handlers."""
    root, surge = logging.getLogger(), logging.getLogger("surge")
    handlers, level, surge_level = root.handlers[:], root.level, surge.level
    settings = sys.modules.get("surge.server.log_settings")
    if settings is not None:  # left by an earlier test: this test's handlers start clean
        settings.drop_severity_filters()
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    surge.setLevel(surge_level)  # the logging extension's verbose level sets it
    settings = sys.modules.get("surge.server.log_settings")
    if settings is not None:  # its severity filter went onto handlers that outlive the test
        settings.drop_severity_filters()



# Under pytest-xdist (`./scripts/test.sh` runs `-n 2 --dist loadfile`: each test file stays
# on one worker, so a module's shared server starts once), each test is one of four kinds:
# - heavy: the files that start several processes of their own at once (training ranks under
#   torchrun, Ray clusters): beside light tests only;
# - alone: a test marked `alone` (its assertions hold a time mark that a second worker's load
#   could make it miss): beside nothing;
# - light: the unit tests (tests/unit, but for its heavy files): beside anything but alone;
# - the others (servers, end-to-end runs): beside each other and light tests.
# Two lock files make it so: `lock`, held shared by the others and exclusive by heavy and alone
# tests, and `quiet`, held shared by light tests and exclusive by alone ones. A worker waiting
# for an exclusive lock holds the gate, which every test passes through before it takes its
# lock, so that shared holders cannot keep it waiting for ever.
_HEAVY_FILES = ("tests/e2e/test_train_", "tests/integration/cluster/",
                *(f"tests/unit/train/test_{name}.py" for name in (
                    "shard_tables", "train_launch", "train_parallel", "train_supervision")))
_LIGHT_FILES = ("tests/unit/",)
_held: list[TextIO] = []  # the open lock files while this worker holds its locks


def file_kind(path: str) -> str:
    """heavy, light or shared, by the test file's path from the repository root."""
    if path.startswith(_HEAVY_FILES):
        return "heavy"
    return "light" if path.startswith(_LIGHT_FILES) else "shared"


def kind_of(item: pytest.Item | None) -> str | None:
    if item is None:
        return None
    if item.get_closest_marker("alone") is not None:
        return "alone"
    return file_kind(item.path.relative_to(ROOT).as_posix())


_LOCKS = {"alone": (("lock", fcntl.LOCK_EX), ("quiet", fcntl.LOCK_EX)),
          "heavy": (("lock", fcntl.LOCK_EX),),
          "light": (("quiet", fcntl.LOCK_SH),),
          "shared": (("lock", fcntl.LOCK_SH),)}


def exclusive(kind: str) -> bool:
    """Whether a kind holds a lock exclusive (heavy, alone)."""
    return any(mode == fcntl.LOCK_EX for _, mode in _LOCKS[kind])


def beside(kind: str, other: str) -> bool:
    """Whether two kinds can hold their locks at once: no lock both take with one exclusive."""
    return not any(name == other_name and fcntl.LOCK_EX in (mode, other_mode)
                   for name, mode in _LOCKS[kind] for other_name, other_mode in _LOCKS[other])


def _lock_file(run: str, name: str) -> TextIO:
    return open(Path(tempfile.gettempdir()) / f"surge-tests-{run}.{name}", "w")  # noqa: SIM115


def _take(run: str, kind: str) -> list[TextIO]:
    gate = _lock_file(run, "gate")
    waits_for_all = exclusive(kind)
    fcntl.flock(gate, fcntl.LOCK_EX if waits_for_all else fcntl.LOCK_SH)
    if not waits_for_all:  # past the gate: no exclusive one waits
        gate.close()
    held = []
    for name, mode in _LOCKS[kind]:
        held.append(_lock_file(run, name))
        fcntl.flock(held[-1], mode)
    if waits_for_all:
        gate.close()
    return held


def _release() -> None:
    while _held:
        _held.pop().close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None
                            ) -> Iterator[None]:
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    kind = kind_of(item)
    assert kind is not None
    if run and not _held:  # still held only by a heavy or alone test of the same kind
        _held.extend(_take(run, kind))
    yield
    # A test beside others gives its lock back after each test, so that a worker waiting for
    # an exclusive one gets in; a heavy or alone test keeps it while the next is of its kind
    # (its module's fixtures are torn down once the next test is not).
    if _held and not (exclusive(kind) and kind_of(nextitem) == kind):
        _release()


# The `alone` mark is not known to the scheduler: such files are taken as shared ones and wait
# for their lock.
_FIRST = ("heavy", "shared", "light")  # light files are kept for while heavy ones run


class _PairingScheduling(LoadFileScheduling):
    """`--dist loadfile`, but a worker is handed the first file that can run beside the files
    the other workers hold, heavy ones first, rather than the next in line, which would wait
    for their lock: while one worker runs the training and cluster files, the other runs the
    unit tests. The order within a kind stays xdist's (files with more tests first)."""

    def _assign_work_unit(self, node: Any) -> None:
        held = {file_kind(scope) for other, work in self.assigned_work.items() if other is not node
                for scope, tests in work.items() if not all(tests.values())}
        for kind in _FIRST:
            scope = next((scope for scope in self.workqueue if file_kind(scope) == kind), None)
            if scope is not None and all(beside(kind, other) for other in held):
                self.workqueue.move_to_end(scope, last=False)
                break
        super()._assign_work_unit(node)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    return _PairingScheduling(config, log) if config.getoption("dist") == "loadfile" else None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Two tests under one node id: pytest-xdist runs only one of them, silently."""
    counts = Counter(item.nodeid for item in items)
    twice = sorted(nodeid for nodeid, count in counts.items() if count > 1)
    if twice:
        raise pytest.UsageError(f"{len(twice)} node ids name more than one test: {twice[:3]}")
