"""Prometheus metrics of one server, in a registry of its own (several servers per process in tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Latency buckets from 0.5 ms to 30 s: tiny models answer in about a millisecond, large
# batches on CPU take seconds.
_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            10.0, 30.0)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256)

# The request counter's outcomes grouped into the request histogram's three: a quick 503 (queue
# full) in the same histogram as the answers would pull their p99 down under overload, and a
# label per counter outcome would multiply the buckets for little.
REFUSED = frozenset({"rejected", "expired", "not_ready", "not_found", "bad_request"})


def duration_outcome(outcome: str) -> str:
    """`success` (answered), `refused` (turned away unanswered: rejected, expired, not_ready,
    not_found, bad_request) or `error` (worker_crashed, cancelled, error)."""
    if outcome == "success":
        return outcome
    return "refused" if outcome in REFUSED else "error"


class SurgeMetrics:
    """Request, queue, compute and worker metrics, labelled by model. A gauge's
    multiprocess_mode says how several front ends' values combine (surge/server/frontends.py)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("surge_requests", "Finished inference requests by outcome and "
                                "protocol (http, grpc).", ["model", "outcome", "protocol"],
                                registry=r)
        self.request_duration = Histogram(
            "surge_request_duration_seconds", "Time from receiving a request to answering it, "
            "by outcome: success (answered), refused (turned away unanswered: queue full, "
            "expired, bad request, unknown or unready model), error (failed or cancelled).",
            ["model", "outcome"], buckets=_SECONDS, registry=r)
        self.queue_duration = Histogram(
            "surge_queue_duration_seconds", "Time a request waited in the queue for its batch.",
            ["model"], buckets=_SECONDS, registry=r)
        self.compute_duration = Histogram(
            "surge_compute_duration_seconds",
            "Time from dispatching a batch to a worker to having its outputs back.",
            ["model"], buckets=_SECONDS, registry=r)
        self.batch_size = Histogram("surge_batch_size", "Items per computed batch.", ["model"],
                                    buckets=_BATCH, registry=r)
        self.queue_depth = Gauge("surge_queue_depth", "Requests waiting in the queue.", ["model"],
                                 registry=r, multiprocess_mode="livesum")
        self.rejected = Counter("surge_rejected", "Requests rejected at admission.",
                                ["model", "reason"], registry=r)
        self.expired = Counter("surge_expired", "Requests whose deadline passed while queued.",
                               ["model"], registry=r)
        self.worker_restarts = Counter("surge_worker_restarts", "Worker processes restarted.",
                                       ["model"], registry=r)
        self.worker_spawn_failures = Counter(
            "surge_worker_spawn_failures",
            "Worker restarts that could not start a process (tried again with backoff).",
            ["model"], registry=r)
        self.worker_hangs = Counter(
            "surge_worker_hangs", "Workers killed because a batch ran far past its estimate.",
            ["model"], registry=r)
        self.model_loads = Counter(
            "surge_model_loads", "Model loads and reloads by outcome (success, failure); a failed "
            "reload leaves the served version in place.", ["model", "outcome"], registry=r)
        self._add_control_metrics(r)
        self._add_cache_metrics(r)
        self.live_instances = Gauge("surge_live_instances",
                                    "Worker processes loaded and taking batches.", ["model"],
                                    registry=r, multiprocess_mode="livesum")
        self.live_sequences = Gauge(
            "surge_live_sequences", "Sequences of a sequence model holding a state (started, "
            "neither ended nor idled out).", ["model"], registry=r, multiprocess_mode="livesum")
        self.models_loaded = Gauge("surge_models_loaded", "Models loaded (serving or "
                                   "draining), whatever their number of versions.", registry=r,
                                   multiprocess_mode="livemax")
        self.model_evictions = Counter(
            "surge_model_evictions", "Models unloaded to fit the memory budget (least recently "
            "used first); the next request loads them again.", ["model"], registry=r)
        self.cold_start = Histogram(
            "surge_cold_start_seconds", "Time to load a model for the request that found it "
            "unloaded (listed on demand, or evicted).", ["model"], buckets=_SECONDS, registry=r)
        self.model_memory = Gauge(
            "surge_model_memory_bytes", "Resident memory of a model, measured after its last "
            "load (its worker processes, or what it added to a shared group; several front "
            "ends: the sum).", ["model"], registry=r, multiprocess_mode="livesum")

    def _add_cache_metrics(self, r: CollectorRegistry) -> None:
        """The response cache's (`surge serve --response-cache-bytes`, docs/serving-engine.md)."""
        self.cache_hits = Counter(
            "surge_cache_hits", "Requests answered from the response cache (the model did not "
            "run).", ["model"], registry=r)
        self.cache_misses = Counter(
            "surge_cache_misses", "Requests of a model with response_cache that the cache did "
            "not hold (computed, then stored when they succeed).", ["model"], registry=r)
        self.cache_bytes = Gauge(
            "surge_response_cache_bytes", "Bytes of answers the response cache holds (several "
            "front ends: the sum of their own caches).", registry=r, multiprocess_mode="livesum")

    def _add_control_metrics(self, r: CollectorRegistry) -> None:
        """The run-time SLO control's metrics: attainment, the chosen waits, the latency
        model, shed requests by reason and the accuracy ladder (docs/slo-control.md)."""
        self.slo_requests = Counter(
            "surge_slo_requests", "Answered requests of a model with slo_p99_ms, by whether they "
            "finished within it (within=yes: goodput; yes / all: attainment).",
            ["model", "within"], registry=r)
        self.batch_wait = Histogram(
            "surge_batch_wait_seconds", "How long the oldest request of each batch waited for "
            "it: the wait the batching chose.", ["model"], buckets=_SECONDS, registry=r)
        self.batch_time_fit = Gauge(
            "surge_batch_time_fit_seconds", "The fitted batch time a + b * n: term=intercept "
            "is a, term=per_item is b (slowest live instance).", ["model", "term"],
            registry=r, multiprocess_mode="livemax")
        self.batch_time_ratio = Histogram(
            "surge_batch_time_ratio", "Measured over predicted time of each batch (1 = the "
            "latency model was right).", ["model"],
            buckets=(0.5, 0.67, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 4.0), registry=r)
        self.shed = Counter(
            "surge_shed_requests", "Requests refused or dropped unanswered, by reason: "
            "queue_full (admission, queue at max_size), predicted_miss (admission, predicted to "
            "finish past its deadline), deadline (expired while queued), late (refused at dispatch: "
            "its batch predicted to finish past its deadline).", ["model", "reason"],
            registry=r)
        self.variant_requests = Counter(
            "surge_variant_requests", "Answered requests of a laddered model by the variant that "
            "computed them (the variant mix).", ["model", "variant"], registry=r)
        self.ladder_recomputed = Counter(
            "surge_ladder_recomputed", "Unpinned requests of a laddered model a cheaper variant "
            "answered with NaN or infinite values, computed again on the top variant, by the "
            "variant that answered them so.", ["model", "variant"], registry=r)
        self.ladder_share = Gauge(
            "surge_ladder_share", "Share of the unpinned traffic the accuracy ladder sends to "
            "each variant now (several front ends: the largest).", ["model", "variant"],
            registry=r, multiprocess_mode="livemax")
        self.ladder_predicted_p99 = Gauge(
            "surge_ladder_predicted_p99_seconds", "The ladder's predicted p99 of its current "
            "mix at the measured arrival rate (-1: no mix keeps up).", ["model"], registry=r,
            multiprocess_mode="livemax")

    def observe_request(self, model: str, outcome: str, seconds: float,
                        protocol: str = "http") -> None:
        """Count one finished request (outcome: success, rejected, expired, ...) and its duration
        (the front ends count theirs through surge.server.outcome.RequestObserver, cached)."""
        self.requests.labels(model, outcome, protocol).inc()
        self.request_duration.labels(model, duration_outcome(outcome)).observe(seconds)
