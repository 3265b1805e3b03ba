"""Triton's logging extension (`GET/POST /v2/logging`, gRPC `LogSettings`) over the server's
Python logging.

The settings map onto the log the server writes to stderr (`--log-level`):

- `log_info`, `log_warning`, `log_error`: whether lines of that severity are written (error
  includes critical); any combination, as in Triton;
- `log_verbose_level`: 0 leaves out Surge's debug lines, any larger number writes them (Surge
  has one verbose level: every level above 0 writes the same lines);
- `log_format`: `default` (the server's own line format) or `ISO8601` (timestamps as
  `2026-01-31T12:00:00Z`, in UTC);
- `log_file`: only `""`: the log goes to stderr, and the server opens no file a client names
  (redirect stderr instead); another value is refused.

A setting given as null (an unset gRPC value) is left as it is. With `--frontends N` the
front end that receives a change applies it and records it in the supervisor's model control
directory; every front end (and the supervisor) applies the record within FOLLOW_EVERY_S and
notes so, and the change is answered once every other live one has noted it (or after
FOLLOWERS_WAIT_S; they follow still). A read is answered with the record, and a front end
restarted after a crash applies it before it listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import time
import uuid
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from surge.configfile import write_text_atomically
from surge.errors import InputError, shown
from surge.protocol.grpc_gen import grpc_service_pb2 as pb
from surge.server.frontends import CONTROL_DIR_ENV
from surge.server.repository_load import control_body
from surge.tempdirs import process_alive

log = logging.getLogger(__name__)

LOGGING_EXTENSION = "logging"  # as GET /v2 and ServerMetadata list it
RECORD = "log_settings.json"  # the latest change, in the model control directory
LOCK = "log_settings.lock"  # held while a change is based on the record and replaces it
NOTES = "log_settings.done"  # a file per process following the record: the token it applied
FOLLOW_EVERY_S = 0.2  # how soon the other front ends apply a change
FOLLOWERS_WAIT_S = 10.0  # the longest a change waits for the others to apply it
FORMATS = ("default", "ISO8601")
SEVERITIES = ("log_info", "log_warning", "log_error")
MAX_VERBOSE = 2**32 - 1  # a uint32, as in Triton
_ISO_DATES = "%Y-%m-%dT%H:%M:%SZ"
_LINE = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # a handler without a format of its own
_NOTHING = logging.CRITICAL + 10  # a root level that lets nothing through
# Loggers whose lines reach stderr through a handler of their own, not the root's: uvicorn's
# (its errors, "Invalid HTTP request received"), configured anew by each listener it starts.
_OWN_HANDLERS = ("uvicorn", "uvicorn.error")


def check_settings(changes: Mapping[str, Any]) -> dict[str, Any]:
    """The settings a change sets, checked; InputError naming a bad key or value."""
    checked: dict[str, Any] = {}
    for key, value in changes.items():
        if value is None:
            continue  # as Triton: a null setting is left as it is
        if key in SEVERITIES:
            if not isinstance(value, bool):
                raise InputError(f"log setting {key!r} must be true or false, got {shown(value)}")
        elif key == "log_verbose_level":
            if isinstance(value, bool) or not isinstance(value, int) \
                    or not 0 <= value <= MAX_VERBOSE:
                raise InputError(f"log setting 'log_verbose_level' must be an integer from 0 "
                                 f"to {MAX_VERBOSE}, got {shown(value)}")
        elif key == "log_format":
            if value not in FORMATS:
                raise InputError(f"log setting 'log_format' must be one of "
                                 f"{', '.join(FORMATS)}, got {shown(value)}")
        elif key == "log_file":
            if value != "":
                raise InputError(f"log setting 'log_file' {shown(value)} cannot be honoured: the "
                                 "server logs to stderr and opens no file a request names; "
                                 "redirect its stderr, and send \"\" or leave the setting out")
        else:
            raise InputError(f"unknown log setting {shown(key)}: use log_file, log_info, "
                             "log_warning, log_error, log_verbose_level or log_format")
        checked[key] = value
    return checked


_FILTERS: weakref.WeakSet[_SeverityFilter] = weakref.WeakSet()  # every severity filter made


class _SeverityFilter(logging.Filter):
    """Drops the lines of the severities switched off (a level alone cannot: info on with
    warning off)."""

    def __init__(self) -> None:
        super().__init__()
        self.settings: dict[str, Any] = {}
        self.holders: list[logging.Filterer] = []  # the handlers and loggers it was put on
        _FILTERS.add(self)

    def put_on(self, holder: logging.Filterer) -> None:
        if self not in holder.filters:
            holder.addFilter(self)
            self.holders.append(holder)

    def take_off(self) -> None:
        """Off every holder, letting every line through where it is still held."""
        for holder in self.holders:
            holder.removeFilter(self)
        self.holders.clear()
        self.settings = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return bool(self.settings.get("log_error", True))
        if record.levelno >= logging.WARNING:
            return bool(self.settings.get("log_warning", True))
        if record.levelno >= logging.INFO:
            return bool(self.settings.get("log_info", True))
        return bool(self.settings.get("log_verbose_level", 0))


class LogSettings:
    """This process's log settings, shared through `directory` with the other front ends."""

    def __init__(self, directory: Path | str | None = None, pid: int | None = None) -> None:
        self.directory = Path(directory) if directory else None
        self.pid = pid or os.getpid()  # names this process's note
        self._filter = _SeverityFilter()
        self._formatters: dict[logging.Handler, logging.Formatter | None] = {}
        self._token: str | None = None  # of the record applied last
        self.settings = _settings_of(logging.getLogger())
        # Started with --log-level debug: verbose keeps every library's debug lines too.
        self._all_debug = logging.getLogger().getEffectiveLevel() <= logging.DEBUG

    def current(self) -> dict[str, Any]:
        """The settings in force (the latest record's, with several front ends)."""
        self.follow()
        return dict(self.settings)

    def update(self, changes: Mapping[str, Any]) -> str | None:
        """Apply `changes` (checked first: a bad one changes nothing) and record them for the
        other front ends; the record's token (None with one front end)."""
        checked = check_settings(changes)
        if self.directory is None:
            self._change(checked)
            return None
        with _changing(self.directory):
            self.follow()  # another front end's change is the base of this one
            self._change(checked)
            self._token = uuid.uuid4().hex
            record = {"token": self._token, "settings": self.settings}
            write_text_atomically(self.directory / RECORD, json.dumps(record))
        self.note()
        return self._token

    def _change(self, checked: dict[str, Any]) -> None:
        self.apply({**self.settings, **checked})
        log.warning("log settings changed: %s", _described(checked))

    def follow(self) -> None:
        """Apply the recorded settings when another front end changed them, and note so."""
        if self.directory is None:
            return
        record = _read(self.directory / RECORD)
        if record is None or record.get("token") == self._token:
            return
        self._token = record.get("token")
        try:
            self.apply({**self.settings, **check_settings(_recorded(record))})
        except InputError as exc:  # written by a server of another version: keep ours
            log.error("log settings of %s not applied: %s", self.directory / RECORD, exc)
        self.note()

    def note(self) -> None:
        """Note the record applied here: a change waits for every live process's note."""
        if self.directory is not None:
            (self.directory / NOTES).mkdir(exist_ok=True)
            write_text_atomically(self.directory / NOTES / str(self.pid), self._token or "")

    def forget(self, pid: int | None = None) -> None:
        """A draining front end (or process `pid`, a dead one: its pid may be reused) is
        waited for no longer."""
        if self.directory is not None:
            (self.directory / NOTES / str(pid or self.pid)).unlink(missing_ok=True)

    async def followed(self, token: str, wait_s: float = FOLLOWERS_WAIT_S) -> None:
        """Return once every other live process has applied record `token` (or a newer
        one), or after `wait_s`."""
        deadline = time.monotonic() + wait_s
        while (behind := self._behind(token)):
            if time.monotonic() >= deadline:
                log.warning("log settings: processes %s have not followed within %.0f s; "
                            "answering (they follow still)", behind, wait_s)
                return
            await asyncio.sleep(0.05)

    def _behind(self, token: str) -> list[int]:
        assert self.directory is not None
        record = _read(self.directory / RECORD)
        if record is None or record.get("token") != token:
            return []  # a newer change replaced it
        behind = []
        for path in (self.directory / NOTES).iterdir():
            pid = int(path.name) if path.name.isdigit() else 0
            with contextlib.suppress(OSError):
                if pid != self.pid and process_alive(pid) and path.read_text() != token:
                    behind.append(pid)
        return sorted(behind)

    def apply(self, settings: dict[str, Any]) -> None:
        """Set the root logger's level, the severity filter and the line format."""
        self.settings = settings
        self._filter.settings = settings
        lowest = next((level for key, level in zip(
            SEVERITIES, (logging.INFO, logging.WARNING, logging.ERROR), strict=True)
            if settings[key]), _NOTHING)
        verbose = bool(settings["log_verbose_level"])
        root = logging.getLogger()
        root.setLevel(logging.DEBUG if verbose and self._all_debug else lowest)
        # Verbose: Surge's own debug lines, not those of every library in the process.
        logging.getLogger("surge").setLevel(logging.DEBUG if verbose else logging.NOTSET)
        for handler in root.handlers:
            self._filter.put_on(handler)
            self._format(handler, settings["log_format"])
        for name in _OWN_HANDLERS:  # on the logger: it keeps its filters when reconfigured
            self._filter.put_on(logging.getLogger(name))

    def _format(self, handler: logging.Handler, log_format: str) -> None:
        original = self._formatters.setdefault(handler, handler.formatter)
        if log_format == "default":
            handler.setFormatter(original)
            return
        iso = logging.Formatter(getattr(original, "_fmt", None) or _LINE, _ISO_DATES)
        iso.converter = time.gmtime
        handler.setFormatter(iso)


def drop_severity_filters() -> None:
    """Take every severity filter made off the handlers and loggers it was put on: a process
    that applied settings and goes on with another logging set-up (tests)."""
    for made in list(_FILTERS):
        made.take_off()


def _settings_of(root: logging.Logger) -> dict[str, Any]:
    """The settings `--log-level` amounts to."""
    level = root.getEffectiveLevel()
    surge_level = logging.getLogger("surge").getEffectiveLevel()
    return {"log_file": "", "log_info": level <= logging.INFO,
            "log_warning": level <= logging.WARNING, "log_error": level <= logging.ERROR,
            "log_verbose_level": int(min(level, surge_level) <= logging.DEBUG),
            "log_format": "default"}


def _described(changes: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in changes.items()) or "none"


@contextlib.contextmanager
def _changing(directory: Path) -> Iterator[None]:
    """One change at a time across the processes: two at once were each based on the record
    before them, and the one written last dropped the other's settings."""
    with open(directory / LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # held for a read and a write: microseconds
        yield


def _read(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # none yet (or being replaced: read again next time)
    if not isinstance(value, dict) or not isinstance(value.get("token"), str):
        return None  # no record this server writes: a change replaces it
    return value


def _recorded(record: dict[str, Any]) -> dict[str, Any]:
    settings = record.get("settings")
    if not isinstance(settings, dict):
        raise InputError(f"its settings are no JSON object: {shown(settings)}")
    return settings


_process: LogSettings | None = None


def process_settings() -> LogSettings:
    """This process's settings, shared with the other front ends when there are some."""
    global _process
    if _process is None:
        _process = LogSettings(os.environ.get(CONTROL_DIR_ENV))
    return _process


async def changed(changes: Mapping[str, Any]) -> dict[str, Any]:
    """Apply `changes` in every front end; the settings in force after."""
    settings = process_settings()
    token = settings.update(changes)
    if token is not None:
        await settings.followed(token)
    return settings.current()


async def http_answer(method: str, body: bytes) -> bytes:
    """The answer to `GET` or `POST /v2/logging`: the settings in force, as JSON."""
    if method == "POST":
        return json.dumps(await changed(_changes(body))).encode()
    return json.dumps(process_settings().current()).encode()


def _changes(body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise InputError("POST /v2/logging needs a JSON object of settings, e.g. "
                         '{"log_verbose_level": 1}')
    return control_body(body)


async def grpc_answer(request: pb.LogSettingsRequest) -> pb.LogSettingsResponse:
    """The answer to a `LogSettings` call: with settings a change, without them a read."""
    if request.settings:
        current = await changed({key: _grpc_value(value)
                                 for key, value in request.settings.items()})
    else:
        current = process_settings().current()
    response = pb.LogSettingsResponse()
    for key, value in current.items():
        entry = response.settings[key]
        if isinstance(value, bool):
            entry.bool_param = value
        elif isinstance(value, int):
            entry.uint32_param = value
        else:
            entry.string_param = value
    return response


def _grpc_value(value: Any) -> Any:
    choice = value.WhichOneof("parameter_choice")
    return None if choice is None else getattr(value, choice)


def changes_to_follow() -> asyncio.Task[None] | None:
    """Apply the recorded settings now (a restarted front end, before it listens), then keep
    following them; None with one front end."""
    settings = process_settings()
    if settings.directory is None:
        return None
    settings.follow()
    settings.note()  # waited for from now on
    return asyncio.create_task(_follow(settings), name="surge-log-settings")


async def _follow(settings: LogSettings) -> None:
    try:
        while True:
            await asyncio.sleep(FOLLOW_EVERY_S)
            try:
                settings.follow()
            except OSError as exc:  # the directory's disk: tried again next time
                log.warning("log settings not followed: %s", exc)
    finally:
        settings.forget()


__all__ = ["LOGGING_EXTENSION", "LogSettings", "changed", "changes_to_follow",
           "check_settings", "grpc_answer", "http_answer", "process_settings"]
