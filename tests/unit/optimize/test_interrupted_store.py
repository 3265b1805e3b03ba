"""Ctrl-C or SIGTERM while `surge optimize` stores a variant over an older one leaves the old
variant or the new one, never neither."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from surge.optimize.pipeline import _store
from surge.optimize.variant import CheckResult, Tolerance, Variant


class _TerminatedError(Exception):
    """What this test's SIGTERM handler raises, as `exit_on_sigterm` raises SystemExit."""


@pytest.fixture
def sigterm_raises() -> Iterator[None]:
    def stop(signum: int, frame: object) -> None:
        raise _TerminatedError

    previous = signal.signal(signal.SIGTERM, stop)
    yield
    signal.signal(signal.SIGTERM, previous)


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """(variants/int8-dynamic holding the old variant, the work folder's new one)."""
    target, staging = tmp_path / "variants" / "int8-dynamic", tmp_path / "work" / "int8-dynamic"
    for folder, text in ((target, "old"), (staging, "new")):
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_text(text)
    return target, staging


def _store_new(target: Path, staging: Path) -> None:
    variant = Variant("int8-dynamic", staging / "model.onnx", "onnxruntime", "quantize/int8",
                      {}, CheckResult(1, 0.0, 0.0))
    _store(staging, variant, Tolerance(), target)


def test_sigterm_between_the_renames_waits_for_the_new_variant(
        folders: tuple[Path, Path], sigterm_raises: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM right after the old variant was moved aside (into the work folder) stopped the
    store there: the stop removed the work folder, and both variants with it."""
    target, staging = folders
    rename = Path.rename

    def terminated_after(self: Path, to: Any) -> Any:
        moved = rename(self, to)
        if self == target:  # moved aside: the stop comes now
            signal.raise_signal(signal.SIGTERM)
        return moved

    monkeypatch.setattr(Path, "rename", terminated_after)
    with pytest.raises(_TerminatedError):
        _store_new(target, staging)
    assert (target / "model.onnx").read_text() == "new"
    assert sorted(p.name for p in target.iterdir()) == ["model.onnx", "variant.yaml"]
    assert os.listdir(staging.parent) == []


def test_ctrl_c_while_the_old_variant_is_deleted_keeps_the_new_one(
        folders: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The old variant was deleted before the new one was moved in: Ctrl-C during that
    (a large model's files take a while) lost both."""
    target, staging = folders
    rmtree = shutil.rmtree

    def interrupted(path: Any, *args: Any, **kwargs: Any) -> None:
        if (Path(path) / "model.onnx").is_file() and Path(path) != target:
            raise KeyboardInterrupt
        rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _store_new(target, staging)
    assert (target / "model.onnx").read_text() == "new"
