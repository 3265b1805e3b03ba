"""Triton's trace extension (`GET/POST /v2[/models/NAME]/trace/setting`, gRPC `TraceSetting`)
over the OpenTelemetry spans of `--tracing` (surge/server/tracing.py).

The settings decide which finished requests become spans:

- `trace_level`: `["OFF"]` makes none, `["TIMESTAMPS"]` makes them (the spans hold the times
  of each phase); `TENSORS` is refused: the spans never carry tensor values;
- `trace_rate` N: one request in N of each model is traced (its Nth, 2Nth, ...);
- `trace_count` N: N more traces, counted down as they are made, then none (-1: no limit);
- `trace_mode`: `opentelemetry`, the only one; `trace_file` and `log_frequency` (Triton's own
  trace files) mean nothing here: they are not reported, and a change of them is refused.

A model's own settings override the global ones key by key; a setting POSTed as null (a gRPC
setting without values) clears the model's own value, so that the global one applies again,
or puts a global one back to what the server started with. A server started without
`--tracing` has nowhere to send spans: it reports level OFF and refuses every change (a
setting given as null, nothing to clear, is let through).

With `--frontends N` a change is recorded in the supervisor's model control directory and
every front end applies the record before its next sampling decision (a stat of the record per
traced request). The sampling and the count down are each front end's own: rate N is one in N
of the requests a front end answers, count N is N traces per front end (the record holds each
count as set, and the change that set it: another change leaves what is left of it).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from surge.configfile import write_text_atomically
from surge.errors import InputError, NotFoundError, shown
from surge.protocol.grpc_gen import grpc_service_pb2 as pb
from surge.repository import check_name
from surge.server.frontends import CONTROL_DIR_ENV
from surge.server.repository_load import control_body

if TYPE_CHECKING:
    from surge.engine import InferenceEngine

log = logging.getLogger(__name__)

TRACE_EXTENSION = "trace"  # as GET /v2 and ServerMetadata list it
ROUTE = ["trace", "setting"]  # the path's last segments, after v2 or v2/models/NAME
RECORD = "trace_settings.json"  # the latest change, in the model control directory
LOCK = "trace_settings.lock"  # held while a change is based on the record and replaces it
MODE = "opentelemetry"
OFF, TIMESTAMPS = ("OFF",), ("TIMESTAMPS",)
LEVELS = ("OFF", "TIMESTAMPS", "TENSORS")
KEYS = ("trace_level", "trace_rate", "trace_count")  # the settings kept, globally or per model
FILE_KEYS = ("trace_file", "log_frequency")  # Triton's trace files: no meaning here
MAX_RATE = 2**32 - 1  # a uint32, as in Triton
MAX_COUNT = 2**31 - 1  # an int32, as in Triton
# Models whose requests are counted for the rate at once; past it the longest idle is dropped:
# requests naming ever new (unknown) models must not grow the table without end.
MAX_COUNTED = 4096
SETTLED_NS = 100_000_000  # a record this old is told from the next one by inode and mtime
# An integer as a string: ASCII digits (int() also takes "1_0" and other scripts' digits),
# short enough that int() is cheap and the range check decides.
_INTEGER = re.compile(r"-?[0-9]{1,20}")


def check_changes(changes: Mapping[str, Any]) -> dict[str, Any]:
    """The settings a change sets (None: clear), checked; InputError naming a bad one."""
    checked: dict[str, Any] = {}
    for key, value in changes.items():
        if key == "trace_level":
            checked[key] = None if value is None else _level(value)
        elif key == "trace_rate":
            checked[key] = None if value is None else _integer(key, value, 1, MAX_RATE)
        elif key == "trace_count":
            checked[key] = None if value is None else _count(value)
        elif key == "trace_mode":
            _mode(value)  # nothing to set: the one mode there is
        elif key in FILE_KEYS:
            _no_file(key, value)
        else:
            raise InputError(f"unknown trace setting {shown(key)}: use trace_level, trace_rate, "
                             "trace_count or trace_mode")
    return checked


def _level(value: Any) -> tuple[str, ...]:
    levels = [value] if isinstance(value, str) else value
    if not isinstance(levels, list) or not levels \
            or not all(isinstance(level, str) for level in levels):
        raise InputError(f"trace setting 'trace_level' must be a list of levels such as "
                         f'["TIMESTAMPS"] or ["OFF"], got {shown(value)}')
    for level in levels:
        if level == "TENSORS":
            raise InputError("trace level 'TENSORS' is not supported: the spans carry the "
                             "times of each phase, never tensor values; use TIMESTAMPS")
        if level not in LEVELS:
            raise InputError(f"unknown trace level {shown(level)}: use OFF or TIMESTAMPS")
    if "OFF" in levels and len(set(levels)) > 1:
        raise InputError(f"trace level OFF cannot be given with another level, got "
                         f"{shown(value)}")
    return OFF if "OFF" in levels else TIMESTAMPS


def _one(key: str, value: Any) -> Any:
    """The single value of a setting that takes one (gRPC sends each as a list)."""
    if isinstance(value, list):
        if len(value) != 1:
            raise InputError(f"trace setting {key!r} takes one value, got {shown(value)}")
        return value[0]
    return value


def _integer(key: str, value: Any, low: int, high: int) -> int:
    one = _one(key, value)
    text = one.strip() if isinstance(one, str) else None
    number: int | None = None
    if isinstance(one, int) and not isinstance(one, bool):
        number = one
    elif text is not None and _INTEGER.fullmatch(text):  # "--5" would pass a strip of "-"
        number = int(text)
    if number is None or not low <= number <= high:
        raise InputError(f"trace setting {key!r} must be an integer from {low} to {high} "
                         f'(a string such as "100"), got {shown(value)}')
    return number


def _count(value: Any) -> int:
    try:
        return _integer("trace_count", value, -1, MAX_COUNT)
    except InputError:
        raise InputError(f"trace setting 'trace_count' must be -1 (no limit) or a number of "
                         f"traces from 0 to {MAX_COUNT}, got {shown(value)}") from None


def _mode(value: Any) -> None:
    if value is not None and _one("trace_mode", value) != MODE:
        raise InputError(f"trace mode {shown(value)} is not served: the server traces with "
                         f"OpenTelemetry only; send \"{MODE}\" or leave the setting out")


def _no_file(key: str, value: Any) -> None:
    if value is not None:
        raise InputError(f"trace setting {key!r} cannot be honoured: spans go to the --tracing "
                         "exporter (console or otlp, OTEL_EXPORTER_OTLP_*), never to a trace "
                         "file; leave the setting out")


class TraceSettings:
    """The trace settings of one server: global ones, each model's own, and the counts that
    sample requests by them. `traced`: the server has somewhere to send spans."""

    def __init__(self, traced: bool, directory: Path | str | None = None) -> None:
        self.traced = traced
        self.directory = Path(directory) if directory else None
        # What the server starts with: every request traced when it has an exporter, as before
        # the settings could be changed.
        self.start: dict[str, Any] = {"trace_level": TIMESTAMPS if traced else OFF,
                                      "trace_rate": 1, "trace_count": -1}
        self.global_: dict[str, Any] = dict(self.start)
        self.models: dict[str, dict[str, Any]] = {}
        self._seen: dict[str, int] = {}  # requests per model since the last change
        self._lock = threading.Lock()  # a request may finish on another thread
        self._token: str | None = None  # of the record applied last
        # Each count set by a change ("": the global one): (the change's token, the value it
        # set). The record carries these values, not what is left here, and a front end
        # applying a record keeps what is left of a count the record did not set anew.
        self._counts: dict[str, tuple[str, int]] = {}
        self._record_id: tuple[int, int] | None = None  # (inode, mtime) of that record

    def current(self, model: str | None = None) -> dict[str, Any]:
        """The settings in force for `model` (None: the global ones), as Triton answers them."""
        self.follow()
        with self._lock:
            level, rate, count = (self._value(model, key) for key in KEYS)
        return {"trace_level": list(level), "trace_rate": str(rate),
                "trace_count": str(count), "trace_mode": MODE}

    def _value(self, model: str | None, key: str) -> Any:
        own = self.models.get(model, {}) if model is not None else {}
        return own[key] if key in own else self.global_[key]

    def sample(self, model: str) -> bool:
        """Whether this request of `model` is traced; a trace made counts down its count."""
        if self.directory is not None:
            self.follow()
        with self._lock:
            own = self.models.get(model, {})
            settings = own if "trace_count" in own else self.global_  # whose count it uses
            if self._value(model, "trace_level") == OFF or settings["trace_count"] == 0:
                return False
            if self._counted(model) % self._value(model, "trace_rate"):
                return False
            if settings["trace_count"] > 0:
                settings["trace_count"] -= 1
            return True

    def _counted(self, model: str) -> int:
        """The request's number among `model`'s since the last change. The table keeps the
        MAX_COUNTED models counted last: requests naming ever new models (unknown ones count
        too) push out the longest idle one, never the counts of every model."""
        seen = self._seen.pop(model, 0) + 1
        if len(self._seen) >= MAX_COUNTED:
            del self._seen[next(iter(self._seen))]  # the oldest: a dict keeps insertion order
        self._seen[model] = seen
        return seen

    def update(self, model: str | None, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Apply `changes` to `model`'s own settings (None: the global ones; checked first: a
        bad one changes nothing) and record them for the other front ends; the settings after."""
        checked = check_changes(changes)
        self._check_destination(checked)
        if checked and self.traced:  # untraced: nulls only, nothing to clear
            token = uuid.uuid4().hex
            with self._changing():
                self.follow()  # another front end's change is the base of this one
                with self._lock:
                    self._change(model, checked, token)
                self._write(token)
            log.warning("trace settings of %s changed: %s", model or "every model",
                        ", ".join(f"{k}={v!r}" for k, v in checked.items()))
        return self.current(model)

    def _check_destination(self, checked: dict[str, Any]) -> None:
        wanted = [k for k, v in checked.items() if v is not None]
        if wanted and not self.traced:
            raise InputError(f"trace setting {wanted[0]!r} cannot be changed: the server was "
                             "started without --tracing and sends spans nowhere; restart it "
                             "with --tracing console or --tracing otlp to trace requests")

    def _change(self, model: str | None, checked: dict[str, Any], token: str) -> None:
        target = self.global_ if model is None else self.models.setdefault(model, {})
        if "trace_count" in checked:
            self._set_count(model, checked["trace_count"], token)
        for key, value in checked.items():
            if value is not None:
                target[key] = value
            elif model is None:
                target[key] = self.start[key]  # the global setting the server started with
            else:
                target.pop(key, None)  # the global one applies again
        if model is not None and not target:
            del self.models[model]
        self._seen.clear()  # a change starts sampling afresh, as a new setting in Triton

    def _set_count(self, model: str | None, value: int | None, token: str) -> None:
        if value is None and model is not None:
            self._counts.pop(model, None)  # the global count applies again
        else:
            self._counts[model or ""] = (token, self.start["trace_count"] if value is None
                                         else value)

    # -- several front ends ---------------------------------------------------------------
    @contextlib.contextmanager
    def _changing(self) -> Iterator[None]:
        """One change at a time across the front ends: each is based on the one before."""
        if self.directory is None:
            yield
            return
        with open(self.directory / LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # held for a read and a write: microseconds
            yield

    def _write(self, token: str) -> None:
        if self.directory is None:
            return
        self._token = token
        with self._lock:
            record = {"token": token, "global": self._as_set("", self.global_),
                      "models": {name: self._as_set(name, own)
                                 for name, own in self.models.items()},
                      "counts": {slot: set_by for slot, (set_by, _) in self._counts.items()}}
        path = self.directory / RECORD
        write_text_atomically(path, json.dumps(record))
        self._record_id = None  # read back (its token is ours) until it has settled

    def follow(self) -> None:
        """Apply the recorded settings when another front end changed them."""
        if self.directory is None:
            return
        path = self.directory / RECORD
        identity = _identity(path)
        if identity is None or identity == self._record_id:
            return  # no change since the record applied last: one stat, no read
        # A record replaced within the file system's time stamp granularity (a few ms) may get
        # its predecessor's inode and mtime back: a young one is read again until it is older.
        settled = time.time_ns() - identity[1] > SETTLED_NS
        self._record_id = identity if settled else None
        record = _read(path)
        if record is None or record["token"] == self._token:
            return
        try:
            recorded = _recorded(record)
        except InputError as exc:  # written by a server of another version: keep ours
            log.error("trace settings of %s not applied: %s", path, exc)
            return
        with self._lock:
            self._token = record["token"]
            self._apply(*recorded)

    def _as_set(self, slot: str, settings: dict[str, Any]) -> dict[str, Any]:
        """`settings` as recorded: the count as its change set it, not what is left here."""
        stored = {key: list(value) if key == "trace_level" else value
                  for key, value in settings.items()}
        if slot in self._counts and "trace_count" in stored:
            stored["trace_count"] = self._counts[slot][1]
        return stored

    def _apply(self, global_: dict[str, Any], models: dict[str, dict[str, Any]],
               counts: dict[str, tuple[str, int]]) -> None:
        """A record's settings, keeping what is left here of each count it did not set anew
        (a change of another setting on another front end is no new count here)."""
        for slot, settings in [("", global_), *models.items()]:
            mine = self.global_ if slot == "" else self.models.get(slot, {})
            if slot in counts and counts[slot][0] == self._counts.get(slot, ("",))[0] \
                    and "trace_count" in mine:
                settings["trace_count"] = mine["trace_count"]
        self._counts = counts
        self.global_, self.models = global_, models
        self._seen.clear()


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None  # none yet
    return stat.st_ino, stat.st_mtime_ns  # replaced whole (a rename): a new inode


def _read(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # being replaced: read again at the next change
    if not isinstance(value, dict) or not isinstance(value.get("token"), str):
        return None
    return value


def _recorded(record: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]],
                                                dict[str, tuple[str, int]]]:
    """The global settings, the models' own and the counts set (with the change that set
    each) of a record, checked as a change is."""
    models = record.get("models")
    if not isinstance(record.get("global"), dict) or not isinstance(models, dict):
        raise InputError("its settings are no JSON objects")
    global_ = check_changes(record["global"])
    if set(global_) != set(KEYS) or None in global_.values():
        raise InputError(f"its global settings are incomplete: {shown(record['global'])}")
    models = {str(name): _recorded_own(name, own) for name, own in models.items()}
    return global_, models, _recorded_counts(record, global_, models)


def _recorded_counts(record: dict[str, Any], global_: dict[str, Any],
                     models: dict[str, dict[str, Any]]) -> dict[str, tuple[str, int]]:
    counts = record.get("counts", {})
    if not isinstance(counts, dict):
        raise InputError(f"its counts are no JSON object: {shown(counts)}")
    checked = {}
    for slot, set_by in counts.items():
        settings = global_ if slot == "" else models.get(slot, {})
        if not isinstance(set_by, str) or "trace_count" not in settings:
            raise InputError(f"its count of {shown(slot or 'every model')} is none of its "
                             "settings")
        checked[slot] = (set_by, settings["trace_count"])
    return checked


def _recorded_own(model: str, own: Any) -> dict[str, Any]:
    """A model's own settings in a record: set values only (a null is never recorded: it
    would reach the sampling as a rate or a count of None)."""
    if not isinstance(own, dict):
        raise InputError(f"the settings of model {shown(model)} are no JSON object")
    checked = check_changes(own)
    if None in checked.values():
        raise InputError(f"the settings of model {shown(model)} hold a null: {shown(own)}")
    return checked


# -- the answers ----------------------------------------------------------------------------
def settings_of(request_log: Any) -> TraceSettings:
    """The trace settings of the server whose request log (RequestLog) is `request_log`."""
    tracer = getattr(request_log, "tracer", None)
    settings = getattr(tracer, "settings", None)
    return settings if isinstance(settings, TraceSettings) else _UNTRACED


_UNTRACED = TraceSettings(traced=False)  # of every server without --tracing: never changed


def new_settings() -> TraceSettings:
    """A traced server's settings, shared with the other front ends when there are some."""
    return TraceSettings(traced=True, directory=os.environ.get(CONTROL_DIR_ENV))


def is_route(rest: list[str]) -> bool:
    """Whether a V2 path (its segments after `v2`) is a trace setting route."""
    return rest == ROUTE or (len(rest) == 4 and rest[0] == "models" and rest[2:] == ROUTE)


def checked_model(engine: InferenceEngine, name: str) -> str:
    """`name`, a model of the repository (loaded or not); NotFoundError otherwise."""
    name = check_name(name)
    if name not in {entry["name"] for entry in engine.index()}:
        raise NotFoundError(f"model {name!r} is not in the repository")
    return name


def http_answer(settings: TraceSettings, model: str | None, method: str, body: bytes) -> bytes:
    """The answer to `GET` or `POST /v2[/models/NAME]/trace/setting`: the settings in force
    after the change, as JSON."""
    if method == "POST":
        return json.dumps(settings.update(model, control_body(body))).encode()
    return json.dumps(settings.current(model)).encode()


def grpc_answer(settings: TraceSettings, engine: InferenceEngine,
                request: pb.TraceSettingRequest) -> pb.TraceSettingResponse:
    """The answer to a `TraceSetting` call: with settings a change, without them a read."""
    model = checked_model(engine, request.model_name) if request.model_name else None
    if request.settings:
        current = settings.update(model, {key: list(value.value) or None
                                          for key, value in request.settings.items()})
    else:
        current = settings.current(model)
    response = pb.TraceSettingResponse()
    for key, value in current.items():
        response.settings[key].value.extend(value if isinstance(value, list) else [value])
    return response


__all__ = ["TRACE_EXTENSION", "TraceSettings", "check_changes", "checked_model",
           "grpc_answer", "http_answer", "is_route", "new_settings", "settings_of"]
