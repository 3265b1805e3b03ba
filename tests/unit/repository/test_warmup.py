"""`model_warmup` in config.yaml: its checks when the config is read, the samples an instance
makes from it (zeros, random values, data files) and runs before it is ready, and the echo in
the Triton model configuration."""

from __future__ import annotations

import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import json_format

from surge.cluster.actor import ActorSpec, _load
from surge.errors import ConfigError, ModelLoadError
from surge.protocol.grpc_gen import grpc_service_pb2 as pb
from surge.protocol.metadata import model_warmup
from surge.repository.config import ModelConfig, parse_config
from surge.runtimes.base import Signature, TensorSpec
from surge.runtimes.values import ValueRange
from surge.workers.warmup import read_row, sample_inputs, warm_up
from surge.workers.worker import WorkerSpec, load
from tests.unit.tiny_models import make_repo

X = TensorSpec("x", "FP32", (-1, 4))
SIGNATURE = Signature((X,), (TensorSpec("y", "FP32", (-1, 4)),), batched=True, max_batch_size=8)


def sample(name: str = "s", **fields: Any) -> dict[str, Any]:
    inputs = fields.pop("inputs", {"x": {"datatype": "FP32", "dims": [4], "zero_data": True}})
    return {"name": name, "inputs": inputs, **fields}


def parsed(*samples: dict[str, Any], **fields: Any) -> ModelConfig:
    return parse_config({"max_batch_size": 8, **fields, "model_warmup": list(samples)},
                        "m/config.yaml")


def one_input(**given: Any) -> dict[str, Any]:
    return sample(inputs={"x": {"datatype": "FP32", "dims": [4], **given}})


# -- the config ----------------------------------------------------------------------------------

def test_a_sample_reads_with_its_defaults_and_triton_spelling() -> None:
    config = parsed(sample(inputs={"x": {"data_type": "TYPE_FP32", "dims": [4],
                                         "random_data": True},
                                   "t": {"data_type": "TYPE_STRING", "dims": [1],
                                         "zero_data": True}}))
    (only,) = config.model_warmup
    assert (only.batch_size, only.count) == (1, 1)
    assert only.inputs["x"].datatype == "FP32"
    assert only.inputs["t"].datatype == "BYTES"
    assert parsed().model_warmup == []


@pytest.mark.parametrize(("data", "fields", "message"), [
    (sample(batch_size=9), {}, "batch_size 9 is over max_batch_size 8"),
    (sample(batch_size=2), {"max_batch_size": 0}, "batch_size 2 needs a model with batching"),
    (sample(count=0), {}, "model_warmup.0.count: Input should be greater than or equal to 1"),
    (one_input(), {}, "got none"),
    (one_input(zero_data=True, input_data_file="x.bin"), {},
     "got zero_data and input_data_file"),
    (one_input(input_data_file="../config.yaml"), {}, "'../config.yaml' must lie in the model's"),
    (one_input(input_data_file="/etc/passwd"), {}, "'/etc/passwd' must lie in the model's"),
    (one_input(input_data_file=""), {}, "input_data_file '' must be a plain file name"),
    (one_input(input_data_file="."), {}, "input_data_file '.' must be a plain file name"),
    (one_input(input_data_file="./"), {}, "input_data_file './' must be a plain file name"),
    (sample(inputs={"x": {"datatype": "FP33", "dims": [4], "zero_data": True}}), {},
     "datatype 'FP33' is not one of"),
    (sample(inputs={"x": {"datatype": "FP32", "dims": [0], "zero_data": True}}), {},
     "dims.0: Input should be greater than or equal to 1"),
    (sample(inputs={"x": {"datatype": "FP32", "dims": [2**20, 2**20], "zero_data": True}}),
     {}, "sample 's' takes 4398046511104 bytes"),
    (sample(inputs={"x": {"datatype": "INT64", "dims": [4], "zero_data": True}}),
     {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]},
     "sample 's': input 'x' is FP32, not INT64"),
    (sample(inputs={"x": {"datatype": "FP32", "dims": [3], "zero_data": True}}),
     {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]},
     "input 'x': dims [3] do not fit the input's row shape [4]"),
    (sample(inputs={}), {}, "inputs: Dictionary should have at least 1 item"),
    (sample(extra=1), {}, "extra"),
])
def test_bad_samples_are_refused_naming_the_value(data: dict[str, Any], fields: dict[str, Any],
                                                  message: str) -> None:
    with pytest.raises(ConfigError, match="model_warmup") as refused:
        parsed(data, **fields)
    assert message in str(refused.value)


def test_two_samples_of_one_name_and_a_pipeline_are_refused() -> None:
    with pytest.raises(ConfigError, match="names sample 's' twice"):
        parsed(sample(), sample())
    steps = [{"name": "a", "model": "m", "inputs": {"x": "x"}, "outputs": {"y": "y"}}]
    tensors = [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    with pytest.raises(ConfigError, match="model_warmup is for kind model"):
        parsed(sample(), kind="pipeline", steps=steps, inputs=tensors, outputs=tensors)


def test_a_variable_dim_takes_the_samples_size() -> None:
    tensors = [{"name": "x", "datatype": "FP32", "shape": [-1, -1]}]
    config = parsed(sample(inputs={"x": {"datatype": "FP32", "dims": [5], "zero_data": True}}),
                    inputs=tensors)
    batch = sample_inputs(config.model_warmup[0],
                          Signature((TensorSpec("x", "FP32", (-1, -1)),), (), True, 8), Path())
    assert batch["x"].shape == (1, 5)


# -- the samples an instance makes ---------------------------------------------------------------

def test_zero_random_and_file_data(tmp_path: Path) -> None:
    (tmp_path / "warmup").mkdir()
    np.arange(4, dtype="<f4").tofile(tmp_path / "warmup" / "row.bin")
    n = TensorSpec("n", "INT64", (-1, 3), ValueRange(5, 6))
    signature = Signature((X, n), (), batched=True, max_batch_size=8)
    config = parsed(sample(batch_size=3, inputs={
        "x": {"datatype": "FP32", "dims": [4], "input_data_file": "row.bin"},
        "n": {"datatype": "INT64", "dims": [3], "random_data": True}}))
    batch = sample_inputs(config.model_warmup[0], signature, tmp_path)
    assert batch["x"].tolist() == [[0.0, 1.0, 2.0, 3.0]] * 3
    assert batch["n"].shape == (3, 3)
    assert batch["n"].dtype == np.int64
    assert set(batch["n"].ravel().tolist()) <= {5, 6}  # within the declared range
    zeros = sample_inputs(parsed(sample()).model_warmup[0], SIGNATURE, tmp_path)
    assert zeros["x"].tolist() == [[0.0] * 4]


def test_bytes_files_hold_length_prefixed_elements(tmp_path: Path) -> None:
    (tmp_path / "warmup").mkdir()
    (tmp_path / "warmup" / "text").write_bytes(
        struct.pack("<I", 2) + b"hi" + struct.pack("<I", 0))
    assert read_row(tmp_path, "text", "BYTES", (2,)).tolist() == [b"hi", b""]
    with pytest.raises(ValueError, match="holds 2 BYTES elements; the dims take 3"):
        read_row(tmp_path, "text", "BYTES", (3,))
    (tmp_path / "warmup" / "cut").write_bytes(struct.pack("<I", 9) + b"hi")
    with pytest.raises(ValueError, match="element 0 claims 9 bytes, past the end"):
        read_row(tmp_path, "cut", "BYTES", (1,))


def test_a_data_file_must_exist_inside_the_folder_with_the_right_size(tmp_path: Path) -> None:
    (tmp_path / "warmup").mkdir()
    np.zeros(3, "<f4").tofile(tmp_path / "warmup" / "short.bin")
    (tmp_path / "secret").write_bytes(b"\0" * 16)
    (tmp_path / "warmup" / "out").symlink_to(tmp_path / "secret")
    (tmp_path / "warmup" / "dir").mkdir()
    with pytest.raises(ValueError, match="'short.bin' holds 12 bytes; FP32 \\[4\\] takes 16"):
        read_row(tmp_path, "short.bin", "FP32", (4,))
    with pytest.raises(ValueError, match="'gone.bin' does not exist"):
        read_row(tmp_path, "gone.bin", "FP32", (4,))
    with pytest.raises(ValueError, match="'out' resolves outside warmup/"):
        read_row(tmp_path, "out", "FP32", (4,))
    with pytest.raises(ValueError, match="'dir' is not a regular file"):
        read_row(tmp_path, "dir", "FP32", (4,))


@pytest.mark.parametrize(("given", "message"), [
    (sample(inputs={"z": {"datatype": "FP32", "dims": [4], "zero_data": True},
                    "x": {"datatype": "FP32", "dims": [4], "zero_data": True}}),
     "names input 'z', which the model does not have"),
    (sample(inputs={"y": {"datatype": "FP32", "dims": [4], "zero_data": True}}),
     "gives no data for input 'x'"),
    (sample(inputs={"x": {"datatype": "INT64", "dims": [4], "zero_data": True}}),
     "input 'x' is FP32, not INT64"),
    (sample(inputs={"x": {"datatype": "FP32", "dims": [2, 2], "zero_data": True}}),
     "dims [2, 2] do not fit the input's row shape [4]"),
    (one_input(input_data_file="none.bin"), "'none.bin' does not exist"),
])
def test_samples_that_do_not_fit_the_model_fail_the_load(given: dict[str, Any],
                                                          message: str) -> None:
    with pytest.raises(ModelLoadError, match="model_warmup sample 's': ") as failed:
        warm_up(Recorder(), parsed(given, max_batch_size=0), Path("/nowhere"))
    assert message in str(failed.value)


class Recorder:
    """A runner that keeps every batch it runs, and fails on a batch of all sevens."""

    signature = SIGNATURE
    device = "cpu"

    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []

    def warmup(self) -> None:
        pass

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.batches.append(inputs["x"])
        if (inputs["x"] == 7).all():
            raise RuntimeError("sevens")
        return {"y": inputs["x"]}


def test_every_sample_runs_count_times_in_order() -> None:
    runner = Recorder()
    config = parsed(sample("a", count=2), sample("b", batch_size=4))
    warm_up(runner, config, Path("/nowhere"))
    assert [b.shape for b in runner.batches] == [(1, 4), (1, 4), (4, 4)]


def test_a_sample_the_model_fails_on_fails_the_load_naming_it(tmp_path: Path) -> None:
    (tmp_path / "warmup").mkdir()
    np.full(4, 7, "<f4").tofile(tmp_path / "warmup" / "sevens")
    config = parsed(sample("fine"), one_input(input_data_file="sevens"))
    with pytest.raises(ModelLoadError, match="model_warmup sample 's' failed: RuntimeError: "
                                             "sevens"):
        warm_up(Recorder(), config, tmp_path)


# -- the instances: worker processes and Ray actors load through the same path -------------------

WARM_REPO = """\
max_batch_size: 8
model_warmup:
  - name: from-file
    batch_size: 2
    count: 3
    inputs: {x: {datatype: FP32, dims: [4], input_data_file: row.bin}}
"""


def test_worker_and_actor_loads_run_the_samples(tmp_path: Path) -> None:
    root = make_repo(tmp_path, config=WARM_REPO)
    (root / "tiny" / "warmup").mkdir()
    np.ones(4, "<f4").tofile(root / "tiny" / "warmup" / "row.bin")
    assert load(WorkerSpec(str(root), "tiny", None, 1, "cpu")).signature.input_names == ["x"]
    assert _load(ActorSpec(str(root), "tiny", None, 1, "cpu")).device == "cpu"
    np.ones(5, "<f4").tofile(root / "tiny" / "warmup" / "row.bin")  # one value too many
    message = "model_warmup sample 'from-file': input_data_file 'row.bin' holds 20 bytes"
    with pytest.raises(ModelLoadError, match=message):
        load(WorkerSpec(str(root), "tiny", None, 1, "cpu"))
    with pytest.raises(ModelLoadError, match=message):
        _load(ActorSpec(str(root), "tiny", None, 1, "cpu"))


# -- the echo ------------------------------------------------------------------------------------

def test_the_config_echo_is_tritons_model_warmup() -> None:
    config = parsed(sample("a", batch_size=2, count=3, inputs={
        "x": {"datatype": "FP32", "dims": [4], "input_data_file": "row.bin"},
        "t": {"datatype": "BYTES", "dims": [1], "random_data": True}}), sample("b"))
    echoed = model_warmup(config)
    assert echoed == [
        {"name": "a", "batch_size": 2, "count": 3, "inputs": {
            "x": {"data_type": "TYPE_FP32", "dims": [4], "input_data_file": "row.bin"},
            "t": {"data_type": "TYPE_STRING", "dims": [1], "random_data": True}}},
        {"name": "b", "batch_size": 1, "count": 1, "inputs": {
            "x": {"data_type": "TYPE_FP32", "dims": [4], "zero_data": True}}}]
    message = json_format.ParseDict({"model_warmup": echoed}, pb.ModelConfig())
    assert message.model_warmup[0].inputs["x"].input_data_file == "row.bin"
    assert message.model_warmup[1].inputs["x"].WhichOneof("input_data_type") == "zero_data"
