"""Triton's metric names (nv_inference_*, nv_cache_*) made from the model statistics: their
values against known statistics, the text and OpenMetrics formats, a real engine's counters,
and the sum over several front ends through the multiprocess files."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry, multiprocess, values
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from surge.engine.interface import InferenceEngine
from surge.engine.metrics import SurgeMetrics
from surge.engine.stats import ModelStats
from surge.engine.triton_metrics import TritonSource, metric_names
from surge.errors import NotFoundError, SurgeError
from surge.server.metrics_port import MetricsApp
from tests.unit.engine.fakes import serving, settle

BATCHING = "max_batch_size: 4\nbatching: {max_queue_delay_ms: 2}\n"


def _stats(name: str, version: int, scale: int = 1, cached: bool = True) -> ModelStats:
    """Statistics of a version whose config enables the response cache (`cached`); one of its
    two failures REJECTED, the other given no reason (a pipeline's: OTHER)."""
    return ModelStats(
        name, version, inference_count=12 * scale, execution_count=4 * scale,
        last_inference=0, success=(7 * scale, 9_876_543 * scale), fail=(2 * scale, 5_000),
        queue=(9 * scale, 1_234_999 * scale), compute_input=(4 * scale, 40_500 * scale),
        compute_infer=(4 * scale, 400_000 * scale), compute_output=(4 * scale, 4_999 * scale),
        cache_hit=(3 * scale, 30_000 * scale), cache_miss=(5 * scale, 51_000 * scale),
        fail_reasons={"REJECTED": scale}, response_cache=cached)


class _Engine:
    """The members of an engine the Triton families read, with statistics a test chose."""

    def __init__(self, stats: dict[tuple[str, int], ModelStats]) -> None:
        self._stats = stats
        self.metrics = SurgeMetrics()

    def index(self) -> list[dict[str, str]]:
        rows = [{"name": n, "version": str(v), "state": "READY", "reason": ""}
                for n, v in self._stats]
        return [*rows, {"name": "cold", "version": "", "state": "UNAVAILABLE", "reason": ""}]

    def stats(self, name: str, version: int | None = None) -> ModelStats:
        try:
            return self._stats[(name, cast(int, version))]
        except KeyError:
            raise NotFoundError(f"model {name!r}") from None


def _scrape(app: MetricsApp, accept: bytes = b"", query: bytes = b"") -> str:
    return asyncio.run(_scraped(app, accept, query))


async def _scraped(app: MetricsApp, accept: bytes = b"", query: bytes = b"") -> str:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/metrics",
             "headers": [(b"accept", accept)] if accept else [], "query_string": query}
    await app(scope, None, send)
    return cast(bytes, sent[1]["body"]).decode()


def _app(engine: Any, cache: bool = False, surge: bool = True) -> MetricsApp:
    source = TritonSource(cast(InferenceEngine, engine), cache, shared=False)
    return MetricsApp(engine.metrics.registry, source, surge=surge)


def _value(text: str, name: str, model: str = "m", version: int = 1,
           reason: str | None = None) -> int:
    why = "" if reason is None else f'reason="{reason}",'
    line = f'{name}{{model="{model}",{why}version="{version}"}} '
    (found,) = [row for row in text.splitlines() if row.startswith(line)]
    return int(found[len(line):])


def test_each_counter_is_the_statistic_it_names_in_microseconds() -> None:
    text = _scrape(_app(_Engine({("m", 1): _stats("m", 1)})))
    expected = {"nv_inference_request_success": 7, "nv_inference_count": 12, "nv_inference_exec_count": 4,
                "nv_inference_request_duration_us": 9_876,
                "nv_inference_queue_duration_us": 1_234,
                "nv_inference_compute_input_duration_us": 40,
                "nv_inference_compute_infer_duration_us": 400,
                "nv_inference_compute_output_duration_us": 4,
                "nv_inference_pending_request_count": 0}
    assert {name: _value(text, name) for name in expected} == expected
    reasons = {why: _value(text, "nv_inference_request_failure", reason=why)
               for why in ("REJECTED", "CANCELED", "BACKEND", "OTHER")}
    assert reasons == {"REJECTED": 1, "CANCELED": 0, "BACKEND": 0, "OTHER": 1}
    # Typed as Triton types them, named without prometheus_client's `_total`.
    assert "# TYPE nv_inference_request_success counter\n" in text
    assert "# TYPE nv_inference_pending_request_count gauge\n" in text
    assert "_total{model=\"m\",version=\"1\"}" not in text.split("# HELP nv_", 1)[1]
    assert "surge_requests_total" in text  # Surge's own names still there
    assert "nv_cache_" not in text  # a server without a response cache has none, as Triton


def test_cache_counters_with_a_response_cache() -> None:
    text = _scrape(_app(_Engine({("m", 1): _stats("m", 1)}), cache=True))
    assert _value(text, "nv_cache_num_hits_per_model") == 3
    assert _value(text, "nv_cache_num_misses_per_model") == 5
    assert _value(text, "nv_cache_hit_duration_per_model") == 30
    assert _value(text, "nv_cache_miss_duration_per_model") == 51


def test_every_served_version_has_its_own_series_and_the_queue_goes_to_the_latest() -> None:
    engine = _Engine({("m", 1): _stats("m", 1), ("m", 2): _stats("m", 2, scale=10)})
    engine.metrics.queue_depth.labels("m").set(5)
    text = _scrape(_app(engine))
    assert _value(text, "nv_inference_request_success", version=1) == 7
    assert _value(text, "nv_inference_request_success", version=2) == 70
    assert _value(text, "nv_inference_pending_request_count", version=2) == 5
    assert _value(text, "nv_inference_pending_request_count", version=1) == 0
    assert 'model="cold"' not in text  # a model not served has no series


def test_only_triton_names_and_a_name_filter() -> None:
    engine = _Engine({("m", 1): _stats("m", 1)})
    text = _scrape(_app(engine, surge=False))
    assert "surge_" not in text
    assert _value(text, "nv_inference_count") == 12
    text = _scrape(_app(engine), query=b"name[]=nv_inference_count&name[]=surge_models_loaded")
    families = {row.split()[2] for row in text.splitlines() if row.startswith("# TYPE")}
    assert families == {"nv_inference_count", "surge_models_loaded"}


def test_openmetrics_keeps_triton_sample_names_as_unknown_families() -> None:
    text = _scrape(_app(_Engine({("m", 1): _stats("m", 1)})),
                   accept=b"application/openmetrics-text; version=1.0.0")
    assert text.endswith("# EOF\n")
    parsed = {f.name: f for f in text_string_to_metric_families(text)}
    success = parsed["nv_inference_request_success"]
    assert success.type == "unknown"
    assert [(s.name, s.value) for s in success.samples] == [("nv_inference_request_success", 7)]
    assert parsed["nv_inference_pending_request_count"].type == "gauge"


def test_the_values_of_a_served_model_agree_with_its_statistics(tmp_path: Path) -> None:
    """A real engine: a batch of three answered, one request failed, two left queued."""
    async def body() -> None:
        async with serving(tmp_path, "max_batch_size: 4\nbatching: {max_queue_delay_ms: 2}\n"
                                     "instances: 1\n", depth=1) as s:
            tasks = await s.infer(1, 2, 3)
            await s.tick(0.002)
            s.clock.advance(0.004)
            s.pool.finish(input_ns=2_000, infer_ns=8_000, output_ns=1_000)
            await asyncio.gather(*tasks)
            (failing,) = await s.infer(4)
            await s.tick(0.002)
            s.pool.fail()
            with pytest.raises(RuntimeError):
                await failing
            queued = await s.infer(5, 6)
            await settle()
            source = TritonSource(s.engine, cache=False, shared=False)
            text = await _scraped(MetricsApp(s.engine.metrics.registry, source))
            stats = s.engine.stats("m")
            assert _value(text, "nv_inference_request_success") == stats.success[0] == 3
            # The model raised on its batch: its failure is the backend's, as in Triton.
            assert stats.fail[0] == 1
            assert _value(text, "nv_inference_request_failure", reason="BACKEND") == 1
            assert _value(text, "nv_inference_request_failure", reason="OTHER") == 0
            assert _value(text, "nv_inference_count") == stats.inference_count == 3
            assert _value(text, "nv_inference_exec_count") == stats.execution_count == 1
            assert _value(text, "nv_inference_request_duration_us") == stats.success[1] // 1000
            assert _value(text, "nv_inference_queue_duration_us") == stats.queue[1] // 1000
            assert _value(text, "nv_inference_compute_infer_duration_us") == 8
            pending = _value(text, "nv_inference_pending_request_count")
            assert pending == s.model.scheduler.queued == 2
            for task in queued:
                task.cancel()
            await asyncio.gather(*queued, return_exceptions=True)

    asyncio.run(body())


@pytest.fixture
def shared_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The multiprocess directory several front ends write into."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    return tmp_path


def _publish_as(pid: int, engine: _Engine, monkeypatch: pytest.MonkeyPatch) -> TritonSource:
    """A front end's source writing the files of process `pid`."""
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue(lambda: pid))
    source = TritonSource(cast(InferenceEngine, engine), cache=True, shared=True)
    asyncio.run(source.publish())
    return source


def _render_shared(registry: CollectorRegistry) -> str:
    """What a front end's port answers with several front ends: the files' sums."""
    class _FromFiles(TritonSource):
        async def gather(self) -> None:
            return None

    source = _FromFiles(cast(InferenceEngine, _Engine({})), True, shared=False)
    return _scrape(MetricsApp(registry, source))


def test_several_front_ends_report_the_sum_and_a_dead_ones_counts_stay(
        shared_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = _Engine({("m", 1): _stats("m", 1)}), _Engine({("m", 1): _stats("m", 1, 2)})
    first.metrics.queue_depth.labels("m").set(4)
    second.metrics.queue_depth.labels("m").set(1)
    _publish_as(101, first, monkeypatch)
    _publish_as(102, second, monkeypatch)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(shared_dir))
    text = _render_shared(registry)
    assert _value(text, "nv_inference_request_success") == 7 + 14
    assert _value(text, "nv_inference_count") == 12 + 24
    assert _value(text, "nv_cache_num_hits_per_model") == 3 + 6
    assert _value(text, "nv_inference_pending_request_count") == 4 + 1
    assert "# TYPE nv_inference_count counter\n" in text
    multiprocess.mark_process_dead(101, str(shared_dir))
    text = _render_shared(registry)
    assert _value(text, "nv_inference_count") == 12 + 24  # counters never go back
    assert _value(text, "nv_inference_pending_request_count") == 1  # its queue is gone


@pytest.mark.parametrize("value", ["", "nv", "surge,prom", ","])
def test_metrics_names_refuses_what_it_does_not_know(value: str) -> None:
    with pytest.raises(SurgeError, match=r"--metrics-names .*surge, triton or surge,triton"):
        metric_names(value)


@pytest.mark.parametrize("value", [5, None, ("surge", 3), ()])
def test_serve_options_refuse_metrics_names_that_are_no_names(value: Any) -> None:
    from surge.server.process import ServeOptions

    with pytest.raises(SurgeError, match=r"--metrics-names"):
        ServeOptions(http_port=0, grpc_port=0, metrics_port=0, metrics_names=value)


def test_metrics_names_takes_either_or_both() -> None:
    assert metric_names("surge") == ("surge",)
    assert metric_names(" Triton ") == ("triton",)
    assert metric_names("triton,surge,triton") == ("triton", "surge")


def test_a_front_end_writes_its_last_counts_when_it_stops(
        shared_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Written once a second while it serves, and once more at its drain: the requests of its
    last second are in the sums after it exits."""
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue(lambda: 201))
    engine = _Engine({("m", 1): _stats("m", 1)})
    source = TritonSource(cast(InferenceEngine, engine), cache=False, shared=True)

    async def body() -> None:
        source.start()
        await settle()
        engine._stats[("m", 1)] = _stats("m", 1, scale=3)
        await source.stop()

    asyncio.run(body())
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(shared_dir))
    assert _value(_render_shared(registry), "nv_inference_request_success") == 21
