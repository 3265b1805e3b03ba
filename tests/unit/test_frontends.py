"""`--frontends`: how many front-end processes a value asks for."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import cast

import pytest

from surge.engine import InferenceEngine
from surge.errors import SurgeError, http_status
from surge.platform import available_cores
from surge.server.frontends import frontend_count
from surge.server.model_control import FollowerFailedError, SharedControl


def test_auto_is_one_front_end_per_usable_core() -> None:
    assert frontend_count("auto") == frontend_count("AUTO") == available_cores()


def test_a_number_is_taken_as_given() -> None:
    assert frontend_count("1") == frontend_count(1) == 1
    assert frontend_count(" 3 ") == 3


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5", ""])
def test_anything_else_says_what_is_accepted(value: str) -> None:
    with pytest.raises(SurgeError, match=r"--frontends .*positive number.*'auto'"):
        frontend_count(value)


def test_more_than_four_front_ends_per_core_are_refused() -> None:
    most = 4 * available_cores()
    assert frontend_count(str(most)) == most
    with pytest.raises(SurgeError, match=f"--frontends 100000: at most {most} here"):
        frontend_count("100000")


def test_a_port_taken_by_another_program_is_refused_before_any_front_end_starts() -> None:
    from surge.server.frontends import Supervisor
    from surge.server.process import ServeOptions

    with socket.create_server(("127.0.0.1", 0)) as taken:  # listening, without SO_REUSEPORT
        port = taken.getsockname()[1]
        options = ServeOptions(http_port=port, grpc_port=0, metrics_port=0, frontends=2)
        with pytest.raises(SurgeError, match=rf"cannot listen on 127.0.0.1:{port}"):
            Supervisor("repo", options, 2)


def test_ports_given_as_0_are_chosen_once_for_every_front_end() -> None:
    from surge.server.frontends import Supervisor
    from surge.server.process import ServeOptions

    supervisor = Supervisor("repo", ServeOptions(http_port=0, grpc_port=0, metrics_port=0,
                                                 frontends=2), 2)
    try:
        ports = (supervisor.options.http_port, supervisor.options.grpc_port,
                 supervisor.options.metrics_port)
        assert 0 not in ports
        assert len(set(ports)) == 3
        assert supervisor.options.reuse_port
        assert supervisor.options.frontends == 1  # what each front end runs
    finally:
        supervisor.close()


def test_options_a_front_end_process_cannot_receive_are_refused_in_one_line() -> None:
    import threading

    from surge.server.frontends import Supervisor
    from surge.server.process import ServeOptions
    from surge.server.production import ProductionOptions

    # A tracer provider holds locks: it cannot cross to another process.
    options = ServeOptions(http_port=0, grpc_port=0, metrics_port=0, frontends=2,
                           production=ProductionOptions(tracing=threading.Lock()))
    with pytest.raises(SurgeError, match="cannot be handed to front-end processes"):
        Supervisor("repo", options, 2)


def test_a_front_end_that_keeps_dying_young_is_restarted_ever_more_slowly() -> None:
    from surge.server.frontends import restart_delay

    assert restart_delay(0) == 0.0  # it had served a while: at once
    assert [restart_delay(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert restart_delay(20) == 30.0


def test_directories_of_supervisors_killed_outright_are_removed_by_the_next(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A supervisor killed with SIGKILL leaves its metrics and registry directories; the next
    one removes those whose process is gone, and keeps those of live ones."""
    from surge.server.frontends import Supervisor
    from surge.server.process import ServeOptions

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = [tmp_path / f"surge-metrics-{gone.pid}-x1", tmp_path / f"surge-shm-registry-{gone.pid}-x2"]
    kept = [tmp_path / f"surge-metrics-{os.getpid()}-x3", tmp_path / "surge-metrics-old",
            tmp_path / f"other-{gone.pid}-x4"]
    for path in dead + kept:
        path.mkdir()
    (dead[0] / "counter_1.db").write_bytes(b"x")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    supervisor = Supervisor("repo", ServeOptions(http_port=0, grpc_port=0, metrics_port=0,
                                                 frontends=2), 2)
    try:
        assert not any(path.exists() for path in dead)
        assert all(path.exists() for path in kept)
        made = sorted(p.name for p in tmp_path.iterdir() if p not in kept)
        assert [name.rsplit("-", 1)[0] for name in made] == [
            f"surge-metrics-{os.getpid()}", f"surge-model-control-{os.getpid()}",
            f"surge-shm-registry-{os.getpid()}"]
    finally:
        supervisor.close()
    assert sorted(tmp_path.iterdir()) == sorted(kept)


def test_tracing_by_exporter_name_crosses_to_the_front_ends() -> None:
    """`--tracing console --frontends 2`: the serve options carry the exporter's name, and each
    front end makes its own provider (a provider holds locks: the options were refused)."""
    pytest.importorskip("opentelemetry.sdk")
    import pickle

    from surge.commands.serve import _production
    from surge.server.frontends import Supervisor
    from surge.server.process import ServeOptions
    from surge.server.production import Production

    production = _production(None, None, None, None, True, None, 1.0, "console", None, None)
    options = ServeOptions(http_port=0, grpc_port=0, metrics_port=0, frontends=2,
                           production=production)
    Supervisor("repo", options, 2).close()
    received = pickle.loads(pickle.dumps(production))
    tracer = Production(received).request_log.tracer
    assert type(tracer._provider).__name__ == "TracerProvider"
    tracer.close()



class _FlakyEngine:
    """An engine whose loads fail `failures` times, then succeed; its calls in order."""

    def __init__(self, failures: int = 0, error: type[Exception] = SurgeError) -> None:
        self.failures, self.error = failures, error
        self.calls: list[tuple[str, str]] = []

    async def load(self, name: str, config: object = None) -> None:
        self.calls.append(("load", name))
        if self.failures:
            self.failures -= 1
            raise self.error(f"{name}/2/model.onnx: not a valid ONNX model")

    async def unload(self, name: str) -> None:
        self.calls.append(("unload", name))


def _front_end(directory: Path, engine: _FlakyEngine, pid: int) -> SharedControl:
    return SharedControl(cast(InferenceEngine, engine), directory, wait_s=30, pid=pid)


def _load_with_a_follower(directory: Path, follower: _FlakyEngine) -> tuple[
        _FlakyEngine, SurgeError | None]:
    """Load `m` through a front end of this process while a follower (the parent process's
    pid: alive, so waited for) runs `follower`; the receiver's engine and the answer's error."""
    receiver = _FlakyEngine()

    async def scenario() -> SurgeError | None:
        a, b = _front_end(directory, receiver, os.getpid()), _front_end(
            directory, follower, os.getppid())
        await b.start()
        await a.start()
        try:
            await a.load("m", None)
            return None
        except SurgeError as exc:
            return exc
        finally:
            await a.stop()
            await b.stop()

    return receiver, asyncio.run(scenario())


def test_a_load_another_front_end_cannot_do_is_answered_as_a_failure(tmp_path: Path) -> None:
    """It was answered as done: the caller never learned that one front end kept serving the
    version the others replaced. Now the failed front end stops serving the model and tries
    once more, and the answer (HTTP 400) names it and its reason."""
    follower = _FlakyEngine(failures=2)
    _, error = _load_with_a_follower(tmp_path, follower)
    assert isinstance(error, FollowerFailedError)
    assert http_status(error) == 400
    assert f"failed on front end pid {os.getppid()}: m/2/model.onnx: not a valid" in str(error)
    assert "load it again to retry every front end" in str(error)
    # No version the others replaced: stopped, then the load tried once more.
    assert follower.calls == [("load", "m"), ("unload", "m"), ("load", "m")]


def test_a_load_another_front_end_fails_with_any_error_is_answered_as_a_failure(
        tmp_path: Path) -> None:
    """An error other than Surge's own (an OSError out of files) escaped to the follow loop,
    which tried the load again every 0.2 s for ever; the answer waited its longest and said
    the load was done."""
    follower = _FlakyEngine(failures=1000, error=OSError)
    _, error = _load_with_a_follower(tmp_path, follower)
    assert isinstance(error, FollowerFailedError)
    assert "OSError: m/2/model.onnx" in str(error)
    assert follower.calls == [("load", "m"), ("unload", "m"), ("load", "m")]


def test_a_load_that_fails_once_on_another_front_end_is_tried_again(tmp_path: Path) -> None:
    follower = _FlakyEngine(failures=1)
    receiver, error = _load_with_a_follower(tmp_path, follower)
    assert error is None  # answered as done: every front end serves it
    assert receiver.calls == [("load", "m")]
    assert follower.calls == [("load", "m"), ("unload", "m"), ("load", "m")]


def _mappings_of(key: str) -> int:
    with open("/proc/self/maps") as maps:
        return sum(key.lstrip("/") in line for line in maps)


def test_a_region_unregistered_through_another_front_end_is_let_go_without_a_call(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Front end `second` kept its mapping of a region unregistered through `first` until its
    own next shared-memory call: the object the client had removed kept its memory, on a
    front end that might see no such call for hours."""
    from multiprocessing import shared_memory

    from surge.server import shared_memory as registry_module

    monkeypatch.setattr(registry_module, "SWEEP_EVERY_S", 0.05)
    first = registry_module.SharedMemoryRegistry(tmp_path)
    second = registry_module.SharedMemoryRegistry(tmp_path)
    memory = shared_memory.SharedMemory(create=True, size=4096)
    key = "/" + memory.name.lstrip("/")
    try:
        first.register("r", key, 0, 4096)
        second.get("r")  # a request through `second` named it: mapped there
        first.unregister("r")
    finally:
        memory.close()
        memory.unlink()  # the client is done with it
    deadline = time.monotonic() + 30  # a bound on the wait, not a timing assertion
    while _mappings_of(key) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _mappings_of(key) == 0  # nothing called on `second` meanwhile
    first.close()
    second.close()
