"""A pipeline's prepared input check passes what the signature accepts without asking it, and
leaves every other request to the signature's own validation and its error."""

from __future__ import annotations

import numpy as np
import pytest

from surge.errors import InputError, SurgeError
from surge.pipeline.accept import Accept
from surge.runtimes.base import Signature, TensorSpec

SIGNATURE = Signature((TensorSpec("image", "BYTES", (-1,)),
                       TensorSpec("box", "FP32", (-1, 2, 4)),
                       TensorSpec("half", "BF16", (-1, -1))),
                      (TensorSpec("out", "FP32", (-1, 1)),), batched=True, max_batch_size=4,
                      platform="pipeline")


def _good(rows: int = 2) -> dict[str, np.ndarray]:
    return {"image": np.array([b"x"] * rows, dtype=object),
            "box": np.zeros((rows, 2, 4), np.float32),
            "half": np.zeros((rows, 3), np.uint16)}


CASES = {
    "fits": _good(),
    "one row": _good(1),
    "the largest batch": _good(4),
    "over the largest batch": _good(5),
    "a missing input": {k: v for k, v in _good().items() if k != "half"},
    "an unknown input": {**_good(), "extra": np.zeros((2,), np.float32)},
    "a wrong dtype": {**_good(), "box": np.zeros((2, 2, 4), np.float64)},
    "a wrong fixed dim": {**_good(), "box": np.zeros((2, 3, 4), np.float32)},
    "a wrong rank": {**_good(), "box": np.zeros((2, 8), np.float32)},
    "batch sizes that differ": {**_good(), "half": np.zeros((3, 3), np.uint16)},
    "byte-swapped floats": {**_good(), "box": np.zeros((2, 2, 4), ">f4")},
    "bytes as a fixed-width array": {**_good(), "image": np.array([b"x", b"y"])},
}


def _verdict(check: object, inputs: dict[str, np.ndarray]) -> str:
    try:
        check(inputs)  # type: ignore[operator]
    except SurgeError as exc:
        return f"{type(exc).__name__}: {exc}"
    return "accepted"


@pytest.mark.parametrize("case", CASES)
def test_the_check_agrees_with_the_signature(case: str) -> None:
    inputs = CASES[case]
    assert _verdict(Accept(SIGNATURE).check, inputs) == _verdict(SIGNATURE.validate_inputs,
                                                                  inputs)


def test_a_request_that_fits_is_passed_without_the_signature(
        monkeypatch: pytest.MonkeyPatch) -> None:
    accept = Accept(SIGNATURE)

    def refuse(self: Signature, inputs: object) -> None:
        raise AssertionError("validate_inputs was called")

    monkeypatch.setattr(Signature, "validate_inputs", refuse)
    accept.check(_good())
    with pytest.raises(AssertionError, match="was called"):
        accept.check({**_good(), "box": np.zeros((2, 3, 4), np.float32)})


def test_an_unbatched_signature_takes_any_leading_dim_it_declares_variable() -> None:
    signature = Signature((TensorSpec("x", "INT64", (-1, 3)),), (), batched=False)
    accept = Accept(signature)
    accept.check({"x": np.zeros((9, 3), np.int64)})
    with pytest.raises(InputError, match="expects INT64"):
        accept.check({"x": np.zeros((9, 2), np.int64)})
