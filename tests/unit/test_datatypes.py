import numpy as np
import pytest
import torch

from surge.datatypes import (
    V2_DATATYPES,
    element_size,
    numpy_to_v2,
    torch_to_v2,
    v2_to_numpy,
    v2_to_triton,
)
from surge.errors import SurgeError


@pytest.mark.parametrize("datatype", [d for d in V2_DATATYPES if d not in ("BF16", "BYTES")])
def test_numpy_round_trip(datatype: str) -> None:
    assert numpy_to_v2(v2_to_numpy(datatype)) == datatype


def test_bytes_and_bf16() -> None:
    assert numpy_to_v2(np.array([b"a"], dtype=object).dtype) == "BYTES"
    assert v2_to_numpy("BF16") == np.uint16
    assert v2_to_triton("BYTES") == "TYPE_STRING"
    assert v2_to_triton("FP32") == "TYPE_FP32"
    with pytest.raises(SurgeError, match="no fixed size"):
        element_size("BYTES")
    assert element_size("FP16") == 2


def test_unknown_datatype_named() -> None:
    with pytest.raises(SurgeError, match="'FP8'"):
        v2_to_numpy("FP8")


def test_torch_mapping() -> None:
    assert torch_to_v2(torch.bfloat16) == "BF16"
    assert torch_to_v2(torch.int64) == "INT64"
