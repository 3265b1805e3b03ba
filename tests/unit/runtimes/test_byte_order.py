"""In-process inputs of a byte order or dtype no V2 datatype has: the caller's InputError."""

import numpy as np
import pytest

from surge.errors import InputError
from surge.runtimes.base import Signature, TensorSpec

SIGNATURE = Signature((TensorSpec("x", "FP32", (-1, 4)),), (TensorSpec("y", "FP32", (-1, 4)),),
                      batched=True)


@pytest.mark.parametrize("dtype", [">f4", ">i8"])
def test_a_byte_swapped_input_is_an_input_error_saying_how_to_send_it(dtype: str) -> None:
    array = np.ones((2, 4), dtype)
    with pytest.raises(InputError, match=rf"input 'x' expects FP32 \[-1, 4\], got {dtype} "
                                         r"\(byte-swapped\): send it in native byte order"):
        SIGNATURE.check_input("x", array)
    with pytest.raises(InputError, match="native byte order"):
        SIGNATURE.validate_inputs({"x": array})


def test_a_dtype_without_a_v2_datatype_is_an_input_error() -> None:
    with pytest.raises(InputError, match="input 'x' .* got numpy dtype complex64, which no V2"):
        SIGNATURE.check_input("x", np.ones((2, 4), np.complex64))


def test_native_inputs_still_pass() -> None:
    SIGNATURE.validate_inputs({"x": np.ones((2, 4), np.float32)})
    SIGNATURE.validate_inputs({"x": np.ones((2, 4), "=f4")})
    SIGNATURE.validate_inputs({"x": np.ones((2, 4), "<f4").byteswap().view(">f4").astype("=f4")})
