"""A declared range checked on a request's tensors: the value outside it named with the input
and the range, NaN and infinities for finite inputs, BF16 words read as the numbers they are;
the same check for a pipeline's prepared inputs, `--calib` data and the example inputs."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from surge.errors import ConfigError, InputError
from surge.optimize.pipeline import _check_calibration_array
from surge.pipeline.accept import Accept
from surge.runtimes.base import Signature, TensorSpec, example_inputs
from surge.runtimes.values import ValueRange

SIGNATURE = Signature((TensorSpec("user", "INT64", (-1,), ValueRange(0, 1999)),
                       TensorSpec("dense", "FP32", (-1, 2), ValueRange(finite=True)),
                       TensorSpec("share", "FP16", (-1,), ValueRange(0, 1)),
                       TensorSpec("half", "BF16", (-1,), ValueRange(None, 2.5, True)),
                       TensorSpec("free", "FP32", (-1,))),
                      (TensorSpec("score", "FP32", (-1, 1)),), max_batch_size=8)
BF16_ONE, BF16_THREE, BF16_INF, BF16_NAN = 0x3F80, 0x4040, 0x7F80, 0x7FC0


def _good(rows: int = 2) -> dict[str, np.ndarray]:
    return {"user": np.arange(rows, dtype=np.int64) + 1998 - rows + 1,
            "dense": np.zeros((rows, 2), np.float32), "share": np.ones(rows, np.float16),
            "half": np.full(rows, BF16_ONE, np.uint16),
            "free": np.full(rows, np.nan, np.float32)}


REFUSED = {
    "an id of -1": ("user", np.array([5, -1]), "input 'user' holds -1, but its config declares "
                    "values in [0, 1999]"),
    "an id past the table": ("user", np.array([2000, 3]), "input 'user' holds 2000"),
    "INT64's least": ("user", np.array([np.iinfo(np.int64).min, 0]),
                      f"input 'user' holds {np.iinfo(np.int64).min}, but"),
    "a NaN": ("dense", np.array([[0, np.nan], [1, 1]], np.float32),
              "input 'dense' holds NaN, but its config declares finite values"),
    "infinity": ("dense", np.array([[0, 1], [np.inf, 1]], np.float32), "'dense' holds inf"),
    "minus infinity": ("dense", np.array([[0, 1], [-np.inf, 1]], np.float32),
                       "'dense' holds -inf"),
    "a float past max": ("share", np.array([0.5, 1.5], np.float16),
                         "input 'share' holds 1.5, but its config declares values in [0, 1]"),
    "a NaN in a float range": ("share", np.array([np.nan, 0.5], np.float16),
                               "input 'share' holds NaN"),
    "BF16 words past max": ("half", np.array([BF16_ONE, BF16_THREE], np.uint16),
                            "input 'half' holds 3.0, but its config declares finite values "
                            "<= 2.5"),
    "BF16 infinity": ("half", np.array([BF16_INF, BF16_ONE], np.uint16), "'half' holds inf"),
    "a BF16 NaN": ("half", np.array([BF16_NAN, BF16_ONE], np.uint16), "'half' holds NaN"),
}


def test_values_within_the_ranges_are_accepted() -> None:
    SIGNATURE.validate_inputs(_good())  # `free` declares nothing: even NaN passes
    SIGNATURE.validate_inputs({**_good(), "user": np.array([0, 1999])})
    SIGNATURE.validate_inputs({name: array[:0] for name, array in _good().items()})


@pytest.mark.parametrize("case", REFUSED)
def test_a_value_outside_its_range_is_refused_naming_input_value_and_range(case: str) -> None:
    name, array, message = REFUSED[case]
    with pytest.raises(InputError) as refused:
        SIGNATURE.validate_inputs({**_good(), name: array})
    assert message in str(refused.value)
    with pytest.raises(InputError, match=f"^{re.escape(str(refused.value))}$"):
        SIGNATURE.check_input(name, array)


@pytest.mark.parametrize("case", REFUSED)
def test_a_pipeline_refuses_it_too(case: str) -> None:
    name, array, message = REFUSED[case]
    accept = Accept(SIGNATURE)
    accept.check(_good())
    with pytest.raises(InputError) as refused:
        accept.check({**_good(), name: array})
    assert message in str(refused.value)


def test_the_type_is_checked_before_the_values() -> None:
    with pytest.raises(InputError, match=r"input 'user' expects INT64 \[-1\], got FP32 \[2\]"):
        SIGNATURE.check_input("user", np.array([-1, np.nan], np.float32))


@pytest.mark.parametrize(("values", "text"), [
    (ValueRange(0, 1999), "values in [0, 1999]"), (ValueRange(0), "values >= 0"),
    (ValueRange(None, 0.5), "values <= 0.5"), (ValueRange(finite=True), "finite values"),
    (ValueRange(-1, 1, True), "finite values in [-1, 1]"),
])
def test_ranges_describe_themselves(values: ValueRange, text: str) -> None:
    assert values.describe() == text


def test_example_inputs_lie_in_the_declared_ranges() -> None:
    narrow = Signature((TensorSpec("id", "INT32", (-1, 3), ValueRange(3, 4)),
                        TensorSpec("x", "FP64", (-1,), ValueRange(-2.0, -1.5))), ())
    for seed in range(3):
        inputs = example_inputs(narrow, batch_size=16, seed=seed)
        narrow.validate_inputs(inputs)
        assert (inputs["id"].dtype, inputs["x"].dtype) == (np.int32, np.float64)
    SIGNATURE.validate_inputs(example_inputs(SIGNATURE, batch_size=4))


def test_calibration_data_outside_a_range_is_refused_naming_the_file() -> None:
    path = Path("calib.npz")
    _check_calibration_array(path, SIGNATURE, "user", np.array([0, 1999]))
    with pytest.raises(ConfigError, match=r"^calib.npz: input 'user' holds -1, but its config "
                       r"declares values in \[0, 1999\]$"):
        _check_calibration_array(path, SIGNATURE, "user", np.array([0, -1]))
