"""The Python API refuses bad input as `surge serve` does, in a SurgeError naming the value, and
a BackgroundServer misused (started twice, stopped twice, interrupted while starting) leaves no
thread or port behind."""

from __future__ import annotations

import math
import socket
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

import surge
import surge.api
from surge.api import BackgroundServer
from surge.errors import SurgeError
from surge.server.limits import ConnectionLimits
from surge.server.process import ServeOptions
from surge.server.production import ProductionOptions

ANY_PORTS = {"http_port": 0, "grpc_port": 0, "metrics_port": 0}
# An empty repository is served only when a model-control mode lets models arrive later.
EMPTY = ServeOptions(**ANY_PORTS, production=ProductionOptions(model_control="explicit"))


@pytest.mark.parametrize(("values", "message"), [
    ({"http_port": -1}, "--http-port -1: use a port number from 0 to 65535"),
    ({"grpc_port": 70000}, "--grpc-port 70000: use a port number"),
    ({"metrics_port": "8002"}, "--metrics-port '8002': use a port number"),
    ({"http_port": True}, "--http-port True: use a port number"),
    ({"grace_s": -1.0}, "--grace -1.0: give the seconds a drain waits"),
    ({"grace_s": math.nan}, "--grace nan: give the seconds a drain waits"),
    ({"grace_s": math.inf}, "--grace inf: give the seconds a drain waits"),
    ({"frontends": 0}, "--frontends 0: use a positive number of front-end processes"),
    ({"frontends": "2"}, "--frontends '2': give a positive number"),
    ({"max_body_bytes": 0}, "max_body_bytes 0: give the largest request body"),
    ({"models": "a,b"}, "--models 'a,b': give the model names as a tuple"),
    ({"models": ()}, "--models () names no model"),
    ({"models": ("",)}, "--models ('',): '' is not a model name"),
    ({"host": None}, "--host None: give the address to bind as a string"),
    ({"api_key": 5}, "--api-key 5: give the key as a string"),
    ({"ray_address": ""}, "--ray '': give the cluster's host:port"),
    ({"limits": {}}, "limits {}: give a surge.server.limits.ConnectionLimits"),
    ({"limits": ConnectionLimits(idle_timeout_s=math.nan)}, "--idle-timeout nan: give a positive"),
    ({"residency": "on-demand"}, "residency 'on-demand': give a surge.engine.ondemand."),
    ({"production": None}, "production None: give a surge.server.production."),
])
def test_serve_options_refuse_what_surge_serve_refuses(values: dict[str, Any],
                                                       message: str) -> None:
    """Each was taken, and failed later deep inside (a NaN grace at the first listener, a
    string of models read letter by letter, none at all serving every model) or never."""
    with pytest.raises(SurgeError) as error:
        ServeOptions(**values)
    assert message in str(error.value)


def test_a_list_of_models_is_kept_as_a_tuple() -> None:
    assert ServeOptions(models=["a", "b"]).models == ("a", "b")  # type: ignore[arg-type]


@pytest.mark.parametrize(("call", "message"), [
    (lambda: BackgroundServer(None), "repository None: give a path"),  # type: ignore[arg-type]
    (lambda: BackgroundServer("r", {"http_port": 0}),  # type: ignore[arg-type]
     "options {'http_port': 0}: give a surge.ServeOptions"),
    (lambda: surge.start_server("r", timeout_s=-1), "timeout_s -1: give the seconds"),
    (lambda: surge.start_server("r", timeout_s=math.nan), "timeout_s nan: give the seconds"),
    (lambda: surge.evaluate("r", None, "d"), "model None: give the name of a model"),
    (lambda: surge.evaluate("r", "m", "d", samples=-1), "samples -1: give a positive number"),
    (lambda: surge.evaluate("r", "m", "d", samples=0), "samples 0: give a positive number"),
    (lambda: surge.tune("r", "m", None), "options None: give a surge.TuneOptions"),  # type: ignore[arg-type]
    (lambda: surge.optimize("r", "m", None), "variants None: give names like"),  # type: ignore[arg-type]
    (lambda: surge.optimize("r", "m", "int8-dynamic", {}),  # type: ignore[arg-type]
     "options {}: give a surge.OptimizeOptions"),
    (lambda: surge.train(None), "recipe None: give a recipe's YAML path"),  # type: ignore[arg-type]
    (lambda: surge.train("r.yaml", "epochs=1"), "overrides 'epochs=1': give a list of"),
    (lambda: surge.train("r.yaml", (), {"nproc": 2}),  # type: ignore[arg-type]
     "options {'nproc': 2}: give a surge.LaunchOptions"),
])
def test_the_api_functions_name_a_bad_argument(call: Any, message: str) -> None:
    """These raised a TypeError or AttributeError from inside, or (samples=-1: all samples but
    the last; overrides as one string: read letter by letter) ran on something else."""
    with pytest.raises(SurgeError) as error:
        call()
    assert message in str(error.value)


def _listening(server: BackgroundServer) -> bool:
    port = int(server.endpoints.http.rsplit(":", 1)[1])
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_a_background_server_starts_once_and_stops_any_number_of_times(tmp_path: Path) -> None:
    """A second stop() raised "Event loop is closed", a second start() "threads can only be
    started once", and endpoints before start() a bare TimeoutError."""
    server = BackgroundServer(tmp_path, EMPTY)
    with pytest.raises(SurgeError, match="not listening yet: call start"):
        server.endpoints  # noqa: B018
    server.start(30)
    endpoints = server.endpoints
    with pytest.raises(SurgeError, match="starts once"):
        server.start(30)
    server.stop()
    server.stop()
    assert not server._thread.is_alive()
    with pytest.raises(SurgeError, match="the server is stopped"):
        server.endpoints  # noqa: B018
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", int(endpoints.http.rsplit(":", 1)[1]))) != 0


def _start_in_a_thread(server: BackgroundServer, timeout_s: float) -> list[BaseException]:
    """start(), in a thread that must end within 20 s (a hang fails the test, not the run)."""
    errors: list[BaseException] = []

    def start() -> None:
        try:
            server.start(timeout_s)
        except BaseException as exc:
            errors.append(exc)

    runner = threading.Thread(target=start, daemon=True)
    runner.start()
    runner.join(20)
    assert not runner.is_alive(), "start() hung"
    return errors


class _GivesUp(Future):  # type: ignore[type-arg]
    """start()'s timeout running out at once."""

    def result(self, timeout: float | None = None) -> Any:
        raise TimeoutError


def test_giving_up_before_the_event_loop_runs_stops_the_server(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """stop() found no loop yet, signalled nothing and joined a server that went on to serve:
    start() never returned."""
    import asyncio

    run = asyncio.run

    def late_run(main: Any) -> Any:
        threading.Event().wait(0.2)  # the server thread is slow to get going
        return run(main)

    monkeypatch.setattr(surge.api.asyncio, "run", late_run)
    server = BackgroundServer(tmp_path, EMPTY)
    server._endpoints = _GivesUp()
    errors = _start_in_a_thread(server, 30)
    assert "did not start within" in str(errors[0])
    assert not server._thread.is_alive()


class _Interrupted(Future):  # type: ignore[type-arg]
    """Ctrl-C while start() waits for the server."""

    def result(self, timeout: float | None = None) -> Any:
        super().result(timeout)  # the server is up
        raise KeyboardInterrupt


def test_ctrl_c_while_starting_stops_the_server(tmp_path: Path) -> None:
    """The server thread went on serving (ports open) after the KeyboardInterrupt."""
    server = BackgroundServer(tmp_path, EMPTY)
    server._endpoints = _Interrupted()
    errors = _start_in_a_thread(server, 30)
    assert isinstance(errors[0], KeyboardInterrupt)
    assert not server._thread.is_alive()


def _serve_and_fail(root: Path) -> BackgroundServer:
    with surge.start_server(root, EMPTY, timeout_s=30) as server:
        assert _listening(server)
        raise ValueError(server)


def test_an_error_in_the_with_block_stops_the_server(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="BackgroundServer") as error:
        _serve_and_fail(tmp_path)
    assert not error.value.args[0]._thread.is_alive()


@pytest.mark.parametrize("folders", [[], ["junk", "docs/sub"]])
def test_an_empty_repository_is_refused_as_surge_serve_refuses_it(
        tmp_path: Path, folders: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """start_server served a repository with no model (and surge.serve would have)."""
    from tests.cli_runner import run_cli

    for folder in folders:
        (tmp_path / folder).mkdir(parents=True)
    code, _, err = run_cli(["serve", str(tmp_path)], capsys)
    assert code == 2
    cli_message = err.strip().removeprefix("error: ")
    assert "no model to serve" in cli_message
    server = BackgroundServer(tmp_path, ServeOptions(**ANY_PORTS))
    with pytest.raises(SurgeError) as error:
        server.start(30)
    assert str(error.value) == cli_message
    assert server._thread.ident is None  # refused before any thread or port
    for call in (lambda: surge.start_server(tmp_path, ServeOptions(**ANY_PORTS), timeout_s=30),
                 lambda: surge.serve(tmp_path, ServeOptions(**ANY_PORTS))):
        with pytest.raises(SurgeError) as error:
            call()
        assert str(error.value) == cli_message


@pytest.mark.parametrize("mode", ["explicit", "poll"])
def test_an_empty_repository_is_served_when_models_may_arrive(tmp_path: Path, mode: Any) -> None:
    options = ServeOptions(**ANY_PORTS, production=ProductionOptions(model_control=mode))
    with surge.start_server(tmp_path, options, timeout_s=30) as server:
        assert _listening(server)
