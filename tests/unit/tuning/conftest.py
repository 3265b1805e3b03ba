"""Fixtures of the tune command's tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import surge.api
from surge.errors import SurgeError


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[Any]:
    """A repository with model `m` as the working folder; the tune's API call, recorded and
    stopped."""
    calls: list[Any] = []

    def fake_tune(*args: Any, **kwargs: Any) -> None:
        calls.append(args)
        raise SurgeError("stopped after the API call")

    (tmp_path / "m").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(surge.api, "tune", fake_tune)
    return calls
