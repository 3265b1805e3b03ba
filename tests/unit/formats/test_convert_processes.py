"""Conversions that run at once, are killed or overrun: one result, no orphans, no leftovers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from surge.convert import convert, find_source, pipeline, toolchains
from surge.convert.sources import Source
from surge.errors import ModelLoadError
from tests.unit.formats.builders import tiny_onnx


def _h5_source(tmp_path: Path) -> Source:
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "model.h5").write_bytes(b"an h5 file")
    source = find_source(tmp_path / "m" / "1")
    assert source is not None
    return source


def _fake_converter(calls: list[Path], together: threading.Barrier | None = None) -> object:
    def converter(source: Source, model: Path, real: Path | None, work: Path) -> tuple[()]:
        calls.append(model)
        if together is not None:
            with contextlib.suppress(threading.BrokenBarrierError):
                together.wait(timeout=1)  # a second conversion at once would meet this one
        tiny_onnx(model)
        return ()
    return converter


def _work_dirs(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(pipeline.WORK_PREFIX)]


def test_two_conversions_at_once_convert_once_and_clear_killed_ones(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _h5_source(tmp_path)
    killed = source.path.parent / f"{pipeline.WORK_PREFIX}killed"
    killed.mkdir()
    calls: list[Path] = []
    monkeypatch.setitem(pipeline._CONVERT, "h5", _fake_converter(calls, threading.Barrier(2)))
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: convert(source), range(2)))
    assert len(calls) == 1
    assert sorted(r.cached for r in results) == [False, True]
    assert results[0].model.is_file()
    assert _work_dirs(source.path.parent) == []


def test_an_edited_conversion_record_is_converted_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _h5_source(tmp_path)
    calls: list[Path] = []
    monkeypatch.setitem(pipeline._CONVERT, "h5", _fake_converter(calls))
    record = convert(source).model.parent / pipeline.RECORD_FILE
    edited = yaml.safe_load(record.read_text()) | {"parity": 5}
    record.write_text(yaml.safe_dump(edited))
    assert not convert(source).cached
    assert len(calls) == 2


def _fake_interpreter(tmp_path: Path) -> Path:
    """A converter that starts a child of its own, says its pid, then runs for a minute."""
    script = tmp_path / "python"
    script.write_text(f"#!/bin/sh\nsleep 60 &\necho $! > {tmp_path}/child.pid\nwait\n")
    script.chmod(0o755)
    return script


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _child_stops(tmp_path: Path) -> bool:
    pid = int((tmp_path / "child.pid").read_text())
    deadline = time.monotonic() + 5
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    stopped = not _running(pid)
    if not stopped:
        os.kill(pid, signal.SIGKILL)
    return stopped


def test_a_converter_past_its_time_is_killed_with_its_children(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SURGE_TF_PYTHON", str(_fake_interpreter(tmp_path)))
    monkeypatch.setattr(toolchains, "TIMEOUT_S", 1)
    with pytest.raises(ModelLoadError, match=r"model\.h5: conversion took longer than 1 s"):
        toolchains.run_script("h5", [], tmp_path / "model.h5")
    assert _child_stops(tmp_path)


def test_sigterm_during_surge_convert_stops_the_converter_and_clears_its_work(tmp_path: Path) -> None:
    source = _h5_source(tmp_path)
    env = os.environ | {"SURGE_TF_PYTHON": str(_fake_interpreter(tmp_path))}
    command = [sys.executable, "-c", "from surge.cli import main; main()",
               "convert", str(tmp_path), "--model", "m"]
    with subprocess.Popen(command, env=env, stderr=subprocess.PIPE) as surge:
        deadline = time.monotonic() + 60
        while not (tmp_path / "child.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        surge.send_signal(signal.SIGTERM)
        assert surge.wait(timeout=30) == 128 + signal.SIGTERM
    assert _child_stops(tmp_path)
    assert _work_dirs(source.path.parent) == []
