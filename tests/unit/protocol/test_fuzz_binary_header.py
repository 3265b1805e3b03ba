"""Hypothesis fuzzing of `Inference-Header-Content-Length` and the split of a binary body into its
JSON header and tensors: a valid split decodes exactly, anything else is an InputError."""

from __future__ import annotations

import contextlib
import json

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from surge.errors import InputError
from surge.protocol.rest import decode_request, parse_header_length

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

header_values = (st.text(max_size=30)
                 | st.integers(-10, 10**30).map(str)
                 | st.text("0123456789\u00b2\u0663\uff11 +-_", max_size=40))


@FUZZ
@given(header_values, st.integers(0, 10**6))
def test_header_length_is_an_ascii_integer_within_the_body(value: str, body_size: int) -> None:
    try:
        length = parse_header_length(value, body_size)
    except InputError as exc:
        message = str(exc)
    else:
        assert value.isascii()
        assert value.isdigit()
        assert length == int(value)
        assert length <= body_size
        return
    assert len(message) < 400


def _binary_body(arrays: list[np.ndarray]) -> tuple[bytes, int]:
    header = json.dumps({"inputs": [
        {"name": f"t{i}", "datatype": "FP32", "shape": list(a.shape),
         "parameters": {"binary_data_size": a.nbytes}} for i, a in enumerate(arrays)]}).encode()
    return header + b"".join(a.tobytes() for a in arrays), len(header)


tensors = st.lists(st.lists(st.floats(-1e6, 1e6, width=32), min_size=0, max_size=6)
                   .map(lambda v: np.asarray(v, np.float32).reshape(1, -1)), min_size=1, max_size=3)


@FUZZ
@given(tensors, st.integers(-40, 40))
def test_binary_body_split_at_the_header_length_or_refused(
    arrays: list[np.ndarray], shift: int
) -> None:
    body, header_length = _binary_body(arrays)
    length = min(max(header_length + shift, 0), len(body))
    try:
        request = decode_request(body, length)
    except InputError:
        assert length != header_length
        return
    assert length == header_length
    for i, array in enumerate(arrays):
        np.testing.assert_array_equal(request.inputs[f"t{i}"], array)


@FUZZ
@given(tensors, st.binary(max_size=64), st.integers(0, 200))
def test_mangled_binary_bodies_raise_only_input_errors(
    arrays: list[np.ndarray], noise: bytes, cut: int
) -> None:
    body, header_length = _binary_body(arrays)
    mangled = body[:cut] + noise + body[cut:]
    with contextlib.suppress(InputError):
        parse_header_length(str(header_length), len(mangled))
        decode_request(mangled, header_length)
