"""Cheap processors run on the event loop; the others in the processor threads."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from surge.pipeline.steps import ProcessorStep, processor_step
from surge.processors import resolve
from surge.repository.config import ModelConfig, StepConfig


def _step(processor: str) -> ProcessorStep:
    step = StepConfig(name="s", processor=processor, inputs={"y": "y"}, outputs={"where": "w"})
    return processor_step("p", step, ModelConfig(name="p"))


@pytest.mark.parametrize(("name", "inline"), [("labels.topk", True), ("detection.boxes", True),
                                              ("image.decode", False), ("text.tokenize", False)])
def test_the_built_ins_say_whether_they_run_inline(name: str, inline: bool) -> None:
    assert resolve(name).inline is inline


def test_an_inline_step_runs_on_the_loop_and_others_on_processor_threads() -> None:
    step = _step("tests.unit.pipeline.processors:thread_name")
    inline = ProcessorStep(step.step, resolve("tests.unit.pipeline.processors:thread_name")
                           .__class__(step.processor.name, step.processor.run, None, True),
                           step.params, step.types)
    inputs = {"y": np.zeros((2, 1), np.float32)}

    async def both() -> tuple[str, str, str]:
        loop_thread = threading.current_thread().name
        pooled = await step.run(inputs, 2)
        on_loop = await inline.run(inputs, 2)
        return loop_thread, pooled["where"][0].decode(), on_loop["where"][0].decode()

    loop_thread, pooled, on_loop = asyncio.run(both())
    assert pooled.startswith("surge-processor")
    assert on_loop == loop_thread
