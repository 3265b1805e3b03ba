"""A pipeline in the Engine, on scripted pools: model steps keep their own batching, processor
steps run in threads, errors name the step, statistics and per-step metrics are the pipeline's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import json_format
from prometheus_client import generate_latest

from surge.engine import Engine, PoolEvents, PoolSpec
from surge.engine.route import VariantRoute, request_route
from surge.errors import ConfigError, InputError, ModelNotReadyError, ServingError
from surge.protocol.grpc_gen import grpc_service_pb2 as pb
from surge.protocol.metadata import model_config, model_metadata
from surge.repository import Repository
from surge.scheduler import Batch
from tests.unit.engine.fakes import FakePool, make_repo

MODEL = "max_batch_size: 8\nbatching: {max_queue_delay_ms: 20.0}\n"
PIPELINE = """\
kind: pipeline
max_batch_size: 8
inputs: [{{name: values, datatype: FP32, shape: [-1, {width}]}}]
outputs:
  - {{name: total, datatype: FP32, shape: [-1, 1]}}
  - {{name: flavour, datatype: BYTES, shape: [-1]}}
parameters: {{flavour: plain, score_threshold: 0.5}}
steps:
  - name: sum
    processor: tests.unit.pipeline.processors:{function}
    inputs: {{y: y}}
    outputs: {{total: total, flavour: flavour}}
    params: {{scale: 2}}
  - {{name: double, model: m, inputs: {{x: values}}, outputs: {{y: y}}}}
"""


class AutoPool(FakePool):
    """Answers each batch on the next loop iteration (y = 2x + 1)."""

    def dispatch(self, batch: Batch) -> None:
        super().dispatch(batch)
        index = next(i for i, held in enumerate(self.held) if batch in held)
        asyncio.get_running_loop().call_soon(self.finish, index)


class AutoPools:
    def __init__(self) -> None:
        self.built: list[AutoPool] = []

    def __call__(self, spec: PoolSpec, events: PoolEvents) -> AutoPool:
        self.built.append(AutoPool(spec, events))
        return self.built[-1]


def repository(root: Path, width: int = 4, function: str = "row_sum") -> Repository:
    make_repo(root, MODEL)
    (root / "p").mkdir()
    (root / "p" / "config.yaml").write_text(PIPELINE.format(width=width, function=function))
    return Repository(root)


@asynccontextmanager
async def serving(repo: Repository, models: list[str] | None = None
                  ) -> AsyncIterator[tuple[Engine, AutoPools]]:
    pools = AutoPools()
    engine = Engine(repo, models=models, pool_factory=pools)
    await engine.start()
    try:
        yield engine, pools
    finally:
        await engine.stop(grace_s=0.0)


def values(value: float, rows: int = 1) -> dict[str, np.ndarray]:
    return {"values": np.full((rows, 4), value, np.float32)}


async def _requests_flow_through_the_model_and_the_processor(tmp_path: Path) -> None:
    async with serving(repository(tmp_path), models=["p"]) as (engine, pools):
        assert engine.ready()
        assert engine.model_ready("m")
        results = await asyncio.gather(*(engine.infer("p", None, values(v)) for v in (1, 2, 3)))
        # 4 values of 2v + 1 summed, scaled by 2; `flavour` from the pipeline's parameters.
        assert [float(r["total"][0, 0]) for r in results] == [24.0, 40.0, 56.0]
        assert results[0]["flavour"].tolist() == [b"plain"]
        assert [b.size for b in pools.built[0].dispatched] == [3]  # batched together
        only = await engine.infer("p", None, values(1, rows=2), outputs=["total"])
        assert list(only) == ["total"]
        assert only["total"].shape == (2, 1)


async def _statistics_and_step_metrics_are_the_pipelines(tmp_path: Path) -> None:
    async with serving(repository(tmp_path)) as (engine, _):
        await engine.infer("p", None, values(1, rows=3))
        with pytest.raises(InputError):
            await engine.infer("p", None, values(-5))
        stats = engine.stats("p")
        assert (stats.inference_count, stats.execution_count) == (3, 1)
        assert stats.success[0] == 1
        assert stats.fail[0] == 1
        text = generate_latest(engine.metrics.registry).decode()
        assert 'surge_pipeline_step_duration_seconds_count{model="p",step="double"} 2.0' in text
        assert 'surge_pipeline_step_duration_seconds_count{model="p",step="sum"} 1.0' in text
        assert 'surge_pipeline_step_failures_total{model="p",step="sum"} 1.0' in text


async def _errors_name_the_step_and_keep_their_kind(tmp_path: Path) -> None:
    async with serving(repository(tmp_path)) as (engine, _):
        with pytest.raises(InputError, match="step 'sum': input 'y' holds a negative value"):
            await engine.infer("p", None, values(-5))
        with pytest.raises(InputError, match=r"input 'values' expects FP32 \[-1, 4\]"):
            await engine.infer("p", None, {"values": np.zeros((1, 3), np.float32)})
    for function, message in (("broken", "step 'sum' failed: RuntimeError: the processor has a bug"),
                              ("one_row", r"returned 'total' with shape \[1, 1\] for 2 row")):
        root = tmp_path / function
        async with serving(repository(root, function=function)) as (engine, _):
            with pytest.raises(ServingError, match=message):
                await engine.infer("p", None, values(1, rows=2))


async def _a_type_mismatch_fails_the_load_naming_the_step(tmp_path: Path) -> None:
    async with serving(repository(tmp_path, width=3)) as (engine, _):
        assert engine.model_ready("m")
        assert not engine.model_ready("p")
        row = next(r for r in engine.index() if r["name"] == "p")
        assert row["state"] == "UNAVAILABLE"
        assert "step 'double': input 'x' expects FP32 [-1, 4], tensor 'values' is FP32 [-1, 3]" \
            in row["reason"]
        with pytest.raises(ConfigError, match="step 'double'"):
            await engine.load("p")


async def _metadata_and_config_describe_the_pipeline(tmp_path: Path) -> None:
    async with serving(repository(tmp_path)) as (engine, _):
        handle = engine.model("p")
        metadata = model_metadata(handle)
        assert metadata["platform"] == "pipeline"
        assert metadata["versions"] == ["1"]
        assert [t["name"] for t in metadata["outputs"]] == ["total", "flavour"]
        config = model_config(handle)
        assert config["parameters"] == {"flavour": {"string_value": "plain"},
                                        "score_threshold": {"string_value": "0.5"}}
        assert config["input"] == [{"name": "values", "data_type": "TYPE_FP32", "dims": [4]}]
        # gRPC builds its ModelConfig message from the same dict, Triton's parameters map included.
        message = json_format.ParseDict(config, pb.ModelConfig())
        assert message.parameters["score_threshold"].string_value == "0.5"


async def _a_stopped_pipeline_refuses_requests(tmp_path: Path) -> None:
    async with serving(repository(tmp_path)) as (engine, _):
        await engine.unload("p")
        with pytest.raises(Exception, match="not loaded"):
            await engine.infer("p", None, values(1))
        await engine.load("p")
        await engine.unload("m")
        assert not engine.model_ready("p")  # its model step is gone
        with pytest.raises(ModelNotReadyError, match="not ready"):
            await engine.infer("p", None, values(1))


PROCESSORS_ONLY = """\
kind: pipeline
max_batch_size: 8
inputs: [{name: values, datatype: FP32, shape: [-1, 4]}]
outputs: [{name: total, datatype: FP32, shape: [-1, 1]}]
steps:
  - {name: sum, processor: "tests.unit.pipeline.processors:row_sum", inputs: {y: values},
     outputs: {total: total}}
"""


async def _a_pipeline_without_model_steps_refuses_a_variant_pin(tmp_path: Path) -> None:
    repo = repository(tmp_path)
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "config.yaml").write_text(PROCESSORS_ONLY)
    async with serving(repo, models=["q"]) as (engine, _):
        for pin, served in ((VariantRoute(), True), (VariantRoute(full_accuracy=True), True),
                            (VariantRoute(variant="original"), True),
                            (VariantRoute(variant="int8-static"), False)):
            token = request_route.set(pin)
            try:
                if served:
                    assert (await engine.infer("q", None, values(1)))["total"][0, 0] == 4.0
                else:
                    with pytest.raises(InputError, match="parameter 'variant': 'int8-static' "
                                       r"is not served by this model \(served: original\)"):
                        await engine.infer("q", None, values(1))
            finally:
                request_route.reset(token)


def test_a_pipeline_without_model_steps_refuses_a_variant_pin(tmp_path: Path) -> None:
    asyncio.run(_a_pipeline_without_model_steps_refuses_a_variant_pin(tmp_path))


@pytest.mark.parametrize("priority", ["1", 1.0, None, -1, 2**64])
def test_a_priority_no_level_names_is_refused(tmp_path: Path, priority: object) -> None:
    async def body() -> None:
        async with serving(repository(tmp_path)) as (engine, pools):
            with pytest.raises(InputError, match="priority must be an integer from 0 to"):
                await engine.infer("p", None, values(1), priority=priority)  # type: ignore[arg-type]
            assert all(not pool.dispatched for pool in pools.built)  # a TypeError for '1'

    asyncio.run(body())


def test_the_repository_lists_a_pipeline(tmp_path: Path) -> None:
    entries = {e.name: e for e in repository(tmp_path).entries()}
    assert (entries["p"].state, entries["p"].served) == ("READY", (1,))
    (tmp_path / "p" / "config.yaml").write_text(
        PIPELINE.format(width=4, function="row_sum").replace("model: m", "model: gone"))
    entry = Repository(tmp_path)._entry("p")
    assert entry.state == "UNAVAILABLE"
    assert "unknown model 'gone'" in entry.reason


TOP = """\
kind: pipeline
max_batch_size: 8
inputs: [{{name: values, datatype: FP32, shape: [-1, 4]}}]
outputs: [{{name: labels, datatype: BYTES, shape: [-1, 2]}}]
steps:
  - {{name: double, model: m, inputs: {{x: values}}, outputs: {{y: y}}}}
  - {{name: top, processor: {processor}, inputs: {{logits: y}}, outputs: {{labels: labels}},
     params: {{k: {k}}}}}
"""


@pytest.mark.parametrize(("processor", "k", "reason"), [
    ("labels.topk", 2, ""),
    ("labels.topz", 2, "step 'top': processor 'labels.topz': surge.processors.classification has "
                       "no function 'topz'"),
    ("labels.topk", 0, "step 'top': params.k must be an integer from 1 to 1000, got 0"),
    ("labels.topk", 3, "output 'labels' is declared BYTES [-1, 2], its step writes BYTES [-1, 3]"),
])
def test_the_repository_checks_a_pipelines_processor_steps(tmp_path: Path, processor: str, k: int,
                                                           reason: str) -> None:
    """`surge models` lists a pipeline whose processors or their params are wrong as loading it
    would find it (it said READY)."""
    make_repo(tmp_path, MODEL)
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "config.yaml").write_text(TOP.format(processor=processor, k=k))
    entry = Repository(tmp_path)._entry("p")
    assert (entry.state, entry.reason) == ("UNAVAILABLE" if reason else "READY",
                                           f"pipeline 'p', {reason}" if reason.startswith("step")
                                           else f"pipeline 'p': {reason}" if reason else "")


# The scenarios above, each on its own event loop.
def test_requests_flow_through_the_model_and_the_processor(tmp_path: Path) -> None:
    asyncio.run(_requests_flow_through_the_model_and_the_processor(tmp_path))


def test_statistics_and_step_metrics_are_the_pipelines(tmp_path: Path) -> None:
    asyncio.run(_statistics_and_step_metrics_are_the_pipelines(tmp_path))


def test_errors_name_the_step_and_keep_their_kind(tmp_path: Path) -> None:
    asyncio.run(_errors_name_the_step_and_keep_their_kind(tmp_path))


def test_a_type_mismatch_fails_the_load_naming_the_step(tmp_path: Path) -> None:
    asyncio.run(_a_type_mismatch_fails_the_load_naming_the_step(tmp_path))


def test_metadata_and_config_describe_the_pipeline(tmp_path: Path) -> None:
    asyncio.run(_metadata_and_config_describe_the_pipeline(tmp_path))


def test_a_stopped_pipeline_refuses_requests(tmp_path: Path) -> None:
    asyncio.run(_a_stopped_pipeline_refuses_requests(tmp_path))


UNBATCHED = PROCESSORS_ONLY.replace("max_batch_size: 8", "max_batch_size: 0")


async def _an_unbatched_pipeline_takes_tensors_of_any_leading_size(tmp_path: Path) -> None:
    repo = repository(tmp_path)
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "config.yaml").write_text(UNBATCHED)
    async with serving(repo, models=["q"]) as (engine, _):
        answer = await engine.infer("q", None, values(1.0, rows=9))
        assert answer["total"].shape == (9, 1)
        assert engine.stats("q").inference_count == 1  # one request, not nine rows


def test_an_unbatched_pipeline_takes_tensors_of_any_leading_size(tmp_path: Path) -> None:
    """Its first dimension is no batch: a step's 9 output rows for a request counted as one
    row failed as a processor fault (a 500)."""
    asyncio.run(_an_unbatched_pipeline_takes_tensors_of_any_leading_size(tmp_path))
