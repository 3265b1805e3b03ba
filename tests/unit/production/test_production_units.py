"""Keys and scopes, the access log, request ids, config overrides, load parameters and the
repository poller, without a server."""

from __future__ import annotations

import asyncio
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from surge.engine.reload import RepositoryPoller, override_config
from surge.errors import ConfigError, InputError, SurgeError
from surge.repository import ModelConfig, Repository
from surge.server.access_log import AccessLog, AccessLogConfig
from surge.server.keys import ApiKey, ForbiddenError, KeyRing, Scope, UnauthenticatedError, read_key_file
from surge.server.observe import RequestIds
from surge.server.repository_load import load_parameters


def test_keys_grant_their_scope() -> None:
    ring = KeyRing([ApiKey("r", Scope.READ), ApiKey("i", Scope.INFER), ApiKey("a")])
    assert ring.scope_of([b"Bearer r"]) is Scope.READ
    assert ring.scope_of([b"Bearer x", b"Bearer i"]) is Scope.INFER
    assert ring.scope_of([b"Bearer a"]) is Scope.ADMIN
    assert ring.scope_of([b"Bearer"]) is None
    ring.check([b"Bearer i"], Scope.INFER)
    with pytest.raises(ForbiddenError, match="has scope 'read'; the request needs 'admin'"):
        ring.check([b"Bearer r"], Scope.ADMIN)
    with pytest.raises(UnauthenticatedError):
        ring.check([], Scope.READ)
    KeyRing([]).check([], Scope.ADMIN)  # no keys: open
    assert "secret" not in repr(ApiKey("secret"))


def test_key_file(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("# comment\n\nk1 read\nk2 INFER\nk3\n")
    assert [(k.key, k.scope) for k in read_key_file(path)] == [
        ("k1", Scope.READ), ("k2", Scope.INFER), ("k3", Scope.ADMIN)]
    path.write_text("k1 read extra\n")
    with pytest.raises(SurgeError, match="keys:1: expected 'KEY"):
        read_key_file(path)
    path.write_text("# only comments\n")
    with pytest.raises(SurgeError, match="holds no key"):
        read_key_file(path)


class _Blocked:
    """A stream whose writes wait until released."""

    def __init__(self) -> None:
        self.release, self.lines = threading.Event(), list[bytes]()

    def write(self, data: bytes) -> None:
        self.release.wait(10)
        self.lines.append(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_access_log_samples_successes_and_drops_past_its_backlog(
        monkeypatch: pytest.MonkeyPatch) -> None:
    stream = _Blocked()
    monkeypatch.setattr(AccessLog, "_open", staticmethod(lambda path: stream))
    chances = iter([0.05, 0.5])
    log = AccessLog(AccessLogConfig("x", sample=0.1, max_backlog=2), chance=lambda: next(chances))
    assert log.wanted(failed=True)
    assert log.wanted(failed=False)  # 0.05 < 0.1
    assert not log.wanted(failed=False)  # 0.5
    for i in range(6):
        log.write({"n": i})
    assert log.dropped >= 3
    stream.release.set()
    log.close()
    assert log.written + log.dropped == 6
    assert b"".join(stream.lines).startswith(b'{"n":0}\n')


def test_request_ids() -> None:
    ids = RequestIds()
    assert ids.accept(b"order-42") == "order-42"
    made = {ids.accept(None), ids.accept(b"has space"), ids.accept(b"x" * 129),
            ids.accept(b"new\nline")}
    assert len(made) == 4
    assert all("-" in i and " " not in i for i in made)


def test_config_override() -> None:
    base = ModelConfig.model_validate({"instances": 1, "max_batch_size": 8})
    merged = override_config(base, {"instances": 2, "queue": {"max_size": 4}})
    assert (merged.instances, merged.queue.max_size, merged.max_batch_size) == (2, 4, 8)
    with pytest.raises(ConfigError, match="'max_batch_size' is read from config.yaml"):
        override_config(base, {"max_batch_size": 2})
    with pytest.raises(ConfigError, match="unknown key 'instanses'"):
        override_config(base, {"instanses": 2})
    with pytest.raises(ConfigError, match="config override: instances"):
        override_config(base, {"instances": 0})
    assert override_config(base, {"placement": "in-process"}).placement == "in-process"
    grouped = ModelConfig.model_validate({"worker": "shared"})
    with pytest.raises(ConfigError, match="a shared group runs local processes"):
        override_config(grouped, {"placement": "in-process"})
    # A rule across fields names no field: no empty place in the message (was "override: : ").
    with pytest.raises(ConfigError, match=r"^config override: Value error, worker: a shared"):
        override_config(grouped, {"placement": "cluster"})


@pytest.mark.parametrize(("body", "expected"), [
    ({}, None),
    ({"parameters": {}}, None),
    ({"parameters": {"config": '{"instances": 2}'}}, {"instances": 2}),
    ({"parameters": {"config": {"instances": 2}}}, {"instances": 2}),
])
def test_load_parameters(body: dict[str, Any], expected: object) -> None:
    assert load_parameters(body) == expected


@pytest.mark.parametrize(("body", "message"), [
    ({"parameters": {"file:1/model.onnx": "AAAA"}}, "sending model files is not supported"),
    ({"parameters": {"conf": "{}"}}, "unknown load parameter"),
    ({"parameters": {"config": "[1]"}}, "must be a JSON object"),
    ({"parameters": {"config": "{"}}, "not valid JSON"),
    ({"config": {}}, "unknown field 'config'"),
])
def test_bad_load_parameters(body: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message):
        load_parameters(body)


class _FakeEngine:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail = fail

    async def load(self, name: str) -> None:
        self.calls.append(("load", name))
        if self.fail:
            raise SurgeError("broken")

    async def unload(self, name: str) -> None:
        self.calls.append(("unload", name))

    async def files_changed(self, name: str) -> None:
        await self.load(name)


def _model(root: Path, name: str, version: int) -> None:
    (root / name / str(version)).mkdir(parents=True)
    (root / name / str(version) / "model.onnx").write_bytes(b"x" * version)


def test_poller_loads_settled_changes_once_and_unloads_removed_models(tmp_path: Path) -> None:
    _model(tmp_path, "a", 1)
    _model(tmp_path, "b", 1)
    engine = _FakeEngine()
    poller = RepositoryPoller(engine, Repository(tmp_path), 1.0)  # type: ignore[arg-type]
    poller.snapshot()
    assert asyncio.run(poller.poll()) == []
    _model(tmp_path, "a", 2)
    assert asyncio.run(poller.poll()) == []  # seen once: may still be copying
    assert asyncio.run(poller.poll()) == ["a"]  # unchanged for an interval: loaded
    assert asyncio.run(poller.poll()) == []
    shutil.rmtree(tmp_path / "b")
    assert asyncio.run(poller.poll()) == []  # removals settle too
    assert asyncio.run(poller.poll()) == ["b"]
    assert engine.calls == [("load", "a"), ("unload", "b")]


def test_poller_does_not_retry_a_broken_version_until_it_changes(tmp_path: Path) -> None:
    _model(tmp_path, "a", 1)
    engine = _FakeEngine(fail=True)
    poller = RepositoryPoller(engine, Repository(tmp_path), 1.0,  # type: ignore[arg-type]
                              models=("a",))
    poller.snapshot()
    _model(tmp_path, "a", 2)
    _model(tmp_path, "ignored", 1)  # not among the selected models
    for _ in range(4):
        asyncio.run(poller.poll())
    assert engine.calls == [("load", "a")]
    (tmp_path / "a" / "2" / "model.onnx").write_bytes(b"fixed, larger")
    for _ in range(2):
        asyncio.run(poller.poll())
    assert engine.calls == [("load", "a"), ("load", "a")]


@pytest.mark.parametrize("field", ["poll_interval_s", "keys_check_interval_s"])
def test_production_intervals_that_are_not_positive_numbers_are_refused(field: str) -> None:
    from surge.server.production import ProductionOptions

    with pytest.raises(ValueError, match=f"{field} must be positive, got nan"):
        ProductionOptions(**{field: float("nan")})  # type: ignore[arg-type]
