"""A pipeline request's access-log and span timings: each model step's queue, batch and compute
of its own (the steps wrote into one timing, so only the last step's showed)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from surge.engine.timing import RequestTiming, request_timing
from surge.repository import Repository
from surge.server.observe import RequestRecord
from tests.unit.engine.fakes import make_repo
from tests.unit.pipeline.test_served import MODEL, serving

TWO_STEPS = """\
kind: pipeline
max_batch_size: 8
inputs: [{name: values, datatype: FP32, shape: [-1, 4]}]
outputs: [{name: twice, datatype: FP32, shape: [-1, 4]}]
steps:
  - {name: first, model: m, inputs: {x: values}, outputs: {y: once}}
  - {name: second, model: m, inputs: {x: once}, outputs: {y: twice}}
"""


def _repository(root: Path) -> Repository:
    make_repo(root, MODEL)
    (root / "p").mkdir()
    (root / "p" / "config.yaml").write_text(TWO_STEPS)
    return Repository(root)


async def _timed_request(root: Path) -> tuple[RequestTiming, np.ndarray]:
    async with serving(_repository(root)) as (engine, _):
        timing = RequestTiming()
        token = request_timing.set(timing)
        try:
            outputs = await engine.infer("p", None, {"values": np.ones((2, 4), np.float32)})
        finally:
            request_timing.reset(token)
        return timing, outputs["twice"]


def test_each_model_step_is_timed_on_its_own(tmp_path: Path) -> None:
    timing, twice = asyncio.run(_timed_request(tmp_path))
    assert twice.tolist() == [[7.0] * 4] * 2  # 2(2x + 1) + 1
    assert [name for name, _ in timing.steps] == ["first", "second"]
    first, second = (step for _, step in timing.steps)
    assert 0 < first.queued <= first.dispatched <= first.done <= second.queued
    assert second.dispatched <= second.done
    assert (first.batch_size, second.batch_size) == (2, 2)
    assert timing.queue_s == first.queue_s + second.queue_s
    assert timing.batch_s == first.batch_s + second.batch_s


def test_the_log_line_sums_the_steps_and_the_spans_name_them(tmp_path: Path) -> None:
    timing, _ = asyncio.run(_timed_request(tmp_path))
    record = RequestRecord("http", "r1", "127.0.0.1:1", "p", None, timing=timing)
    record.finished = record.started + 0.01
    line = record.log_line()
    assert line["queue_ms"] == round(timing.queue_s * 1e3, 3)
    assert line["compute_ms"] == round(timing.batch_s * 1e3, 3)
    assert line["batch_size"] is None  # each step's batch is on its span
    engine_phases = [(name, attributes.get("surge.step")) for name, _, _, attributes
                     in record.phases()]
    assert engine_phases == [(phase, step) for step in ("first", "second")
                             for phase in ("queue", "batch", "compute")]
