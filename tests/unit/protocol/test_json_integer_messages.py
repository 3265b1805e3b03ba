"""JSON integer data whose fault is a fraction is named as non-integer, even beside a value
that the JSON parser's float reading rounds past 2^64."""

from __future__ import annotations

import json

import pytest

from surge.errors import InputError
from surge.protocol.rest import decode_request


def _decode(datatype: str, data: list) -> None:
    body = json.dumps({"inputs": [{"name": "x", "datatype": datatype,
                                   "shape": [len(data)], "data": data}]}).encode()
    decode_request(body, None)


@pytest.mark.parametrize("data", [[2**64 - 1, 0.5], [0.5, 2**64 - 1]])
def test_a_fraction_beside_the_largest_uint64_is_named_non_integer(data: list) -> None:
    # 2^64 - 1 is in range: the list is read as floats only because of the 0.5
    with pytest.raises(InputError, match="UINT64 data holds non-integer values"):
        _decode("UINT64", data)


@pytest.mark.parametrize(("datatype", "data"), [
    ("UINT64", [1.0e20]), ("INT64", [-1.0e20, 1.0]), ("UINT64", [2**64, -1])])
def test_whole_values_past_the_range_are_still_named_out_of_range(datatype: str,
                                                                 data: list) -> None:
    with pytest.raises(InputError, match=f"{datatype} data holds values outside its range"):
        _decode(datatype, data)
