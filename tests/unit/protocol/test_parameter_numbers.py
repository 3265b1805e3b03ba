"""A `priority` or `timeout` out of range over HTTP JSON is refused naming the number as the
client wrote it (orjson reads an integer past 64 bits as a float)."""

from __future__ import annotations

import pytest

from surge.errors import InputError
from surge.protocol.rest import decode_request


def _body(parameter: str, value: str) -> bytes:
    return (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],'
            b' "parameters": {"' + parameter.encode() + b'": ' + value.encode() + b"}}")


@pytest.mark.parametrize("parameter", ["priority", "timeout"])
@pytest.mark.parametrize("value", [str(2**64), str(-(2**64)), str(-(2**63) - 1), str(10**19 * 7)])
def test_an_integer_past_64_bits_is_named_as_written(parameter: str, value: str) -> None:
    # Before: "got 1.8446744073709552e+19" for 2**64, a number the client never sent.
    with pytest.raises(InputError, match=f"parameter '{parameter}' must be a non-negative "
                                         f"integer.*, got {value}$"):
        decode_request(_body(parameter, value), None)


@pytest.mark.parametrize("value", ["1.5", "1e3"])
def test_a_float_is_named_as_a_float(value: str) -> None:
    with pytest.raises(InputError, match=f"got {float(value)}$"):
        decode_request(_body("priority", value), None)


def test_the_number_is_read_from_a_json_header_of_given_length() -> None:
    header = _body("timeout", str(2**64))
    with pytest.raises(InputError, match=f"got {2**64}$"):
        decode_request(header, len(header))


@pytest.mark.parametrize("value", ["9" * 400, "1e400"])
def test_a_number_past_a_floats_range_is_not_called_invalid_json(value: str) -> None:
    # Before: "request body is not valid JSON", of a body that is.
    with pytest.raises(InputError, match="request body holds a number past the range of a "
                                         "64-bit float"):
        decode_request(_body("priority", value), None)
