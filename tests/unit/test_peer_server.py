"""benchmarks/peer_server.py: how PyTriton's server and its Python backend stub start and stop."""

from __future__ import annotations

import os
import signal
import sysconfig
from pathlib import Path
from types import ModuleType

import pytest

from tests.unit.benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def peer_server() -> ModuleType:
    return load_benchmark("peer_server")


def own_libpython() -> Path:
    return Path(sysconfig.get_config_var("LIBDIR") or "") / (
        sysconfig.get_config_var("INSTSONAME") or "")


@pytest.mark.skipif(not own_libpython().is_file(), reason="interpreter built without libpython")
def test_own_libpython_comes_before_the_inherited_path(peer_server: ModuleType) -> None:
    path = peer_server.stub_runtime_path({"LD_LIBRARY_PATH": "/opt/a:/opt/b"})
    assert path.split(os.pathsep) == [str(own_libpython().parent), "/opt/a", "/opt/b"]


@pytest.mark.skipif(not own_libpython().is_file(), reason="interpreter built without libpython")
def test_no_inherited_path_leaves_no_empty_entry(peer_server: ModuleType) -> None:
    # An empty entry would make the loader search the working directory.
    assert peer_server.stub_runtime_path({}) == str(own_libpython().parent)


def test_a_static_interpreter_leaves_the_path_alone(
        peer_server: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sysconfig, "get_config_var", lambda name: None)
    assert peer_server.stub_runtime_path({"LD_LIBRARY_PATH": "/opt/a"}) == "/opt/a"
    assert peer_server.stub_runtime_path({}) == ""


def test_sigterm_stops_pytriton_as_ctrl_c_does(peer_server: ModuleType) -> None:
    before = signal.signal(signal.SIGTERM, signal.SIG_IGN)  # so a miss fails, not kills
    try:
        peer_server.stop_on_sigterm()
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGTERM)  # runs the handler before it returns
    finally:
        signal.signal(signal.SIGTERM, before)
