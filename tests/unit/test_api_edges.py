"""The Python API given arguments of the wrong kind (a SurgeError naming the argument, before
any model loads or port opens), and one BackgroundServer started from two threads at once."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

import surge
from surge.api import BackgroundServer
from surge.errors import SurgeError
from surge.server import serve_checks
from surge.server.process import ServeOptions
from surge.server.production import ProductionOptions
from tests.unit.tiny_models import make_repo

ANY_PORTS = {"http_port": 0, "grpc_port": 0, "metrics_port": 0}
TUNE = {"data": "fashion-mnist", "task": "classification"}
NO_REPO = "no-such-repository"


def _tune_options() -> Any:
    return surge.TuneOptions(**TUNE, slo=surge.Slo(20.0, surge.Load(rate=100)))


@pytest.mark.parametrize(("call", "message"), [
    (lambda repo: surge.evaluate(repo, "fashion", 5), "data 5: give a dataset name"),
    (lambda repo: surge.evaluate(repo, "fashion", None), "data None: give a dataset name"),
    (lambda repo: surge.evaluate(repo, "fashion", "fashion-mnist", None),
     "task None: give a task name such as 'classification'"),
    (lambda repo: surge.evaluate(repo, "fashion", "fashion-mnist", 3), "task 3: give a task"),
    (lambda repo: surge.evaluate(repo, "fashion", "fashion-mnist", progress=3),
     "progress 3: give a rich.progress.Progress"),
    (lambda repo: surge.train("r.yaml", None), "overrides None: give a list of"),
    (lambda repo: surge.train("r.yaml", (f"epochs={n}" for n in [1])),
     "overrides <generator"),
    # no repository: a check that failed to refuse must not serve, or tune the example model
    (lambda repo: surge.serve(NO_REPO, ServeOptions(**ANY_PORTS), on_started=5),
     "on_started 5: give a function taking the Endpoints"),
    (lambda repo: surge.tune(NO_REPO, "fashion", _tune_options(), progress=3),
     "progress 3: give a rich.progress.Progress"),
    (lambda repo: surge.tune(NO_REPO, "fashion", _tune_options(), on_stage="stage"),
     "on_stage 'stage': give a function"),
])
def test_an_argument_of_the_wrong_kind_is_named(call: Any, message: str,
                                                example_repo: Path) -> None:
    """Each raised a TypeError or AttributeError from deep inside (a wrong data or task after
    the model had loaded; on_started once the server listened; a progress at the first
    batch), or, a generator of overrides, was read as none."""
    with pytest.raises(SurgeError) as error:
        call(example_repo)
    assert message in str(error.value)


def test_an_unknown_task_is_refused_before_the_model_loads(tmp_path: Path) -> None:
    with pytest.raises(SurgeError, match="unknown task 'nope'"):
        surge.evaluate(tmp_path / "no-such-repository", "m", "fashion-mnist", "nope")


def test_one_server_started_from_two_threads_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both passed the started-once check: the second got Thread.start()'s RuntimeError
    "threads can only be started once", not the SurgeError."""
    entered, release = threading.Event(), threading.Event()
    check = serve_checks.check_has_models

    def held_check(repo: Path, options: ServeOptions) -> Any:
        entered.set()
        release.wait(30)
        return check(repo, options)

    monkeypatch.setattr(serve_checks, "check_has_models", held_check)
    options = ServeOptions(**ANY_PORTS, production=ProductionOptions(model_control="explicit"))
    server = BackgroundServer(tmp_path, options)
    outcomes: list[BaseException | None] = []

    def start() -> None:
        try:
            server.start(30)
            outcomes.append(None)
        except BaseException as exc:
            outcomes.append(exc)

    first, second = threading.Thread(target=start), threading.Thread(target=start)
    try:
        first.start()
        assert entered.wait(30)
        second.start()
        second.join(20)
        assert not second.is_alive(), "the second start() went on to start the server"
        assert isinstance(outcomes[0], SurgeError)
        assert "started already" in str(outcomes[0])
    finally:
        release.set()
        first.join(60)
        second.join(60)
        server.stop()
    assert outcomes[1] is None  # the first one serves
    assert not server._thread.is_alive()


def test_a_server_refused_for_an_empty_repository_starts_once_it_has_a_model(
        tmp_path: Path) -> None:
    server = BackgroundServer(tmp_path, ServeOptions(**ANY_PORTS))
    with pytest.raises(SurgeError, match="no model to serve"):
        server.start(30)
    make_repo(tmp_path)
    server.start(60)
    server.stop()
    assert not server._thread.is_alive()


def test_serve_from_another_thread_points_to_start_server(tmp_path: Path) -> None:
    """It raised asyncio's "add_signal_handler() can only be called from the main thread"."""
    options = ServeOptions(**ANY_PORTS, production=ProductionOptions(model_control="explicit"))
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            surge.serve(tmp_path, options)
        except BaseException as exc:
            errors.append(exc)

    runner = threading.Thread(target=serve, daemon=True)
    runner.start()
    runner.join(60)
    assert not runner.is_alive(), "surge.serve went on serving from a thread"
    assert isinstance(errors[0], SurgeError)
    assert "use surge.start_server(...) and its stop()" in str(errors[0])


def test_a_server_stopped_before_it_started_says_so(tmp_path: Path) -> None:
    """It said "this server was started already" of a server that never ran."""
    server = BackgroundServer(tmp_path, ServeOptions(**ANY_PORTS))
    server.stop()
    with pytest.raises(SurgeError, match="stopped before it started: make a new one"):
        server.start(30)
    assert server._thread.ident is None


@pytest.mark.parametrize(("values", "message"), [
    ({"frontends": 2}, "frontends 2: a BackgroundServer serves from this process"),
    ({"ray_address": "127.0.0.1:6379"},
     "ray_address '127.0.0.1:6379': a BackgroundServer runs its instances"),
])
def test_what_only_surge_serve_does_is_refused(tmp_path: Path, values: dict[str, Any],
                                               message: str) -> None:
    """Both were ignored: one local front end served, with no word of the others or of the
    cluster."""
    make_repo(tmp_path)
    options = ServeOptions(**ANY_PORTS, **values)
    with pytest.raises(SurgeError) as error:
        BackgroundServer(tmp_path, options)
    assert message in str(error.value)
    with pytest.raises(SurgeError, match=message.split(":")[0]):
        surge.start_server(tmp_path, options, timeout_s=60).stop()


def test_the_log_level_is_applied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ServeOptions(log_level='info') left the server's log as it was, unlike surge.serve."""
    import surge.server.process

    levels: list[str] = []
    monkeypatch.setattr(surge.server.process, "configure_logging", levels.append)
    options = ServeOptions(**ANY_PORTS, log_level="info",
                           production=ProductionOptions(model_control="explicit"))
    with surge.start_server(tmp_path, options, timeout_s=30):
        assert levels == ["info"]


@pytest.mark.parametrize("timeout_s", [1e12, 10**400])
def test_a_timeout_longer_than_a_lock_can_wait_is_taken(tmp_path: Path, timeout_s: Any) -> None:
    """It raised OverflowError ("timestamp out of range for platform time_t"), or, as an
    int past any float, at the check."""
    options = ServeOptions(**ANY_PORTS, production=ProductionOptions(model_control="explicit"))
    with surge.start_server(tmp_path, options, timeout_s=timeout_s) as server:
        assert server.endpoints.http.startswith("http://")
