"""Fixtures shared by the training tests."""

from __future__ import annotations

import pytest

import surge.train.launcher as launch_module


@pytest.fixture
def no_processes(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Record any attempt to start torchrun."""
    started: list[object] = []
    monkeypatch.setattr(launch_module, "run_torchrun",
                        lambda command, *_: started.append(command))
    return started
