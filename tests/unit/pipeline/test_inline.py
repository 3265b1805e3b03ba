"""Cheap processors (and cheap calls, like small images) run on the event loop; the others in
the processor threads."""

from __future__ import annotations

import asyncio
import io
import threading

import numpy as np
import pytest
import simplejpeg
from PIL import Image

from surge.pipeline.steps import ProcessorStep, processor_step
from surge.processors import Processor, resolve
from surge.processors.images import INLINE_BYTES, INLINE_PIXELS, small_images
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


def _png(height: int, width: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((height, width), np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _jpeg(height: int, width: int) -> bytes:
    return bytes(simplejpeg.encode_jpeg(np.zeros((height, width, 3), np.uint8)))


def _files(*files: object) -> dict[str, np.ndarray]:
    return {"image": np.array(files, dtype=object)}


def test_small_images_are_decoded_on_the_loop_and_large_ones_in_a_thread() -> None:
    decode = resolve("image.decode")
    assert decode.inline_when is small_images
    side = int(INLINE_PIXELS ** 0.5)
    assert decode.runs_inline(_files(_png(128, 128)), {})
    assert decode.runs_inline(_files(_jpeg(side, side)), {})
    assert not decode.runs_inline(_files(_png(side, side + 1)), {})
    assert not decode.runs_inline(_files(_jpeg(side + 8, side)), {})
    # The request's images count together: one thread hop for a batch of many small files.
    assert not decode.runs_inline(_files(*[_png(128, 128)] * (INLINE_PIXELS // 128 ** 2 + 1)), {})


def test_what_is_not_a_file_is_decoded_in_a_thread_or_refused_at_once() -> None:
    assert not small_images(_files("a string"), {})
    assert not small_images(_files(_png(8, 8) + b"\x00" * INLINE_BYTES), {})  # small header, big file
    assert not small_images({"image": np.zeros((1, 8), np.uint8)}, {})
    assert small_images(_files(b"not an image"), {})  # refused before anything is decoded
    assert small_images(_files(b"\xff\xd8\xff" + b"\x00" * 16), {})  # a corrupt JPEG, likewise


def test_a_step_runs_inline_exactly_for_the_calls_its_processor_accepts() -> None:
    step = _step("tests.unit.pipeline.processors:thread_name")
    few_rows = Processor(step.processor.name, step.processor.run, None,
                         inline_when=lambda inputs, params: len(inputs["y"]) <= params["rows"])
    chooser = ProcessorStep(step.step, few_rows, {"rows": 2}, step.types)

    async def run(rows: int) -> tuple[str, str]:
        produced = await chooser.run({"y": np.zeros((rows, 1), np.float32)}, rows)
        return threading.current_thread().name, produced["where"][0].decode()

    loop_thread, where = asyncio.run(run(2))
    assert where == loop_thread
    loop_thread, where = asyncio.run(run(3))
    assert where.startswith("surge-processor")
