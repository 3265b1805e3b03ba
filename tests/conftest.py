"""Shared fixtures: the example repository and tiny deterministic models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_REPOSITORY = ROOT / "examples" / "repository"


@pytest.fixture(scope="session")
def example_repo() -> Path:
    return EXAMPLE_REPOSITORY
