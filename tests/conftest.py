"""Shared fixtures: the example repository and tiny deterministic models."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_REPOSITORY = ROOT / "examples" / "repository"


@pytest.fixture(scope="session")
def example_repo() -> Path:
    return EXAMPLE_REPOSITORY


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    """A test that starts a server in process configures the root logger; the next test must
    not inherit its level and handlers."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
