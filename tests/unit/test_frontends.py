"""`--frontends`: how many front-end processes a value asks for."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from surge.errors import SurgeError
from surge.platform import available_cores
from surge.server.frontends import frontend_count


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
