"""Each processor step's CPU time is measured on the thread that runs it (the event loop or a
processor thread) and reported in the pipeline's statistics and as a Prometheus counter."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import generate_latest

from surge.errors import InputError
from surge.pipeline.metrics import StepCpu
from surge.pipeline.served import PipelineStats
from surge.pipeline.steps import ProcessorStep, processor_step
from surge.processors import Processor
from surge.protocol.metadata import model_statistics
from surge.repository.config import ModelConfig, StepConfig
from tests.unit.pipeline.test_served import repository, serving, values

BURN_MS = 30


def _cpu() -> StepCpu:
    return StepCpu()


def _step(inline: bool, **params: object) -> ProcessorStep:
    config = StepConfig(name="s", processor="tests.unit.pipeline.processors:burn",
                        inputs={"y": "y"}, outputs={"total": "t"}, params=params)
    step = processor_step("p", config, ModelConfig(name="p"))
    processor = Processor(step.processor.name, step.processor.run, None, inline=inline)
    return ProcessorStep(step.step, processor, step.params, step.types)


def _run(step: ProcessorStep, cpu: StepCpu) -> dict[str, np.ndarray]:
    return asyncio.run(step.run({"y": np.ones((2, 3), np.float32)}, 2, cpu))


@pytest.mark.parametrize("inline", [True, False])
def test_a_step_that_burns_cpu_shows_it_on_the_loop_and_in_a_thread(inline: bool) -> None:
    cpu = _cpu()
    produced = _run(_step(inline, cpu_ms=BURN_MS), cpu)
    assert produced["total"].tolist() == [[3.0], [3.0]]
    snapshot = cpu.snapshot()
    assert snapshot["calls"] == 1
    # At least the burn (the thread that ran it, not the loop awaiting it); well under 10x.
    assert BURN_MS * 1e6 <= snapshot["cpu_ns"] < 10 * BURN_MS * 1e6
    assert snapshot["inline_calls"] == int(inline)
    assert snapshot["inline_cpu_ns"] == (snapshot["cpu_ns"] if inline else 0)


@pytest.mark.parametrize("inline", [True, False])
def test_waiting_is_not_cpu(inline: bool) -> None:
    cpu = _cpu()
    _run(_step(inline, sleep_ms=100), cpu)
    assert cpu.snapshot()["cpu_ns"] < 50e6


def test_a_failed_call_counts_its_cpu_and_still_fails() -> None:
    cpu = _cpu()
    with pytest.raises(InputError, match="refused after the work"):
        _run(_step(False, cpu_ms=BURN_MS, fail=True), cpu)
    assert cpu.snapshot()["calls"] == 1
    assert cpu.snapshot()["cpu_ns"] >= BURN_MS * 1e6


async def _statistics_and_the_counter_report_each_processor_steps_cpu(tmp_path: Path) -> None:
    repo = repository(tmp_path, function="burn")
    config = tmp_path / "p" / "config.yaml"
    config.write_text(config.read_text().replace("{scale: 2}", f"{{scale: 2, cpu_ms: {BURN_MS}}}"))
    async with serving(repo) as (engine, _):
        for value in (1, 2, 3):
            await engine.infer("p", None, values(value))
        stats = engine.stats("p")
        assert isinstance(stats, PipelineStats)
        assert set(stats.steps) == {"sum"}  # processor steps only: a model step's CPU is its own
        assert stats.steps["sum"]["calls"] == 3
        assert stats.steps["sum"]["cpu_ns"] >= 3 * BURN_MS * 1e6
        text = generate_latest(engine.metrics.registry).decode()
        line = next(row for row in text.splitlines()
                    if row.startswith('surge_pipeline_step_cpu_seconds_total{model="p",step="sum"}'))
        assert float(line.split()[-1]) == pytest.approx(stats.steps["sum"]["cpu_ns"] / 1e9)
        entry = model_statistics("p", 1, stats)  # what GET /v2/models/p/stats answers
        assert entry["steps"]["sum"]["calls"] == 3
        assert "steps" not in model_statistics("m", 1, engine.stats("m"))


def test_statistics_and_the_counter_report_each_processor_steps_cpu(tmp_path: Path) -> None:
    asyncio.run(_statistics_and_the_counter_report_each_processor_steps_cpu(tmp_path))
