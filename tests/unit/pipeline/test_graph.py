"""Pipeline configs: structure (names, cycles, writers) and types (dtypes, shapes) name the step."""

from __future__ import annotations

from typing import Any

import pytest

from surge.errors import ConfigError
from surge.pipeline import StepTypes, check_types, plan
from surge.repository.config import ModelConfig, parse_config
from surge.runtimes.base import TensorSpec

IMAGE = {"name": "image", "datatype": "BYTES", "shape": [-1]}
LABELS = {"name": "labels", "datatype": "BYTES", "shape": [-1, 5]}


def pipeline(*steps: dict[str, Any], outputs: list[dict[str, Any]] | None = None) -> ModelConfig:
    return parse_config({"kind": "pipeline", "inputs": [IMAGE], "outputs": outputs or [LABELS],
                         "steps": list(steps)}, "p/config.yaml")


DECODE = {"name": "decode", "processor": "image.decode", "inputs": {"image": "image"},
          "outputs": {"pixels": "pixels"}, "params": {"size": [8, 8]}}
CLASSIFY = {"name": "classify", "model": "net", "inputs": {"x": "pixels"},
            "outputs": {"logits": "logits"}}
TOPK = {"name": "top5", "processor": "labels.topk", "inputs": {"logits": "logits"},
        "outputs": {"labels": "labels"}}


def test_steps_are_ordered_by_what_they_read() -> None:
    steps = plan("p", pipeline(TOPK, CLASSIFY, DECODE), ["net", "p"])
    assert [s.name for s in steps] == ["decode", "classify", "top5"]


@pytest.mark.parametrize(("steps", "message"), [
    ((DECODE, {**CLASSIFY, "model": "nope"}, TOPK), "step 'classify': unknown model 'nope'"),
    ((DECODE, {**CLASSIFY, "model": "p"}, TOPK),
     "step 'classify': 'p' is this pipeline; a step names a model"),
    ((DECODE, CLASSIFY, {**TOPK, "params_from": "nett"}),
     "step 'top5': params_from names unknown model 'nett'"),
    ((DECODE, {**CLASSIFY, "inputs": {"x": "pixles"}}, TOPK),
     "step 'classify' reads 'pixles', which no step writes"),
    ((DECODE, CLASSIFY, {**TOPK, "outputs": {"labels": "pixels"}}),
     "step 'top5' writes 'pixels', which is already written by step 'decode'"),
    ((DECODE, {**CLASSIFY, "outputs": {"logits": "image"}}, TOPK),
     "step 'classify' writes 'image', which is already written by a pipeline input"),
    ((DECODE, CLASSIFY, {**TOPK, "name": "decode"}), "two steps are named 'decode'"),
    ((DECODE, CLASSIFY), "output 'labels' is written by no step"),
])
def test_structure_errors_name_the_step(steps: tuple[dict[str, Any], ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        plan("p", pipeline(*steps), ["net", "p"])


def test_an_input_no_step_reads_is_refused() -> None:
    config = parse_config({"kind": "pipeline", "inputs": [IMAGE, {**IMAGE, "name": "extra"}],
                           "outputs": [LABELS], "steps": [DECODE, CLASSIFY, TOPK]},
                          "p/config.yaml")
    with pytest.raises(ConfigError, match="pipeline 'p': input 'extra' is read by no step"):
        plan("p", config, ["net"])


def test_a_cycle_is_refused_naming_its_steps() -> None:
    first = {"name": "a", "processor": "labels.topk", "inputs": {"logits": "y"},
             "outputs": {"labels": "x"}}
    second = {"name": "b", "processor": "labels.topk", "inputs": {"logits": "x"},
              "outputs": {"labels": "y", "scores": "labels"}}
    with pytest.raises(ConfigError, match=r"steps \['a', 'b'\] form a cycle"):
        plan("p", pipeline(first, second), [])


@pytest.mark.parametrize(("data", "message"), [
    ({"kind": "pipeline", "inputs": [IMAGE], "outputs": [LABELS]}, "needs steps"),
    ({"steps": [DECODE]}, "steps are for kind pipeline"),
    ({"kind": "pipeline", "inputs": [IMAGE], "outputs": [LABELS],
      "steps": [{**DECODE, "model": "net"}]}, "exactly one of model, processor"),
    ({"kind": "pipeline", "inputs": [IMAGE], "outputs": [LABELS],
      "steps": [{**CLASSIFY, "params": {"k": 1}}]}, "params and params_from are for processors"),
])
def test_the_config_schema_checks_steps(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(data, "p/config.yaml")


def spec(name: str, datatype: str, *shape: int) -> TensorSpec:
    return TensorSpec(name, datatype, shape)


def types(model_input: TensorSpec) -> dict[str, StepTypes]:
    return {
        "decode": StepTypes({"image": spec("image", "BYTES", -1)},
                            {"pixels": spec("pixels", "FP32", -1, 3, 8, 8)}),
        "classify": StepTypes({"x": model_input}, {"logits": spec("logits", "FP32", -1, 10)}),
        "top5": StepTypes(None, None),
    }


def test_matching_types_pass_and_variable_dims_match_any() -> None:
    config = pipeline(DECODE, CLASSIFY, TOPK)
    steps = plan("p", config, ["net"])
    check_types("p", steps, types(spec("x", "FP32", -1, 3, -1, -1)),
                [spec("image", "BYTES", -1)], [spec("labels", "BYTES", -1, 5)])


@pytest.mark.parametrize(("model_input", "message"), [
    (spec("x", "UINT8", -1, 3, 8, 8), r"step 'classify': input 'x' expects UINT8 \[-1, 3, 8, 8\], "
     r"tensor 'pixels' is FP32 \[-1, 3, 8, 8\]"),
    (spec("x", "FP32", -1, 3, 16, 16), r"input 'x' expects FP32 \[-1, 3, 16, 16\]"),
    (spec("x", "FP32", -1, 8, 8), r"input 'x' expects FP32 \[-1, 8, 8\]"),
])
def test_mismatched_dtypes_and_shapes_name_the_step(model_input: TensorSpec, message: str) -> None:
    steps = plan("p", pipeline(DECODE, CLASSIFY, TOPK), ["net"])
    with pytest.raises(ConfigError, match=message):
        check_types("p", steps, types(model_input), [spec("image", "BYTES", -1)], [])


def test_unmapped_and_unknown_step_tensors_are_refused() -> None:
    steps = plan("p", pipeline(DECODE, CLASSIFY, TOPK), ["net"])
    two_inputs = types(spec("x", "FP32", -1, 3, 8, 8))
    two_inputs["classify"] = StepTypes({"x": spec("x", "FP32", -1, 3, 8, 8),
                                        "mask": spec("mask", "BOOL", -1)}, None)
    with pytest.raises(ConfigError, match=r"step 'classify': input\(s\) \['mask'\] are not mapped"):
        check_types("p", steps, two_inputs, [spec("image", "BYTES", -1)], [])
    renamed = types(spec("x", "FP32", -1, 3, 8, 8))
    renamed["classify"] = StepTypes(None, {"probs": spec("probs", "FP32", -1, 10)})
    with pytest.raises(ConfigError, match=r"step 'classify': no output 'logits'"):
        check_types("p", steps, renamed, [spec("image", "BYTES", -1)], [])


def test_a_declared_output_must_match_what_its_step_writes() -> None:
    steps = plan("p", pipeline(DECODE, CLASSIFY, TOPK), ["net"])
    with pytest.raises(ConfigError, match=r"output 'pixels' is declared UINT8 \[-1, 3, 8, 8\], "
                                          r"its step writes FP32"):
        check_types("p", steps, types(spec("x", "FP32", -1, 3, 8, 8)),
                    [spec("image", "BYTES", -1)], [spec("pixels", "UINT8", -1, 3, 8, 8)])
