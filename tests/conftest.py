"""Shared fixtures: the example repository and tiny deterministic models."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

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
