"""The logging extension under attack: two changes at once on two front ends, a record no
server writes, a front end that dies (its pid reused) or restarts while a change waits, and
a body that is no JSON object."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from surge.errors import InputError
from surge.server import frontends, log_settings
from surge.server.log_settings import RECORD, LogSettings

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def captured() -> Iterator[io.StringIO]:
    """The root logger writing to a buffer at INFO, restored after (the settings change it)."""
    root, surge = logging.getLogger(), logging.getLogger("surge")
    saved = root.handlers[:], root.level, surge.level
    buffer = io.StringIO()
    root.handlers[:] = [logging.StreamHandler(buffer)]
    root.setLevel(logging.INFO)
    surge.setLevel(logging.NOTSET)
    try:
        yield buffer
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        surge.setLevel(saved[2])


def test_two_changes_at_once_keep_both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Front end B changes the format while A, having read the record, writes its own change:
    B's change is based on A's (one at a time), not dropped by A's write."""
    first = LogSettings(tmp_path, pid=os.getpid())
    second = LogSettings(tmp_path, pid=os.getppid())
    write = log_settings.write_text_atomically
    other = threading.Thread(target=second.update, args=({"log_format": "ISO8601"},))

    def write_meanwhile(path: Path, text: str) -> None:
        if path.name == RECORD and not other.is_alive() and other.ident is None:
            other.start()  # B's change, while A has read the record and not yet written
            other.join(timeout=1.0)  # done at once without the lock; waits for it with
        write(path, text)

    monkeypatch.setattr(log_settings, "write_text_atomically", write_meanwhile)
    first.update({"log_info": False})
    other.join()
    recorded = json.loads((tmp_path / RECORD).read_text())["settings"]
    assert (recorded["log_info"], recorded["log_format"]) == (False, "ISO8601")
    assert LogSettings(tmp_path, pid=1).current()["log_info"] is False


@pytest.mark.parametrize("record", [
    {"token": "t1", "settings": [1, 2]},
    {"token": "t1", "settings": "log_info"},
    {"token": ["t1"], "settings": {"log_info": False}},
    {"token": {"a": 1}, "settings": None},
])
def test_a_record_no_server_writes_is_not_applied_and_raises_nothing(
        tmp_path: Path, record: dict[str, Any], captured: io.StringIO) -> None:
    (tmp_path / RECORD).write_text(json.dumps(record))
    settings = LogSettings(tmp_path, pid=os.getpid())
    before = dict(settings.settings)
    settings.follow()  # every 0.2 s in each front end, every 0.5 s in the supervisor
    settings.follow()
    assert settings.settings == before
    assert captured.getvalue().count("not applied") <= 1  # said once, not every read
    # A change still works, and replaces the record.
    token = settings.update({"log_warning": False})
    assert json.loads((tmp_path / RECORD).read_text())["token"] == token


@pytest.fixture
def supervisor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from surge.server.process import ServeOptions

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    made = frontends.Supervisor("repo", ServeOptions(http_port=0, grpc_port=0, metrics_port=0,
                                                     frontends=2), 2)
    made._logs = made._log_settings()  # as run() does once every front end started
    try:
        yield made
    finally:
        made.close()


def _died(supervisor: Any, pid: int) -> None:
    """Front end 0, process `pid`, exited: the supervisor's _replace, its restart left out."""
    supervisor._processes[0] = SimpleNamespace(pid=pid, exitcode=-9, join=lambda: None)
    supervisor._mark_dead = lambda _pid: None
    supervisor._stop = True  # no restart: only what is done for the dead one
    supervisor._replace(0)


def test_a_dead_front_ends_note_is_waited_for_no_longer(supervisor: Any) -> None:
    """The dead front end's pid, reused by another live process, made every later change
    wait the full 10 s for a note that process never writes."""
    directory = supervisor._directories[2]
    reused = os.getppid()  # a live process, standing for one that took the dead pid
    LogSettings(directory, pid=reused).note()
    _died(supervisor, reused)
    here = LogSettings(directory, pid=os.getpid() + 10**6)
    token = here.update({"log_verbose_level": 1})
    assert token is not None
    assert reused not in here._behind(token)


def test_the_supervisor_follows_a_change_while_a_front_end_restarts(
        supervisor: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A change made while the supervisor waits to restart a front end (its backoff, then the
    model loads) was answered only after 10 s: the supervisor noted it no sooner."""
    directory = supervisor._directories[2]
    front = LogSettings(directory, pid=os.getppid())
    seen: list[list[int]] = []
    changed: list[str] = []

    def restart_delay(_failures: int) -> float:
        token = front.update({"log_format": "ISO8601"})  # made as the backoff begins
        assert token is not None
        changed.append(token)
        return 0.3

    def start(_index: int) -> None:
        seen.append(front._behind(changed[0]))

    monkeypatch.setattr(frontends, "restart_delay", restart_delay)
    monkeypatch.setattr(supervisor, "_start", start)
    monkeypatch.setattr(supervisor, "_mark_dead", lambda _pid: None)
    supervisor._processes[0] = SimpleNamespace(pid=os.getpid() + 10**6, exitcode=-9,
                                               join=lambda: None)
    supervisor._replace(0)
    assert seen == [[]]  # the supervisor (this process) had followed it


def test_the_supervisor_survives_a_log_directory_it_cannot_write(
        supervisor: Any, monkeypatch: pytest.MonkeyPatch, captured: io.StringIO) -> None:
    """A full disk under the model control directory stopped the whole server."""
    def full(_self: LogSettings) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(LogSettings, "follow", full)
    supervisor._follow_logs()
    assert "No space left on device" in captured.getvalue()


@pytest.mark.parametrize(("body", "named"), [
    (b"null", "got null"), (b"[]", "got an array"), (b'"x"', "got a string"),
    (b"1", "got a number"),
])
def test_a_body_that_is_no_object_is_named_in_json_terms(body: bytes, named: str) -> None:
    with pytest.raises(InputError, match=named):
        log_settings._changes(body)


@pytest.fixture
def uvicorn_loggers() -> Iterator[None]:
    """uvicorn's loggers as they were (a listener below configures them), restored after."""
    loggers = [logging.getLogger(name) for name in ("uvicorn", "uvicorn.error")]
    saved = [(lg.handlers[:], lg.filters[:], lg.level, lg.propagate) for lg in loggers]
    try:
        yield
    finally:
        for lg, (handlers, filters, level, propagate) in zip(loggers, saved, strict=True):
            lg.handlers[:], lg.filters[:], lg.propagate = handlers, filters, propagate
            lg.setLevel(level)


def test_errors_switched_off_are_off_in_uvicorns_lines_too(
        uvicorn_loggers: None, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """uvicorn writes its errors through a handler of its own, made when a listener starts
    (after a restarted front end applied the settings): log_error false left them on."""
    import uvicorn

    # uvicorn's logging.config.dictConfig would close every handler of the test process, the
    # test runner's own among them: only uvicorn's are wanted here.
    monkeypatch.setattr(logging.config, "_clearExistingHandlers", lambda: None)
    settings = LogSettings()
    settings.update({"log_error": False})
    uvicorn.Config(lambda *_: None, log_level="warning", access_log=False)  # as a listener
    logging.getLogger("uvicorn.error").error("uvicorn error line")
    settings.update({"log_error": True})
    logging.getLogger("uvicorn.error").error("uvicorn error back")
    err = capsys.readouterr().err
    assert "uvicorn error line" not in err
    assert "uvicorn error back" in err
