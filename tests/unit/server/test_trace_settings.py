"""The trace extension's settings (surge/server/trace_settings.py): checking a change, sampling
by level, rate and count, a model's own settings over the global ones, a server without an
exporter, the record the front ends share, and the spans the tracer makes by them."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from surge.errors import InputError, NotFoundError
from surge.protocol.grpc_gen import grpc_service_pb2 as pb
from surge.server import trace_settings
from surge.server.trace_settings import (
    MAX_COUNTED,
    RECORD,
    TraceSettings,
    check_changes,
    grpc_answer,
    http_answer,
    is_route,
)

STARTED = {"trace_level": ["TIMESTAMPS"], "trace_rate": "1", "trace_count": "-1",
           "trace_mode": "opentelemetry"}


@pytest.mark.parametrize(("changes", "named"), [
    ({"trace_sample": "1"}, "unknown trace setting 'trace_sample'"),
    ({"trace_rate": "abc"}, "'trace_rate' must be an integer from 1 to 4294967295"),
    ({"trace_rate": "0"}, "'trace_rate' must be an integer from 1"),
    ({"trace_rate": 0}, "'trace_rate' must be an integer from 1"),
    ({"trace_rate": "1.5"}, "'trace_rate' must be an integer"),
    ({"trace_rate": True}, "'trace_rate' must be an integer"),
    ({"trace_rate": str(2**32)}, "'trace_rate' must be an integer"),
    ({"trace_rate": ["1", "2"]}, "'trace_rate' takes one value"),
    ({"trace_count": "-2"}, "'trace_count' must be -1 (no limit) or a number of traces"),
    ({"trace_count": "many"}, "'trace_count' must be -1"),
    ({"trace_level": ["LOUD"]}, "unknown trace level 'LOUD': use OFF or TIMESTAMPS"),
    ({"trace_level": ["TENSORS"]}, "'TENSORS' is not supported"),
    ({"trace_level": ["TIMESTAMPS", "TENSORS"]}, "'TENSORS' is not supported"),
    ({"trace_level": ["OFF", "TIMESTAMPS"]}, "OFF cannot be given with another level"),
    ({"trace_level": []}, "'trace_level' must be a list of levels"),
    ({"trace_level": 1}, "'trace_level' must be a list of levels"),
    ({"trace_file": "/tmp/trace.json"}, "'trace_file' cannot be honoured"),
    ({"log_frequency": "50"}, "'log_frequency' cannot be honoured"),
    ({"trace_mode": "triton"}, "trace mode 'triton' is not served"),
])
def test_a_bad_setting_is_refused_naming_it(changes: dict[str, Any], named: str) -> None:
    with pytest.raises(InputError, match=re.escape(named)):
        check_changes(changes)


@pytest.mark.parametrize(("changes", "checked"), [
    ({"trace_rate": "2"}, {"trace_rate": 2}),
    ({"trace_rate": 2}, {"trace_rate": 2}),
    ({"trace_rate": ["7"]}, {"trace_rate": 7}),  # as gRPC sends it
    ({"trace_count": "-1"}, {"trace_count": -1}),
    ({"trace_count": "0"}, {"trace_count": 0}),
    ({"trace_level": "TIMESTAMPS"}, {"trace_level": ("TIMESTAMPS",)}),
    ({"trace_level": ["TIMESTAMPS", "TIMESTAMPS"]}, {"trace_level": ("TIMESTAMPS",)}),
    ({"trace_level": ["OFF"]}, {"trace_level": ("OFF",)}),
    ({"trace_level": None, "trace_rate": None}, {"trace_level": None, "trace_rate": None}),
    ({"trace_mode": "opentelemetry", "trace_file": None, "log_frequency": None}, {}),
])
def test_accepted_values(changes: dict[str, Any], checked: dict[str, Any]) -> None:
    assert check_changes(changes) == checked


def test_a_traced_server_starts_tracing_every_request() -> None:
    settings = TraceSettings(traced=True)
    assert settings.current() == STARTED
    assert settings.current("tiny") == STARTED
    assert all(settings.sample("tiny") for _ in range(5))


def _sampled(settings: TraceSettings, model: str, requests: int) -> list[bool]:
    return [settings.sample(model) for _ in range(requests)]


def test_rate_traces_every_nth_request_of_a_model() -> None:
    settings = TraceSettings(traced=True)
    assert settings.update(None, {"trace_rate": "2"})["trace_rate"] == "2"
    assert _sampled(settings, "tiny", 6) == [False, True] * 3
    # each model counts its own requests
    assert [settings.sample(m) for m in ("a", "b", "a", "b")] == [False, False, True, True]


def test_a_change_starts_the_rates_counting_afresh() -> None:
    settings = TraceSettings(traced=True)
    settings.update(None, {"trace_rate": "2"})
    assert _sampled(settings, "tiny", 3) == [False, True, False]
    settings.update("other", {"trace_count": "5"})
    assert _sampled(settings, "tiny", 2) == [False, True]


def test_count_stops_after_that_many_traces_and_counts_down() -> None:
    settings = TraceSettings(traced=True)
    settings.update(None, {"trace_count": "3"})
    assert _sampled(settings, "tiny", 2) == [True, True]
    assert settings.current()["trace_count"] == "1"
    assert _sampled(settings, "tiny", 3) == [True, False, False]
    assert settings.current()["trace_count"] == "0"
    settings.update(None, {"trace_rate": "1"})  # another change leaves the count where it is
    assert not settings.sample("tiny")


def test_count_with_a_rate_counts_traces_not_requests() -> None:
    settings = TraceSettings(traced=True)
    settings.update(None, {"trace_rate": "2", "trace_count": "2"})
    assert _sampled(settings, "tiny", 6) == [False, True, False, True, False, False]


def test_off_stops_the_spans_and_timestamps_brings_them_back() -> None:
    settings = TraceSettings(traced=True)
    assert settings.update(None, {"trace_level": ["OFF"]})["trace_level"] == ["OFF"]
    assert _sampled(settings, "tiny", 3) == [False] * 3
    settings.update(None, {"trace_level": ["TIMESTAMPS"]})
    assert settings.sample("tiny")


def test_a_models_own_settings_override_the_global_ones_and_null_clears_them() -> None:
    settings = TraceSettings(traced=True)
    own = settings.update("slow", {"trace_rate": "3", "trace_count": "5"})
    assert own == {**STARTED, "trace_rate": "3", "trace_count": "5"}
    assert settings.current() == STARTED  # the global ones are untouched
    settings.update(None, {"trace_level": ["OFF"]})
    assert settings.current("slow")["trace_level"] == ["OFF"]  # not its own: the global one
    assert not settings.sample("slow")
    settings.update("slow", {"trace_level": ["TIMESTAMPS"]})
    assert _sampled(settings, "slow", 3) == [False, False, True]
    assert not settings.sample("tiny")
    assert settings.current("slow")["trace_count"] == "4"  # its own count counts down
    assert settings.current()["trace_count"] == "-1"
    cleared = settings.update("slow", {"trace_level": None, "trace_rate": None,
                                       "trace_count": None})
    assert cleared == {**STARTED, "trace_level": ["OFF"]}
    assert settings.models == {}


def test_a_global_null_puts_back_what_the_server_started_with() -> None:
    settings = TraceSettings(traced=True)
    settings.update(None, {"trace_rate": "10", "trace_level": ["OFF"], "trace_count": "2"})
    assert settings.update(None, {"trace_rate": None, "trace_level": None,
                                  "trace_count": None}) == STARTED


def test_a_bad_change_changes_nothing() -> None:
    settings = TraceSettings(traced=True)
    with pytest.raises(InputError, match="trace_count"):
        settings.update("tiny", {"trace_rate": "2", "trace_count": "-5"})
    assert settings.current("tiny") == STARTED
    assert settings.models == {}


def test_without_an_exporter_the_level_is_off_and_a_change_is_refused() -> None:
    settings = TraceSettings(traced=False)
    assert settings.current()["trace_level"] == ["OFF"]
    assert not settings.sample("tiny")
    for changes in ({"trace_level": ["TIMESTAMPS"]}, {"trace_rate": "2"},
                    {"trace_level": ["OFF"]}):
        with pytest.raises(InputError, match=r"'trace_\w+' cannot be changed: the server was "
                                             r"started without --tracing"):
            settings.update(None, changes)
    assert settings.update("tiny", {"trace_rate": None}) == {**STARTED, "trace_level": ["OFF"]}
    assert settings.models == {}


def test_requests_of_ever_new_models_do_not_grow_the_counts_without_end() -> None:
    settings = TraceSettings(traced=True)
    settings.update(None, {"trace_rate": "2"})
    for index in range(MAX_COUNTED + 10):
        settings.sample(f"m{index}")
    assert len(settings._seen) <= MAX_COUNTED


# -- several front ends ---------------------------------------------------------------------
def test_a_change_reaches_the_other_front_ends(tmp_path: Path) -> None:
    one, other = TraceSettings(True, tmp_path), TraceSettings(True, tmp_path)
    one.update(None, {"trace_level": ["OFF"]})
    assert other.current()["trace_level"] == ["OFF"]
    assert not other.sample("tiny")  # applied before sampling, with no read of it first
    other.update("tiny", {"trace_level": ["TIMESTAMPS"], "trace_rate": "2"})
    assert one.current("tiny")["trace_rate"] == "2"
    assert one.current()["trace_level"] == ["OFF"]  # based on the change before it
    assert _sampled(one, "tiny", 2) == [False, True]


def test_changes_made_one_right_after_the_other_all_reach_the_others(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A record replaced within the file system's time stamp granularity can come back with
    the inode and mtime of the one before (made so here): each change still reaches the other
    front end."""
    written = time.time_ns()
    monkeypatch.setattr(trace_settings, "_identity", lambda path: (7, written))
    # young throughout, however slowly a loaded machine runs the loop
    monkeypatch.setattr(trace_settings, "SETTLED_NS", 600 * 10**9)
    one, other = TraceSettings(True, tmp_path), TraceSettings(True, tmp_path)
    for rate in range(2, 40):
        one.update(None, {"trace_rate": str(rate)})
        assert other.current()["trace_rate"] == str(rate)


def test_a_record_of_another_kind_is_not_applied(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    settings = TraceSettings(True, tmp_path)
    (tmp_path / RECORD).write_text(json.dumps({"token": "x", "global": {"trace_rate": "0"},
                                               "models": {}}))
    assert settings.current() == STARTED
    assert re.search(r"trace settings of \S+ not applied: trace setting .trace_rate. must",
                     caplog.text)


# -- the answers ----------------------------------------------------------------------------
class _Engine:
    def index(self) -> list[dict[str, Any]]:
        return [{"name": "tiny", "version": "1", "state": "READY"}]


def test_routes() -> None:
    assert is_route(["trace", "setting"])
    assert is_route(["models", "tiny", "trace", "setting"])
    assert not is_route(["models", "tiny", "trace"])
    assert not is_route(["trace"])


def test_http_answers_the_settings_after_the_change() -> None:
    settings = TraceSettings(traced=True)
    answer = http_answer(settings, "tiny", "POST", b'{"trace_rate": "4"}')
    assert json.loads(answer) == {**STARTED, "trace_rate": "4"}
    assert json.loads(http_answer(settings, None, "GET", b"")) == STARTED
    assert json.loads(http_answer(settings, None, "POST", b"")) == STARTED


def test_grpc_reads_changes_and_clears() -> None:
    settings = TraceSettings(traced=True)
    request = pb.TraceSettingRequest(model_name="tiny")
    request.settings["trace_rate"].value.append("5")
    request.settings["trace_level"].value.extend(["TIMESTAMPS"])
    answer = grpc_answer(settings, _Engine(), request)  # type: ignore[arg-type]
    assert {k: list(v.value) for k, v in answer.settings.items()} == {
        "trace_level": ["TIMESTAMPS"], "trace_rate": ["5"], "trace_count": ["-1"],
        "trace_mode": ["opentelemetry"]}
    clear = pb.TraceSettingRequest(model_name="tiny")
    clear.settings["trace_rate"]  # no values: cleared
    cleared = grpc_answer(settings, _Engine(), clear)  # type: ignore[arg-type]
    assert list(cleared.settings["trace_rate"].value) == ["1"]
    unknown = pb.TraceSettingRequest(model_name="nope")
    with pytest.raises(NotFoundError, match="model 'nope' is not in the repository"):
        grpc_answer(settings, _Engine(), unknown)  # type: ignore[arg-type]


def test_a_server_without_a_tracer_answers_the_untraced_settings() -> None:
    class _Log:
        tracer = None

    assert trace_settings.settings_of(_Log()).current()["trace_level"] == ["OFF"]


# -- the spans made by them -----------------------------------------------------------------
def test_the_tracer_makes_spans_for_the_sampled_requests_only() -> None:
    pytest.importorskip("opentelemetry.sdk", reason="tracing is an optional extra")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from surge.server.observe import RequestRecord
    from surge.server.tracing import Tracer

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = Tracer(provider)
    tracer.settings.update(None, {"trace_rate": "2"})
    for index in range(4):
        record = RequestRecord("http", f"r{index}", "", "tiny", None)
        record.finished = record.started
        tracer.record(record)
    roots = [(s.attributes or {}).get("surge.request_id")
             for s in exporter.get_finished_spans() if s.name == "surge.infer"]
    assert roots == ["r1", "r3"]


@pytest.mark.parametrize("value", ["--5", "--1", "-+1", "1-", "1_0", "١", "+1", "-", ""])
def test_a_malformed_integer_is_refused_naming_it(value: str) -> None:
    """"--5" got past a check of the digits after the minus signs, to int(): a 500."""
    for key in ("trace_rate", "trace_count"):
        with pytest.raises(InputError, match=f"'{key}' must be"):
            check_changes({key: value})
        with pytest.raises(InputError, match=f"'{key}' must be"):
            check_changes({key: [value]})  # as gRPC sends it


@pytest.mark.parametrize("models", [{"tiny": 5}, {"tiny": ["trace_rate"]},
                                    {"tiny": {"trace_rate": None}},
                                    {"tiny": {"trace_count": None}}])
def test_a_record_with_a_models_settings_malformed_is_not_applied(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, models: dict[str, Any]) -> None:
    """A damaged record: logged and left, never an exception on every read and request."""
    settings = TraceSettings(True, tmp_path)
    (tmp_path / RECORD).write_text(json.dumps({"token": "x", "models": models, "global": {
        "trace_level": ["OFF"], "trace_rate": "1", "trace_count": "-1"}}))
    assert settings.sample("tiny")
    assert settings.current("tiny") == STARTED
    assert re.search(r"trace settings of \S+ not applied: the settings of model 'tiny'",
                     caplog.text)


def _spans(settings: TraceSettings, model: str, requests: int) -> int:
    return _sampled(settings, model, requests).count(True)


@pytest.mark.parametrize("model", [None, "tiny"])
def test_a_change_of_another_setting_leaves_each_front_ends_count_left(
        tmp_path: Path, model: str | None) -> None:
    """Each front end counts its own spans down: a change of another setting on one front end
    (here another model's level) handed the other its count left (0: no more spans there)."""
    one, other = TraceSettings(True, tmp_path), TraceSettings(True, tmp_path)
    one.update(model, {"trace_count": "10"})
    assert _spans(one, "tiny", 12) == 10
    assert _spans(other, "tiny", 2) == 2
    one.update("slow", {"trace_level": ["OFF"]})
    assert other.current(model)["trace_count"] == "8"
    other.update(model, {"trace_rate": "1"})  # the same the other way round
    assert one.current(model)["trace_count"] == "0"
    assert _spans(other, "tiny", 10) == 8


def test_a_count_set_again_and_a_new_front_end_get_the_count_as_set(tmp_path: Path) -> None:
    one, other = TraceSettings(True, tmp_path), TraceSettings(True, tmp_path)
    one.update(None, {"trace_count": "5"})
    assert _spans(one, "tiny", 5) == _spans(other, "tiny", 5) == 5
    one.update(None, {"trace_count": "5"})  # the same value again: five more on each
    assert other.current()["trace_count"] == "5"
    assert _spans(other, "tiny", 9) == _spans(one, "tiny", 2) + 3 == 5
    one.update("tiny", {"trace_level": ["TIMESTAMPS"]})
    assert TraceSettings(True, tmp_path).current()["trace_count"] == "5"  # not one's 3 left


def test_requests_of_ever_new_models_leave_a_busy_models_rate_alone() -> None:
    """The table of counts used to be emptied when full: requests naming new (unknown) models
    between a model's requests started its count afresh, and its Nth request never came."""
    settings = TraceSettings(traced=True)
    settings.update(None, {"trace_rate": "3"})
    traced = []
    for index in range(4 * MAX_COUNTED):
        settings.sample(f"unknown{index}")
        if index % 100 == 0:
            traced.append(settings.sample("tiny"))
    assert traced.count(True) == len(traced) // 3
    assert len(settings._seen) <= MAX_COUNTED
