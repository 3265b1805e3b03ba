"""Shared fixtures: the example repository and tiny deterministic models."""

from __future__ import annotations

import fcntl
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")

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



# With pytest-xdist (`./scripts/test.sh -n 2 --dist loadfile`: each test file stays on one
# worker, so a module's shared server starts once), the files that start several processes
# of their own at once (training ranks under torchrun, Ray clusters) take one lock from their
# first test to their last, so that two of them never run side by side; one lock for all of
# them, so the workers never wait on each other.
_HEAVY = ("tests/e2e/test_train_", "tests/unit/train/", "tests/integration/cluster/",
          "tests/unit/cluster/")
_heavy_lock: list[TextIO] = []  # the open lock file while this worker holds it


def is_heavy(item: pytest.Item | None) -> bool:
    return item is not None and item.path.relative_to(ROOT).as_posix().startswith(_HEAVY)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None
                            ) -> Iterator[None]:
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if run and is_heavy(item) and not _heavy_lock:
        handle = open(Path(tempfile.gettempdir()) / f"surge-tests-{run}.lock", "w")  # noqa: SIM115
        fcntl.flock(handle, fcntl.LOCK_EX)
        _heavy_lock.append(handle)
    yield
    if _heavy_lock and not is_heavy(nextitem):  # its module's fixtures are torn down by now
        _heavy_lock.pop().close()
