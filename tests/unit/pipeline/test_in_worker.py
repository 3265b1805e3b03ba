"""`preprocess:` steps bound to a model's inputs, and run on batches in front of its runner."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
from PIL import Image

from surge.errors import ConfigError
from surge.processors.in_worker import PreprocessedRunner, bind_steps, example_rows
from surge.repository.config import parse_config
from surge.runtimes.base import RowsRejectedError, Signature, TensorSpec, run_rows
from surge.scheduler import Batch

MODEL = Signature((TensorSpec("image", "FP32", (-1, 8, 8)), TensorSpec("scale", "FP32", (-1,))),
                  (TensorSpec("total", "FP32", (-1,)),), batched=True, max_batch_size=8)
DECODE = {"name": "decode", "processor": "image.decode", "inputs": {"image": "png"},
          "outputs": {"pixels": "image"},
          "params": {"size": [8, 8], "color": "gray", "layout": "hw", "scale": 1.0}}


def config(*steps: dict[str, Any], **fields: Any) -> Any:
    return parse_config({"preprocess": list(steps), **fields}, "config.yaml")


def step(**changes: Any) -> dict[str, Any]:
    return {**DECODE, **changes}


def png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


class Summing:
    """A runner: total = sum(image) * scale per row; remembers what it was given."""

    signature = MODEL
    device = "cpu"

    def __init__(self) -> None:
        self.given: list[dict[str, np.ndarray]] = []

    def warmup(self) -> None:
        pass

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.given.append(dict(inputs))
        return {"total": inputs["image"].sum(axis=(1, 2)) * inputs["scale"]}


def test_the_served_signature_takes_the_steps_inputs_and_the_inputs_no_step_writes() -> None:
    steps, signature = bind_steps(config(step()), MODEL)
    assert [s.name for s in steps] == ["decode"]
    assert signature.inputs == (TensorSpec("png", "BYTES", (-1,)), TensorSpec("scale", "FP32", (-1,)))
    assert (signature.outputs, signature.batched, signature.max_batch_size) == (
        MODEL.outputs, True, 8)
    # The request's input may bear the name of the model input its step writes.
    _, same_name = bind_steps(config(step(inputs={"image": "image"})), MODEL)
    assert same_name.inputs[0] == TensorSpec("image", "BYTES", (-1,))


@pytest.mark.parametrize(("changes", "message"), [
    ({"inputs": {"image": "scale"}}, "read 'scale' from requests, but no step writes the"),
    ({"outputs": {"pixels": "canvas"}}, "writes 'canvas', which neither a later step nor"),
    ({"inputs": {"picture": "png"}}, "the processor has no input 'picture'"),
    ({"outputs": {"picture": "image"}}, "the processor has no output 'picture'"),
    ({"params": {"size": [8, 8], "layout": "nchw"}},
     r"writes FP32 \[-1, 3, 8, 8\] to the model input 'image', which takes FP32 \[-1, 8, 8\]"),
    ({"outputs": {"pixels": "png"}}, "writes 'png', an input the requests bring"),
    ({"processor": "tests.unit.pipeline.processors:row_sum"}, "does not declare its tensors"),
    ({"params": {"size": [8]}}, r"params.size must be \[height, width\]"),
])
def test_a_step_that_does_not_fit_the_model_is_a_config_error(
        changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        bind_steps(config(step(**changes)), MODEL)


@pytest.mark.parametrize(("data", "message"), [
    ({"kind": "pipeline", "inputs": [{"name": "a", "datatype": "FP32", "shape": [-1]}],
      "outputs": [{"name": "a", "datatype": "FP32", "shape": [-1]}],
      "steps": [{"name": "m", "model": "m", "inputs": {"x": "a"}, "outputs": {"y": "a"}}]},
     "preprocess is for kind model"),
    ({"preprocess": [{"name": "m", "model": "other", "inputs": {"x": "a"},
                      "outputs": {"y": "b"}}]}, "takes a processor"),
    ({"preprocess": [DECODE, DECODE]}, "name 'decode' is used twice"),
])
def test_the_config_checks_its_preprocess_steps(data: dict[str, Any], message: str) -> None:
    data = {"preprocess": [DECODE], **data}
    with pytest.raises(ConfigError, match=message):
        parse_config(data, "config.yaml")


def test_a_batch_runs_through_the_steps_then_the_model() -> None:
    inner = Summing()
    runner = PreprocessedRunner(inner, config(step()))
    outputs = runner.run({"png": np.array([png(1), png(2)], object),
                          "scale": np.array([1.0, 0.5], np.float32)})
    assert outputs["total"].tolist() == [64.0, 64.0]
    assert set(inner.given[0]) == {"image", "scale"}
    assert runner.preprocess_cpu_ns > 0


def test_refused_rows_are_set_apart_and_the_others_computed() -> None:
    inner = Summing()
    runner = PreprocessedRunner(inner, config(step()))
    ran = run_rows(runner, {"png": np.array([png(1), b"GIF89a", png(3), b""], object),
                            "scale": np.ones(4, np.float32)})
    assert ran.outputs["total"].tolist() == [64.0, 0.0, 192.0, 0.0]  # filler in refused rows
    assert [row for row, _ in ran.rejected] == [1, 3]
    assert ran.rejected[0][1].startswith("input 'png' is not a JPEG or PNG file")
    assert ran.rejected[1][1] == "input 'png' is empty"
    assert ran.preprocess_cpu_ns > 0


def test_a_batch_with_every_row_refused_never_reaches_the_model() -> None:
    inner = Summing()
    runner = PreprocessedRunner(inner, config(step()))
    with pytest.raises(RowsRejectedError) as refused:
        runner.run({"png": np.array([b"x", b"y"], object), "scale": np.ones(2, np.float32)})
    assert refused.value.outputs == {}
    assert [row for row, _ in refused.value.rows] == [0, 1]
    assert inner.given == []


def test_a_batch_names_the_requests_of_refused_rows_and_the_row_within_each() -> None:
    requests = tuple(object() for _ in range(3))
    batch = Batch(1, requests, (0, 1, 4, 5), 0.0)  # type: ignore[arg-type]
    assert batch.refused([(2, "bad"), (3, "worse"), (4, "also")]) == {
        1: "bad (row 1)", 2: "also"}
    assert batch.refused([(0, "bad")]) == {0: "bad"}
    assert batch.refused([]) == {}


def test_an_instance_of_several_threads_runs_a_batch_in_parts_at_once() -> None:
    files = np.array([png(v) for v in range(1, 8)] + [b"GIF89a", png(9)], object)
    given = {"png": files, "scale": np.ones(len(files), np.float32)}
    alone = run_rows(PreprocessedRunner(Summing(), config(step())), given)
    inner = Summing()
    split = PreprocessedRunner(inner, config(step()), threads=3)
    assert split.run({"png": files[:7], "scale": np.ones(7, np.float32)})["total"].tolist() == [
        64.0 * v for v in range(1, 8)]
    assert split.other_threads_cpu_ns > 0  # two of the three parts ran on the pool's threads
    assert split.preprocess_cpu_ns > split.other_threads_cpu_ns
    parted = run_rows(split, given)  # a refused row: the whole batch again, row by row
    np.testing.assert_array_equal(parted.outputs["total"], alone.outputs["total"])
    assert parted.rejected == alone.rejected
    assert [row for row, _ in parted.rejected] == [7]


class Counting:
    """A runner over token ids: the number of real tokens in each row."""

    signature = Signature((TensorSpec("input_ids", "INT64", (-1, -1)),
                           TensorSpec("attention_mask", "INT64", (-1, -1))),
                          (TensorSpec("tokens", "INT64", (-1,)),), batched=True,
                          max_batch_size=8)
    device = "cpu"

    def warmup(self) -> None:
        pass

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert inputs["input_ids"].shape == inputs["attention_mask"].shape
        return {"tokens": inputs["attention_mask"].sum(axis=1)}


def test_a_step_whose_width_follows_the_batch_is_not_split_and_refuses_rows_alike() -> None:
    tokenize = {"name": "tokenize", "processor": "text.tokenize",
                "inputs": {"text": "text"},
                "outputs": {"input_ids": "input_ids", "attention_mask": "attention_mask"},
                "params": {"tokenizer": "surge.zoo.minilm:tokenizer_file", "max_length": 32,
                           "outputs": ["input_ids", "attention_mask"]}}
    runner = PreprocessedRunner(Counting(), config(tokenize), threads=3)
    texts = np.array([[b"hi"], [b"a longer sentence than the first"], [b"\xff\xfe"], [b"ok"]],
                     object)
    ran = run_rows(runner, {"text": texts})
    alone = [run_rows(runner, {"text": texts[i:i + 1]}).outputs["tokens"][0] for i in (0, 1, 3)]
    assert ran.outputs["tokens"].tolist() == [alone[0], alone[1], 0, alone[2]]
    assert [row for row, _ in ran.rejected] == [2]
    assert ran.rejected[0][1].startswith("input 'text'")
    assert "row" not in ran.rejected[0][1]
    probe = example_rows(config(tokenize), runner.signature, 2)  # the latency probe's rows
    assert probe["text"].shape == (2, 1)
    assert runner.run(probe)["tokens"].tolist() == [3, 3]  # [CLS] surge [SEP]


def test_the_probe_gets_valid_rows_for_the_inputs_the_steps_read() -> None:
    from surge.engine.probe import probe_rows

    cfg = config(step())
    runner = PreprocessedRunner(Summing(), cfg)
    rows = probe_rows(cfg, runner.signature, 3)
    assert rows is not None
    assert rows["png"].shape == (3,)
    assert rows["scale"].shape == (3,)  # a model input no step writes: zeros
    assert runner.run(rows)["total"].tolist() == [0.0, 0.0, 0.0]  # the images decode (scale 0)
    # No example for an input: no probe (the signature cannot tell a valid file).
    bare = Signature((TensorSpec("png", "BYTES", (-1,)),), MODEL.outputs, batched=True)
    assert probe_rows(config(), bare, 1) is None
