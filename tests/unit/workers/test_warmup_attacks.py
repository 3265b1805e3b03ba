"""`model_warmup` samples that go wrong the odd way: a data file that cannot be read (a symlink
loop, no permission), that is too big to read whole or a BOOL file with other bytes than 0 and
1, a batch there is no memory for, and a stateful model's samples, which need not give the state
clients never send."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import surge.workers.warmup as warmup
from surge.errors import ModelLoadError
from surge.repository.config import ModelConfig, parse_config
from surge.runtimes.base import Signature, TensorSpec
from surge.workers.warmup import warm_up

X = TensorSpec("x", "FP32", (-1, 2))
STATE = TensorSpec("state_in", "FP32", (-1, 2))
SEQUENCES = {"state": [{"input": "state_in", "output": "state_out"}]}


class Recorder:
    """A runner of `inputs` that keeps the batches it was given."""

    def __init__(self, *inputs: TensorSpec) -> None:
        self.signature = Signature(inputs, (TensorSpec("y", "FP32", (-1, 2)),), batched=True,
                                   max_batch_size=8)
        self.batches: list[dict[str, np.ndarray]] = []

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.batches.append(dict(inputs))
        return {"y": inputs["x"]}


def config(inputs: dict[str, Any], batch_size: int = 1, **fields: Any) -> ModelConfig:
    return parse_config({"max_batch_size": 8, **fields, "model_warmup": [
        {"name": "s", "batch_size": batch_size, "inputs": inputs}]}, "m/config.yaml")


def from_file(name: str, datatype: str = "FP32") -> dict[str, Any]:
    return {"x": {"datatype": datatype, "dims": [2], "input_data_file": name}}


def test_a_symlink_loop_fails_the_load_naming_the_sample_and_file(tmp_path: Path) -> None:
    (tmp_path / "warmup").mkdir()
    (tmp_path / "warmup" / "loop").symlink_to("loop")
    with pytest.raises(ModelLoadError,
                       match="model_warmup sample 's': input_data_file 'loop' cannot be read"):
        warm_up(Recorder(X), config(from_file("loop")), tmp_path)


def test_an_unreadable_file_fails_the_load_naming_the_sample_and_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "warmup").mkdir()
    np.zeros(2, "<f4").tofile(tmp_path / "warmup" / "row")

    def refused(path: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Path, "read_bytes", refused)
    with pytest.raises(ModelLoadError, match="model_warmup sample 's': input_data_file 'row' "
                                             "cannot be read: Permission denied"):
        warm_up(Recorder(X), config(from_file("row")), tmp_path)


def test_a_bytes_file_over_the_sample_limit_is_refused_before_it_is_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(warmup, "MAX_SAMPLE_BYTES", 64)
    (tmp_path / "warmup").mkdir()
    element = b"a" * 100  # a well-formed file: two elements of 100 bytes, 208 bytes in all
    (tmp_path / "warmup" / "text").write_bytes(
        (len(element).to_bytes(4, "little") + element) * 2)

    def read_whole(path: Path) -> bytes:
        raise AssertionError(f"{path} read whole")

    monkeypatch.setattr(Path, "read_bytes", read_whole)
    runner = Recorder(TensorSpec("x", "BYTES", (-1, 2)))
    with pytest.raises(ModelLoadError, match="input_data_file 'text' holds 208 bytes, over the "
                                             "64 bytes a warm-up sample may take"):
        warm_up(runner, config(from_file("text", "BYTES")), tmp_path)


def test_no_memory_for_a_batch_fails_the_load_naming_the_sample(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def exhausted(*args: object) -> np.ndarray:
        raise MemoryError()

    monkeypatch.setattr(warmup, "_batched", exhausted)
    with pytest.raises(ModelLoadError, match="model_warmup sample 's': no memory for its batch "
                                             r"\(MemoryError: \); lower its batch_size"):
        warm_up(Recorder(X), config({"x": {"datatype": "FP32", "dims": [2],
                                           "zero_data": True}}), Path("/nowhere"))


def test_a_state_input_the_sample_leaves_out_starts_at_zeros() -> None:
    runner = Recorder(X, STATE)
    given = {"x": {"datatype": "FP32", "dims": [2], "random_data": True}}
    warm_up(runner, config(given, batch_size=3, sequence_batching=SEQUENCES), Path("/nowhere"))
    (batch,) = runner.batches
    assert batch["x"].shape == (3, 2)
    assert batch["state_in"].tolist() == [[0.0, 0.0]] * 3
    assert batch["state_in"].dtype == np.float32
    # The sample may still give it; a model input that is not a state still needs its data.
    ones = {**given, "state_in": {"datatype": "FP32", "dims": [2], "zero_data": True}}
    warm_up(runner, config(ones, sequence_batching=SEQUENCES), Path("/nowhere"))
    assert runner.batches[1]["state_in"].shape == (1, 2)
    with pytest.raises(ModelLoadError, match="gives no data for input 'state_in'"):
        warm_up(runner, config(given), Path("/nowhere"))


def test_a_variable_state_input_left_out_is_named() -> None:
    runner = Recorder(X, TensorSpec("state_in", "FP32", (-1, -1)))
    given = {"x": {"datatype": "FP32", "dims": [2], "zero_data": True}}
    with pytest.raises(ModelLoadError, match="state input 'state_in' has variable dims"):
        warm_up(runner, config(given, sequence_batching=SEQUENCES), Path("/nowhere"))


def test_a_bool_file_holds_only_zeros_and_ones(tmp_path: Path) -> None:
    (tmp_path / "warmup").mkdir()
    (tmp_path / "warmup" / "flags").write_bytes(b"\x01\x02")
    runner = Recorder(TensorSpec("x", "BOOL", (-1, 2)))
    with pytest.raises(ModelLoadError, match="model_warmup sample 's': input_data_file 'flags' "
                                             "holds BOOL bytes other than 0 and 1"):
        warm_up(runner, config(from_file("flags", "BOOL")), tmp_path)
    (tmp_path / "warmup" / "flags").write_bytes(b"\x01\x00")
    warm_up(runner, config(from_file("flags", "BOOL")), tmp_path)
    assert runner.batches[0]["x"].tolist() == [[True, False]]
