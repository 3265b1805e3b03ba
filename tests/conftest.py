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
from typing import TextIO

import pytest

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
# on one worker, so a module's shared server starts once), a test runs either beside the other
# workers' tests or alone. Alone: the files that start several processes of their own at once
# (training ranks under torchrun, Ray clusters) and any test marked `alone` (its assertions
# hold a time mark that a second worker's load could make it miss). Two lock files make it so:
# a test beside others holds the main lock shared; one alone holds it exclusive. A worker that
# waits to run alone holds the gate, which every other test passes through before it takes the
# main lock, so the tests that run beside others cannot keep it waiting for ever.
_ALONE_FILES = ("tests/e2e/test_train_", "tests/unit/train/", "tests/integration/cluster/",
                "tests/unit/cluster/")
_held: list[TextIO] = []  # the open lock files while this worker holds the lock


def runs_alone(item: pytest.Item | None) -> bool:
    if item is None:
        return False
    return (item.path.relative_to(ROOT).as_posix().startswith(_ALONE_FILES)
            or item.get_closest_marker("alone") is not None)


def _lock_file(run: str, name: str) -> TextIO:
    return open(Path(tempfile.gettempdir()) / f"surge-tests-{run}.{name}", "w")  # noqa: SIM115


def _take(run: str, alone: bool) -> list[TextIO]:
    gate, main = _lock_file(run, "gate"), _lock_file(run, "lock")
    fcntl.flock(gate, fcntl.LOCK_EX)
    fcntl.flock(main, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
    if alone:
        return [main, gate]  # the gate stays shut until this test has run
    gate.close()
    return [main]


def _release() -> None:
    while _held:
        _held.pop().close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None
                            ) -> Iterator[None]:
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    alone = runs_alone(item)
    if run and not _held:  # still held only by an alone test before this alone one
        _held.extend(_take(run, alone))
    yield
    # A test beside others gives the lock back after each test, so that a worker waiting to run
    # alone gets in; one alone keeps it through its file (its module's fixtures are torn down
    # once the next test is not alone).
    if _held and not (alone and runs_alone(nextitem)):
        _release()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Two tests under one node id: pytest-xdist runs only one of them, silently."""
    counts = Counter(item.nodeid for item in items)
    twice = sorted(nodeid for nodeid, count in counts.items() if count > 1)
    if twice:
        raise pytest.UsageError(f"{len(twice)} node ids name more than one test: {twice[:3]}")
