"""The served OpenAPI description, and schemathesis against it: no 5xx, no response that
breaks the schema. CI runs a few examples per operation, the same ones every run (derandomized:
a failure there is reproducible); SURGE_FUZZ_EXAMPLES=N runs N fresh random ones."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from tests.integration.production.conftest import Served, launch
from tests.integration.server.models import make_repository

from surge.server.openapi import openapi_document

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is a dev extra")
from schemathesis import checks  # noqa: E402

KEY = "fuzz-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
EXAMPLES = int(os.environ.get("SURGE_FUZZ_EXAMPLES", "15"))
FRESH_EXAMPLES = "SURGE_FUZZ_EXAMPLES" in os.environ
SCHEMA = schemathesis.openapi.from_dict(openapi_document())


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("fuzz")
    served = launch(make_repository(root / "repo", with_slow=False), root / "server.log",
                    "--api-key", KEY, "--max-body-mb", "1")
    yield served
    assert served.stop() == 0, served.output()


def test_description_is_served_and_covers_the_routes(fuzzed: Served) -> None:
    answer = httpx.get(f"{fuzzed.http}/v2/openapi.json", headers=AUTH)
    assert answer.status_code == 200
    document = answer.json()
    assert document == openapi_document()
    assert {"/v2/models/{model}/infer", "/v2/repository/models/{model}/load",
            "/v2/health/ready", "/v2/models/{model}/versions/{version}/stats",
            "/v2/logging"} <= set(
        document["paths"])


# One pytest test per operation, with its own id: schemathesis's own parametrize gave every
# operation the same node id, and pytest-xdist then ran only one of them.
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]


@pytest.mark.parametrize("operation", OPERATIONS, ids=[op.label for op in OPERATIONS])
def test_fuzzed_requests_get_no_5xx_and_match_the_schema(operation: Any, fuzzed: Served) -> None:
    @given(case=operation.as_strategy())
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=not FRESH_EXAMPLES,
              suppress_health_check=list(HealthCheck))
    def call(case: Any) -> None:
        case.call_and_validate(
            base_url=fuzzed.http, headers=AUTH, timeout=30,
            checks=[checks.not_a_server_error, checks.status_code_conformance,
                    checks.content_type_conformance, checks.response_schema_conformance],
        )

    call()


def test_every_operation_is_fuzzed_under_its_own_id() -> None:
    assert len({op.label for op in OPERATIONS}) == len(OPERATIONS) >= 30
