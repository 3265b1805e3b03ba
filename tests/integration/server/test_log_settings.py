"""Triton's logging extension: `GET/POST /v2/logging` and gRPC `LogSettings` read and change
the server's log on both gRPC stacks, behind the API key like repository control, on every
front end with `--frontends N`, and tritonclient's get/update_log_settings work unmodified."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from tests.integration.server.conftest import ServerProcess, start_server, triton_client
from tests.integration.server.models import make_repository

from surge.errors import InputError
from surge.protocol.grpc_gen import grpc_service_pb2 as pb
from surge.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc
from surge.server import log_settings
from surge.server.log_settings import LogSettings, check_settings

pytestmark = pytest.mark.timeout(240)

READ_KEY, ADMIN_KEY = "log-reader", "log-admin"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
DEFAULTS = {"log_file": "", "log_info": True, "log_warning": True, "log_error": True,
            "log_verbose_level": 0, "log_format": "default"}
ISO_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ")


# -- the settings and Python logging, in this process ------------------------------------------
@pytest.mark.parametrize(("changes", "named"), [
    ({"log_file": "/tmp/server.log"}, "'log_file' '/tmp/server.log' cannot be honoured"),
    ({"log_info": 1}, "'log_info' must be true or false, got 1"),
    ({"log_error": "yes"}, "'log_error' must be true or false"),
    ({"log_verbose_level": -1}, "'log_verbose_level' must be an integer from 0 to 4294967295"),
    ({"log_verbose_level": 2**32}, "'log_verbose_level' must be an integer"),
    ({"log_verbose_level": True}, "'log_verbose_level' must be an integer"),
    ({"log_format": "json"}, "'log_format' must be one of default, ISO8601, got 'json'"),
    ({"log_level": "debug"}, "unknown log setting 'log_level'"),
])
def test_a_bad_setting_is_refused_naming_it(changes: dict[str, Any], named: str) -> None:
    with pytest.raises(InputError, match=re.escape(named)):
        check_settings(changes)


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The root logger writing to a buffer at INFO (as `--log-level info`), restored after."""
    root, surge = logging.getLogger(), logging.getLogger("surge")
    saved = root.handlers[:], root.level, surge.level
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    surge.setLevel(logging.NOTSET)
    try:
        yield buffer
    finally:
        root.handlers[:], _, _ = saved
        root.setLevel(saved[1])
        surge.setLevel(saved[2])


def _lines(buffer: io.StringIO) -> list[str]:
    return buffer.getvalue().splitlines()


def test_the_settings_start_from_the_log_level(captured: io.StringIO) -> None:
    assert LogSettings().current() == DEFAULTS


def test_severities_switch_on_and_off_each(captured: io.StringIO) -> None:
    LogSettings().update({"log_warning": False})
    logger = logging.getLogger("surge.test_log_settings")
    logger.info("an info line")
    logger.warning("a warning line")
    logger.error("an error line")
    text = captured.getvalue()
    assert "an info line" in text
    assert "an error line" in text
    assert "a warning line" not in text


def test_verbose_writes_surges_debug_lines(captured: io.StringIO) -> None:
    settings = LogSettings()
    settings.update({"log_verbose_level": 1})
    logging.getLogger("surge.test_log_settings").debug("surge debug one")
    logging.getLogger("another.library").debug("library debug")
    settings.update({"log_verbose_level": 0})
    logging.getLogger("surge.test_log_settings").debug("surge debug two")
    text = captured.getvalue()
    assert "surge debug one" in text
    assert "library debug" not in text
    assert "surge debug two" not in text


def test_iso8601_format_and_back(captured: io.StringIO) -> None:
    settings = LogSettings()
    settings.update({"log_format": "ISO8601"})
    logging.getLogger("surge.test_log_settings").info("iso line")
    settings.update({"log_format": "default", "log_info": None})  # null: left as it is
    logging.getLogger("surge.test_log_settings").info("default line")
    iso, default = (next(line for line in _lines(captured) if text in line)
                    for text in ("iso line", "default line"))
    assert ISO_LINE.match(iso)
    assert not ISO_LINE.match(default)
    assert settings.current() == DEFAULTS


def test_a_change_is_recorded_for_the_other_processes(captured: io.StringIO,
                                                      tmp_path: Path) -> None:
    here = LogSettings(tmp_path, pid=os.getpid())
    other = LogSettings(tmp_path, pid=os.getppid())  # a live process of its own
    other.note()
    token = here.update({"log_verbose_level": 3})
    assert token is not None
    assert here._behind(token) == [os.getppid()]  # the change waits for it
    assert other.current()["log_verbose_level"] == 3  # which follows and notes so
    assert here._behind(token) == []
    asyncio.run(here.followed(token))
    # A process started later (a front end restarted after a crash) applies the record too.
    assert LogSettings(tmp_path, pid=os.getppid()).current()["log_verbose_level"] == 3


def test_a_change_is_answered_once_the_others_follow(captured: io.StringIO, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    here = LogSettings(tmp_path, pid=os.getpid())
    other = LogSettings(tmp_path, pid=os.getppid())
    other.note()
    monkeypatch.setattr(log_settings, "_process", here)  # this process's settings

    async def main() -> dict[str, Any]:
        answer = asyncio.create_task(log_settings.changed({"log_verbose_level": 2}))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not answer.done()  # the other process has not applied it yet
        other.follow()
        return await answer

    assert asyncio.run(main())["log_verbose_level"] == 2


# -- a served model: both protocols, both gRPC stacks, keys -----------------------------------
@pytest.fixture(scope="module", params=["surge", "grpcio"])
def served(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Two front ends behind a read key and an admin key, with each gRPC stack."""
    root = tmp_path_factory.mktemp("logging")
    keys = root / "keys.txt"
    keys.write_text(f"{READ_KEY} read\n{ADMIN_KEY} admin\n")
    proc = start_server(make_repository(root / "repo", with_slow=False), root / "server.log",
                        "--frontends", "2", "--api-keys-file", str(keys),
                        "--grpc-server", request.param)
    yield proc
    assert proc.stop() == 0, proc.output()[-3000:]


@pytest.fixture
def logging_url(served: ServerProcess) -> Iterator[str]:
    """/v2/logging, set back to the defaults after the test (a change waits for every process
    to follow it, so only where the test left another)."""
    url = f"{served.http}/v2/logging"
    yield url
    if httpx.get(url, headers=ADMIN, timeout=30).json() != DEFAULTS:
        assert httpx.post(url, json=DEFAULTS, headers=ADMIN, timeout=30).status_code == 200


def _stub(served: ServerProcess) -> Any:
    return pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(served.grpc))


def _metadata(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def test_logging_is_a_listed_extension(served: ServerProcess) -> None:
    assert "logging" in httpx.get(f"{served.http}/v2", headers=ADMIN, timeout=30).json()[
        "extensions"]
    answer = _stub(served).ServerMetadata(pb.ServerMetadataRequest(),
                                          metadata=_metadata(READ_KEY), timeout=30)
    assert "logging" in answer.extensions


def test_http_reads_and_changes_the_settings(logging_url: str) -> None:
    assert httpx.get(logging_url, headers=ADMIN, timeout=30).json() == DEFAULTS
    changed = httpx.post(logging_url, json={"log_verbose_level": 1, "log_format": "ISO8601"},
                         headers=ADMIN, timeout=30)
    assert changed.status_code == 200
    expected = {**DEFAULTS, "log_verbose_level": 1, "log_format": "ISO8601"}
    assert changed.json() == expected
    assert httpx.get(logging_url, headers=ADMIN, timeout=30).json() == expected


@pytest.mark.parametrize(("body", "named"), [
    (b'{"log_error": false, "log_file": "/var/log/x"}', "log_file"),  # nothing else changes
    (b'{"log_warning": "off"}', "log_warning"),
    (b'{"verbose": 1}', "unknown log setting 'verbose'"),
    (b"[]", "JSON object"),
    (b"{", "not valid JSON"),
    (b"", "needs a JSON object"),
    (b'{"log_info": false, "log_info": true}', "given twice"),
])
def test_a_bad_change_is_a_400_naming_it_and_changes_nothing(
        logging_url: str, body: bytes, named: str) -> None:
    answer = httpx.post(logging_url, content=body, headers=ADMIN, timeout=30)
    assert answer.status_code == 400
    assert named in answer.json()["error"]
    assert httpx.get(logging_url, headers=ADMIN, timeout=30).json() == DEFAULTS


def test_another_method_is_a_405_naming_the_allowed_ones(logging_url: str) -> None:
    answer = httpx.put(logging_url, json={"log_info": False}, headers=ADMIN, timeout=30)
    assert answer.status_code == 405
    assert answer.headers["allow"] == "GET, HEAD, POST"


def test_changing_needs_an_admin_key(logging_url: str) -> None:
    read = {"Authorization": f"Bearer {READ_KEY}"}
    assert httpx.get(logging_url, timeout=30).status_code == 401
    assert httpx.get(logging_url, headers=read, timeout=30).status_code == 200
    refused = httpx.post(logging_url, json={"log_info": False}, headers=read, timeout=30)
    assert refused.status_code == 403
    assert "needs 'admin'" in refused.json()["error"]
    assert httpx.get(logging_url, headers=read, timeout=30).json() == DEFAULTS


def _values(response: Any) -> dict[str, Any]:
    return {key: getattr(value, value.WhichOneof("parameter_choice"))
            for key, value in response.settings.items()}


def test_grpc_reads_and_changes_the_settings(served: ServerProcess, logging_url: str) -> None:
    stub = _stub(served)
    read = stub.LogSettings(pb.LogSettingsRequest(), metadata=_metadata(READ_KEY), timeout=30)
    assert _values(read) == DEFAULTS
    assert read.settings["log_verbose_level"].WhichOneof("parameter_choice") == "uint32_param"
    request = pb.LogSettingsRequest()
    request.settings["log_info"].bool_param = False
    request.settings["log_format"]  # an unset value: left as it is
    changed = stub.LogSettings(request, metadata=_metadata(ADMIN_KEY), timeout=30)
    assert _values(changed) == {**DEFAULTS, "log_info": False}
    assert httpx.get(logging_url, headers=ADMIN, timeout=30).json()["log_info"] is False


@pytest.mark.parametrize(("key", "code", "named"), [
    (ADMIN_KEY, grpc.StatusCode.INVALID_ARGUMENT, "'log_info' must be true or false"),
    (READ_KEY, grpc.StatusCode.PERMISSION_DENIED, "needs 'admin'"),
])
def test_grpc_refuses_a_wrong_type_or_a_read_key(served: ServerProcess, logging_url: str,
                                                 key: str, code: grpc.StatusCode,
                                                 named: str) -> None:
    request = pb.LogSettingsRequest()
    request.settings["log_info"].string_param = "no"
    with pytest.raises(grpc.RpcError) as raised:
        _stub(served).LogSettings(request, metadata=_metadata(key), timeout=30)
    assert raised.value.code() == code
    assert named in raised.value.details()
    assert httpx.get(logging_url, headers=ADMIN, timeout=30).json() == DEFAULTS


CLIENT = """
import json, sys
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
http_url, grpc_url, key = sys.argv[1:4]
headers = {"authorization": "Bearer " + key}
http = httpclient.InferenceServerClient(http_url)
grpc = grpcclient.InferenceServerClient(grpc_url)
out = {"http_get": http.get_log_settings(headers=headers),
       "http_update": http.update_log_settings({"log_verbose_level": 2}, headers=headers),
       "grpc_update": grpc.update_log_settings({"log_warning": False, "log_format": None},
                                               headers=headers, as_json=True),
       "grpc_get": grpc.get_log_settings(headers=headers, as_json=True)}
print(json.dumps(out))
"""


def test_tritonclient_reads_and_updates_the_settings(served: ServerProcess,
                                                     logging_url: str) -> None:
    result = triton_client("-c", CLIENT, served.http.removeprefix("http://"), served.grpc,
                           ADMIN_KEY)
    assert result.returncode == 0, result.stderr[-3000:] + served.output()[-2000:]
    out = json.loads(result.stdout)
    assert out["http_get"] == DEFAULTS
    assert out["http_update"] == {**DEFAULTS, "log_verbose_level": 2}
    grpc_settings = {key: next(iter(value.values()))
                     for key, value in out["grpc_get"]["settings"].items()}
    assert grpc_settings == {**DEFAULTS, "log_verbose_level": 2, "log_warning": False}
    assert out["grpc_update"] == out["grpc_get"]


def test_a_change_reaches_every_front_end_and_the_supervisor(tmp_path: Path) -> None:
    served = start_server(make_repository(tmp_path / "repo", with_slow=False),
                          tmp_path / "server.log", "--frontends", "2")
    try:
        # Answered once every front end and the supervisor apply it: no wait needed after.
        answer = httpx.post(f"{served.http}/v2/logging", json={"log_format": "ISO8601"},
                            timeout=30)
        assert answer.status_code == 200
    finally:
        assert served.stop() == 0, served.output()[-3000:]
    stopping = [line for line in served.output().splitlines()
                if "draining: finishing" in line or "stopping 2 front ends" in line]
    assert len(stopping) == 3, stopping  # each front end's drain and the supervisor's stop
    assert all(ISO_LINE.match(line) for line in stopping), stopping
