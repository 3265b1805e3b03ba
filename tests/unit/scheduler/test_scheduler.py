"""The scheduler's rules, driven with a fake clock (plain floats) and scripted outputs."""

from __future__ import annotations

import itertools
import pickle
from functools import partial

import numpy as np
import pytest

from surge.errors import InputError, QueueFullError
from surge.scheduler import Request, Scheduler, SchedulerConfig, shape_key

_ids = itertools.count(1)


def req(rows: int = 1, *, now: float = 0.0, priority: int = 0, deadline: float | None = None,
        features: int = 4, dtype: type = np.float32, fill: float | None = None,
        outputs: tuple[str, ...] | None = None) -> Request:
    value = fill if fill is not None else float(next(_ids))
    x = np.full((rows, features), value, dtype=dtype)
    inputs = {"x": x}
    return Request(next(_ids), inputs, rows, shape_key(inputs, True), now, deadline, priority,
                   outputs)


def scheduler(**kwargs: object) -> Scheduler:
    defaults: dict[str, object] = {"max_batch_size": 8, "max_queue_delay_s": 0.010}
    defaults.update(kwargs)
    return Scheduler(SchedulerConfig(**defaults))  # type: ignore[arg-type]


def ids(batch: object) -> list[int]:
    return [r.id for r in batch.requests]  # type: ignore[attr-defined]


# -- batching ------------------------------------------------------------------------------
def test_full_batch_dispatches_at_once() -> None:
    s = scheduler(max_batch_size=4)
    requests = [s.add(req(), 0.0) for _ in range(5)]
    batch = s.next_batch(0.0, idle_workers=1)
    assert batch is not None
    assert ids(batch) == [r.id for r in requests[:4]]
    assert batch.size == 4
    assert s.queued == 1


def test_partial_batch_waits_for_the_delay_then_goes() -> None:
    s = scheduler(max_batch_size=8, max_queue_delay_s=0.010)
    first = s.add(req(now=0.0), 0.0)
    s.add(req(now=0.004), 0.004)
    assert s.next_batch(0.009, 1) is None
    assert s.next_wakeup(0.009) == pytest.approx(0.010)  # measured from the oldest request
    batch = s.next_batch(0.010, 1)
    assert batch is not None
    assert ids(batch)[0] == first.id
    assert batch.size == 2


def test_partial_batch_is_shared_among_idle_workers() -> None:
    s = scheduler(max_batch_size=8, max_queue_delay_s=0.010)
    for _ in range(5):
        s.add(req(), 0.0)
    assert s.next_batch(0.005, idle_workers=4, spread=2) is None  # still within the delay
    first = s.next_batch(0.010, idle_workers=4, spread=2)
    assert first is not None
    assert first.size == 3  # ceil(5 / 2)
    rest = s.next_batch(0.010, idle_workers=3, spread=1)
    assert rest is not None
    assert rest.size == 2


def test_full_batch_is_not_split_among_idle_workers() -> None:
    s = scheduler(max_batch_size=4)
    for _ in range(4):
        s.add(req(), 0.0)
    batch = s.next_batch(0.0, idle_workers=4, spread=2)
    assert batch is not None
    assert batch.size == 4


def test_no_idle_worker_no_batch_and_no_delay_wakeup() -> None:
    s = scheduler(max_batch_size=2)
    s.add(req(), 0.0)
    s.add(req(), 0.0)
    assert s.next_batch(1.0, idle_workers=0) is None
    assert s.next_wakeup(1.0, idle_workers=0) is None  # a completion wakes the driver instead


def test_batching_off_sends_each_request_alone() -> None:
    s = scheduler(max_batch_size=1)
    s.add(req(), 0.0)
    s.add(req(), 0.0)
    batch = s.next_batch(0.0, 1)
    assert batch is not None
    assert batch.size == 1


def test_preferred_batch_size_dispatches_before_the_delay() -> None:
    s = scheduler(max_batch_size=8, preferred_batch_sizes=(2, 4))
    for _ in range(3):
        s.add(req(), 0.0)
    batch = s.next_batch(0.0, 1)
    assert batch is not None
    assert batch.size == 2  # 3 queued: the largest preferred size reachable is 2
    assert s.next_batch(0.0, 1) is None  # 1 left, not preferred: waits for the delay


def test_largest_preferred_size_is_chosen() -> None:
    s = scheduler(max_batch_size=8, preferred_batch_sizes=(2, 4))
    for _ in range(5):
        s.add(req(), 0.0)
    batch = s.next_batch(0.0, 1)
    assert batch is not None
    assert batch.size == 4


def test_multi_row_requests_fill_up_to_max_batch_size() -> None:
    s = scheduler(max_batch_size=8)
    a = s.add(req(3), 0.0)
    b = s.add(req(4), 0.0)
    c = s.add(req(2), 0.0)  # 3 + 4 + 2 > 8: waits for the next batch
    batch = s.next_batch(0.0, 1)
    assert batch is not None
    assert ids(batch) == [a.id, b.id]
    assert batch.offsets == (0, 3, 7)
    rest = s.next_batch(1.0, 1)
    assert rest is not None
    assert ids(rest) == [c.id]


def test_request_larger_than_max_batch_is_refused() -> None:
    s = scheduler(max_batch_size=4)
    with pytest.raises(InputError, match="batch size 5 exceeds 4"):  # the client's value: a 400
        s.add(req(5), 0.0)


def test_shape_incompatible_requests_are_kept_apart() -> None:
    s = scheduler(max_batch_size=8)
    narrow = [s.add(req(features=4), 0.0) for _ in range(2)]
    wide = [s.add(req(features=6), 0.0) for _ in range(2)]
    ints = s.add(req(features=4, dtype=np.int64), 0.0)
    batches = [s.next_batch(1.0, 1) for _ in range(3)]
    assert s.next_batch(1.0, 1) is None
    groups = sorted(sorted(ids(b)) for b in batches if b is not None)
    assert groups == sorted([sorted(r.id for r in narrow), sorted(r.id for r in wide), [ints.id]])


def test_batch_is_split_back_to_the_right_requests() -> None:
    s = scheduler(max_batch_size=8)
    a = s.add(req(1, fill=1.0), 0.0)
    b = s.add(req(3, fill=2.0), 0.0)
    c = s.add(req(2, fill=3.0, outputs=("y",)), 0.0)
    batch = s.next_batch(1.0, 1)
    assert batch is not None
    joined = np.concatenate([r.inputs["x"] for r in batch.requests])
    outputs = {"y": joined * 10, "z": joined.sum(axis=1, keepdims=True)}
    done = {d.request.id: d.outputs for d in s.complete(batch, outputs, 1.5)}
    assert done[a.id]["y"].shape == (1, 4)
    np.testing.assert_array_equal(done[a.id]["y"], np.full((1, 4), 10.0))
    np.testing.assert_array_equal(done[b.id]["y"], np.full((3, 4), 20.0))
    np.testing.assert_array_equal(done[b.id]["z"], np.full((3, 1), 8.0))
    assert set(done[c.id]) == {"y"}  # only the outputs it asked for
    np.testing.assert_array_equal(done[c.id]["y"], np.full((2, 4), 30.0))
    outputs["y"][:] = -1  # the slices are copies: the batch buffer may be reused
    assert done[b.id]["y"][0, 0] == 20.0
    assert s.idle()


def test_unbatched_model_runs_requests_alone_with_whole_tensors() -> None:
    s = Scheduler(SchedulerConfig(max_batch_size=1), batched=False)
    x = np.ones((3, 4), np.float32)
    first = Request(1, {"x": x}, 1, shape_key({"x": x}, False), 0.0, outputs=("y",))
    s.add(first, 0.0)
    s.add(Request(2, {"x": x}, 1, shape_key({"x": x}, False), 0.0), 0.0)
    batch = s.next_batch(0.0, 1)
    assert batch is not None
    assert ids(batch) == [1]
    (done,) = s.complete(batch, {"y": x * 3, "z": x}, 0.1)
    assert set(done.outputs) == {"y"}
    np.testing.assert_array_equal(done.outputs["y"], x * 3)


# -- priorities ----------------------------------------------------------------------------
def test_lower_priority_number_is_served_first() -> None:
    s = scheduler(max_batch_size=2)
    late = s.add(req(priority=5), 0.0)
    default = s.add(req(priority=3), 0.0)
    urgent = s.add(req(priority=1), 0.0)
    batch = s.next_batch(0.0, 1)
    assert batch is not None
    assert ids(batch) == [urgent.id, default.id]
    rest = s.next_batch(1.0, 1)
    assert rest is not None
    assert ids(rest) == [late.id]


def test_same_priority_is_first_come_first_served() -> None:
    s = scheduler(max_batch_size=1)
    first, second = s.add(req(priority=2), 0.0), s.add(req(priority=2), 0.1)
    assert ids(s.next_batch(1.0, 1)) == [first.id]
    assert ids(s.next_batch(1.0, 1)) == [second.id]


# -- deadlines and expiry ------------------------------------------------------------------
def test_expired_request_is_dropped_before_compute() -> None:
    s = scheduler(max_batch_size=4)
    doomed = s.add(req(deadline=0.005), 0.0)
    kept = s.add(req(deadline=1.0), 0.0)
    assert s.next_wakeup(0.0, idle_workers=0) == pytest.approx(0.005)
    assert s.expire(0.004) == []
    assert [r.id for r in s.expire(0.006)] == [doomed.id]
    batch = s.next_batch(0.011, 1)
    assert batch is not None
    assert ids(batch) == [kept.id]


def test_request_that_cannot_finish_in_time_is_dropped_early() -> None:
    s = scheduler(max_batch_size=4, max_queue_size=100)
    _measure(s, 4, 0.050)  # the fastest batch takes 50 ms
    now = 10.0
    tight = s.add(req(now=now, deadline=now + 0.120), now)
    assert s.next_wakeup(now, idle_workers=0) == pytest.approx(now + 0.070)
    assert s.expire(now + 0.069) == []
    assert [r.id for r in s.expire(now + 0.071)] == [tight.id]  # 49 ms left < 50 ms


def test_default_timeout_sets_a_deadline() -> None:
    s = scheduler(default_timeout_s=0.5)
    stored = s.add(req(), 2.0)
    assert stored.deadline == pytest.approx(2.5)
    assert [r.id for r in s.expire(2.6)] == [stored.id]


def test_cancel_removes_a_queued_request() -> None:
    s = scheduler(max_batch_size=2)
    a, b, c = s.add(req(), 0.0), s.add(req(), 0.0), s.add(req(), 0.0)
    assert s.cancel(b.id) is b
    assert s.cancel(b.id) is None
    assert s.queued == 2
    batch = s.next_batch(0.0, 1)
    assert batch is not None
    assert ids(batch) == [a.id, c.id]
    assert s.cancel(a.id) is None  # already dispatched: cannot be taken back


def test_cancelling_the_oldest_restarts_the_delay_from_the_next() -> None:
    s = scheduler(max_batch_size=8, max_queue_delay_s=0.010)
    old = s.add(req(now=0.0), 0.0)
    s.add(req(now=0.008), 0.008)
    s.cancel(old.id)
    assert s.next_batch(0.012, 1) is None
    assert s.next_wakeup(0.012) == pytest.approx(0.018)


# -- admission -----------------------------------------------------------------------------
def test_full_queue_rejects_at_once() -> None:
    s = scheduler(max_queue_size=2)
    s.add(req(), 0.0)
    s.add(req(), 0.0)
    with pytest.raises(QueueFullError, match="queue full") as info:
        s.add(req(), 0.0)
    assert info.value.retry_after_s > 0
    assert s.queued == 2


def _measure(s: Scheduler, size: int, seconds: float, start: float = 0.0) -> None:
    """Run one batch of `size` rows through `s`, taking `seconds`."""
    request = s.add(req(size, now=start), start)
    batch = s.next_batch(start + 1.0, 1)
    assert batch is not None
    assert ids(batch) == [request.id]
    s.complete(batch, {"y": np.zeros((size, 4), np.float32)}, batch.dispatched + seconds)


def test_admission_rejects_when_predicted_completion_misses_the_deadline() -> None:
    s = scheduler(max_batch_size=4, max_queue_size=100)
    _measure(s, 4, 0.100)  # a full batch takes 100 ms
    now = 10.0
    for _ in range(8):  # two full batches queued: 200 ms of work ahead
        s.add(req(now=now), now)
    with pytest.raises(QueueFullError, match="deadline") as info:
        s.add(req(now=now, deadline=now + 0.250), now)  # needs ~300 ms
    assert info.value.retry_after_s == pytest.approx(0.200)
    ok = s.add(req(now=now, deadline=now + 0.350), now)
    assert ok.deadline == pytest.approx(now + 0.350)


def test_admission_counts_only_work_at_the_same_or_higher_priority() -> None:
    s = scheduler(max_batch_size=4, max_queue_size=100)
    _measure(s, 4, 0.100)
    now = 10.0
    for _ in range(8):
        s.add(req(now=now, priority=9), now)  # background work queued behind urgent requests
    urgent = s.add(req(now=now, priority=1, deadline=now + 0.150), now)
    assert urgent.priority == 1


def test_admission_waits_for_a_busy_worker() -> None:
    s = scheduler(max_batch_size=4, max_queue_size=100)
    _measure(s, 4, 0.100)
    now = 10.0
    for _ in range(4):
        s.add(req(now=now), now)
    assert s.next_batch(now, 1) is not None  # the only worker is busy until now + 0.1
    assert s.predicted_completion(req(now=now), now) == pytest.approx(now + 0.100 + 0.100)
    with pytest.raises(QueueFullError):
        s.add(req(now=now, deadline=now + 0.150), now)


def test_no_measurement_no_prediction() -> None:
    s = scheduler()
    assert s.add(req(deadline=0.000001), 0.0).deadline == pytest.approx(0.000001)


def test_batch_time_is_an_ewma_per_size() -> None:
    s = scheduler(max_batch_size=4, ewma_alpha=0.5)
    _measure(s, 2, 0.010)
    _measure(s, 2, 0.030, start=5.0)
    assert s.batch_time(2) == pytest.approx(0.020)
    assert s.batch_time(1) == pytest.approx(0.020)  # nearest larger measured size
    assert s.batch_time(4) == pytest.approx(0.040)  # scaled from the largest measured


def test_fail_forgets_the_batch_and_returns_its_requests() -> None:
    s = scheduler(max_batch_size=2)
    a, b = s.add(req(), 0.0), s.add(req(), 0.0)
    batch = s.next_batch(0.0, 1)
    assert batch is not None
    assert s.inflight == 1
    assert [r.id for r in s.fail(batch)] == [a.id, b.id]
    assert s.idle()
    assert s.batch_time(2) is None  # a failed batch is no measurement


def test_requeued_batch_goes_back_ahead_of_later_arrivals() -> None:
    s = scheduler(max_batch_size=2)
    a, b = s.add(req(deadline=5.0), 0.0), s.add(req(), 0.0)
    batch = s.next_batch(0.0, 1)
    assert batch is not None
    c = s.add(req(), 0.1)
    s.requeue(batch)
    assert s.inflight == 0
    assert s.queued == 3
    assert s.next_wakeup(0.2, idle_workers=0) == pytest.approx(5.0)  # deadline kept
    again = s.next_batch(0.2, 1)
    assert again is not None
    assert ids(again) == [a.id, b.id]
    assert [r.id for r in s.drain()] == [c.id]


def test_worker_compute_time_is_preferred_over_time_since_dispatch() -> None:
    s = scheduler(max_batch_size=2)
    s.add(req(2), 0.0)
    batch = s.next_batch(0.0, 1)
    assert batch is not None
    s.complete(batch, {"y": np.zeros((2, 4), np.float32)}, 0.5, compute_s=0.2)
    assert s.batch_time(2) == pytest.approx(0.2)


def test_drain_empties_the_queue() -> None:
    s = scheduler()
    queued = [s.add(req(), 0.0) for _ in range(3)]
    assert {r.id for r in s.drain()} == {r.id for r in queued}
    assert s.queued == 0
    assert s.next_wakeup(0.0) is None


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="preferred"):
        SchedulerConfig(max_batch_size=4, preferred_batch_sizes=(8,))
    with pytest.raises(ValueError, match="max_queue_size"):
        SchedulerConfig(max_queue_size=0)


def test_a_refusal_computes_its_retry_after_only_when_asked() -> None:
    """In a surge most refusals are never asked for a Retry-After (an in-process caller); the
    scheduler hands over how to compute it, and the error computes it once, when read."""
    calls: list[float] = []

    def drain_time() -> float:
        calls.append(0.3)
        return 0.3

    error = QueueFullError("queue full", retry_after_s=drain_time)
    assert calls == []
    assert error.retry_after_s == error.retry_after_s == 0.3
    assert calls == [0.3]
    copy = pickle.loads(pickle.dumps(QueueFullError("late", partial(drain_time), "predicted_miss")))
    assert (str(copy), copy.retry_after_s, copy.reason) == ("late", 0.3, "predicted_miss")
    s = scheduler(max_batch_size=4, max_queue_size=1)
    s.add(req(now=0.0), 0.0)
    with pytest.raises(QueueFullError, match="queue full") as info:
        s.add(req(now=0.0), 0.0)
    assert info.value.retry_after_s == 1.0  # nothing measured yet: the 1-s default
