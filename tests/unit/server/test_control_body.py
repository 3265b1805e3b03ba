"""The control routes' JSON body reader (index, load, unload, logging, trace settings)."""

import pytest

from surge.errors import InputError
from surge.server.repository_load import control_body


def test_a_deeply_nested_body_is_a_bad_request_not_a_crash() -> None:
    # orjson reads up to 1,024 levels; the second reading (for keys given twice) ran out of
    # Python's frames first: a RecursionError, answered 500
    body = b'{"trace_level": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    with pytest.raises(InputError, match="nests its arrays and objects too deeply"):
        control_body(body)


def test_a_key_given_twice_and_a_body_that_is_no_object_are_named() -> None:
    with pytest.raises(InputError, match="request body"):
        control_body(b'{"a": 1, "a": 2}')
    with pytest.raises(InputError, match="must be a JSON object, got an array"):
        control_body(b"[1]")
    assert control_body(b"  ") == {}
