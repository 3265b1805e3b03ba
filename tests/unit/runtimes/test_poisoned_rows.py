"""A batch the runner refuses as bad input because of some of its rows: `run_rows` finds the
rows that fail on their own, refuses them and computes the others, so one poisoned row (an id
past an embedding table) does not fail the requests batched with it; any other failure still
fails the batch, at once. And ONNX Runtime's INVALID_ARGUMENT at
run time (a Gather index out of range) is an InputError (400), not a model failure (500)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from surge.errors import InputError, SurgeError
from surge.runtimes.base import Signature, TensorSpec, run_rows
from surge.runtimes.onnx_runner import OnnxRunner
from tests.unit.test_cli_inputs import one_line_error

SIGNATURE = Signature((TensorSpec("id", "INT64", (-1,)),), (TensorSpec("y", "FP32", (-1, 2)),))


class Table:
    """An embedding table of 4 rows that refuses what a Gather refuses; counts its runs."""

    signature = SIGNATURE
    device = "cpu"

    def __init__(self, error: type[Exception] = RuntimeError, batch_limit: int = 0) -> None:
        self.error, self.batch_limit, self.runs = error, batch_limit, 0
        self.table = np.arange(8, dtype=np.float32).reshape(4, 2)

    def warmup(self) -> None:
        pass

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.runs += 1
        ids = inputs["id"]
        if self.batch_limit and len(ids) > self.batch_limit:
            raise self.error(f"batch of {len(ids)} rows is too large")
        if ((ids < 0) | (ids >= 4)).any():
            raise self.error(f"index out of range: {ids.tolist()}")
        return {"y": self.table[ids]}


def test_the_poisoned_rows_are_refused_and_the_others_computed() -> None:
    ids = np.array([0, 1, 99, 2, 3, -7, 1, 0], np.int64)
    ran = run_rows(Table(InputError), {"id": ids})
    assert [row for row, _ in ran.rejected] == [2, 5]
    assert ran.rejected[0][1] == "index out of range: [99]"
    good = [0, 1, 3, 4, 6, 7]
    np.testing.assert_array_equal(ran.outputs["y"][good], Table().table[ids[good]])
    assert ran.outputs["y"].shape == (8, 2)


def test_a_model_that_fails_otherwise_fails_the_batch_at_once() -> None:
    """Not an InputError: the model's own failure, not searched row by row."""
    table = Table()
    with pytest.raises(RuntimeError, match="index out of range"):
        run_rows(table, {"id": np.array([0, 10, 1], np.int64)})
    assert table.runs == 1


def test_a_model_that_fails_only_whole_batches_fails_the_batch() -> None:
    with pytest.raises(RuntimeError, match="batch of 4 rows is too large"):
        run_rows(Table(batch_limit=2), {"id": np.array([0, 1, 2, 3], np.int64)})


def test_input_errors_are_refused_even_alone() -> None:
    alone = run_rows(Table(InputError), {"id": np.array([7], np.int64)})
    assert alone.outputs == {}
    assert alone.rejected == ((0, "index out of range: [7]"),)
    every = run_rows(Table(InputError), {"id": np.array([7, 8], np.int64)})
    assert every.outputs == {}
    assert [row for row, _ in every.rejected] == [0, 1]


def test_one_bad_row_in_a_large_batch_costs_a_few_runs() -> None:
    table = Table(InputError)
    ids = np.zeros(256, np.int64)
    ids[77] = 4
    ran = run_rows(table, {"id": ids})
    assert [row for row, _ in ran.rejected] == [77]
    assert table.runs <= 2 + 2 * 8 + 1  # the batch, the halving (2 per level), the good rows


def gather_model(path: Path, rows: int = 4) -> Path:
    table = numpy_helper.from_array(np.arange(rows * 2, dtype=np.float32).reshape(rows, 2), "table")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "id"], ["y"], axis=0)], "gather",
        [helper.make_tensor_value_info("id", TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], [table])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_onnx_runtime_invalid_argument_is_an_input_error(tmp_path: Path) -> None:
    runner = OnnxRunner(gather_model(tmp_path / "model.onnx"))
    with pytest.raises(InputError, match="ONNX Runtime refused the input: .*Gather"):
        runner.run({"id": np.array([2**63 - 1], np.int64)})
    ran = run_rows(runner, {"id": np.array([3, 4, 0], np.int64)})
    assert [row for row, _ in ran.rejected] == [1]
    np.testing.assert_array_equal(ran.outputs["y"][[0, 2]], [[6, 7], [0, 1]])


def test_predict_names_the_refused_index_with_exit_code_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "repo" / "table" / "1").mkdir(parents=True)
    gather_model(tmp_path / "repo" / "table" / "1" / "model.onnx")
    np.save(tmp_path / "ids.npy", np.array([1, 2**63 - 1], np.int64))
    line = one_line_error(["predict", str(tmp_path / "repo"), "--model", "table",
                           "--input", str(tmp_path / "ids.npy")], capsys)
    assert "ONNX Runtime refused the input" in line
    assert "out of data bounds" in line


class Flattening(Table):
    """Answers a batch of n rows with one row of all their values (an output the batch cannot
    be split by)."""

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"y": self.table[inputs["id"]].reshape(-1)}


def test_outputs_of_another_row_count_than_the_batch_fail_it_instead_of_answering_wrongly(
        ) -> None:
    with pytest.raises(SurgeError, match=r"output 'y' has shape \[6\] for a batch of 3 rows"):
        run_rows(Flattening(), {"id": np.array([0, 1, 2], np.int64)})
    one = run_rows(Table(), {"id": np.array([1], np.int64)})  # the usual shape passes
    assert one.outputs["y"].shape == (1, 2)
