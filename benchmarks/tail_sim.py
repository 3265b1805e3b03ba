"""What the tail at 256 closed-loop clients is made of: the real scheduler driving a simulated
pool, without the noise of a shared machine (`benchmarks/tail.py` measures the server itself).

Simulated: instances with batch times `a + b * n` times a log-normal jitter (preemption on a
busy machine; `--skew`: every second instance slower, as one sharing its core with the front
end), clients that send again `think_ms` after their answer. Three ways to hand batches to
instances run with the same seed:

- `pool`: as `surge.workers.pool` does: each instance holds PIPELINE_DEPTH batches (one
  computing, one waiting in its slot), taken in `dispatch_order`;
- `oracle`: the same slots, but a batch goes to the instance that will really free first
  (every batch time known in advance: the best any finish-time prediction could do);
- `free`: a batch only to an instance with nothing to compute (one in hand each, the
  hand-off `handoff_ms` paid on every batch).

    .venv/bin/python benchmarks/tail_sim.py [--instances 2] [--max-batch 32 16] [--skew 1.2]
"""

from __future__ import annotations

import argparse
import heapq
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from surge.scheduler import Batch, Request, Scheduler, SchedulerConfig, shape_key
from surge.workers.pool import PIPELINE_DEPTH

INPUTS = {"x": np.zeros((1, 1), np.float32)}
KEY = shape_key(INPUTS, True)
MODES = ("pool", "oracle", "free")


@dataclass
class Instance:
    index: int
    batches: deque[Batch] = field(default_factory=deque)  # [0] computes
    started: float = 0.0  # when batches[0] began
    ends: float = 0.0  # when batches[0] will end (only `oracle` looks)


@dataclass
class Sim:
    """One run: the scheduler, the instances, the event heap and what the clients saw."""

    scheduler: Scheduler
    instances: list[Instance]
    rng: np.random.Generator
    args: argparse.Namespace
    mode: str
    events: list[tuple[float, int, str, int]] = field(default_factory=list)
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (answered, seconds)
    seq: int = 0
    wake_at: float | None = None

    def at(self, when: float, kind: str, what: int) -> None:
        self.seq += 1
        heapq.heappush(self.events, (when, self.seq, kind, what))

    def batch_seconds(self, inst: Instance, size: int) -> float:
        a, b = self.args.fixed_ms / 1e3, self.args.per_item_ms / 1e3
        slower = self.args.skew if inst.index % 2 else 1.0
        return (a + b * size) * slower * float(self.rng.lognormal(0.0, self.args.jitter))

    @property
    def depth(self) -> int:
        return 1 if self.mode == "free" else PIPELINE_DEPTH

    def start(self, inst: Instance, now: float) -> None:
        inst.started = now
        inst.ends = now + self.batch_seconds(inst, inst.batches[0].size)
        self.at(inst.ends, "done", inst.index)

    def dispatch(self, batch: Batch, now: float) -> None:
        def order(i: Instance) -> tuple[int, float]:  # `pool`: as `dispatch_order`
            first = i.ends if self.mode == "oracle" else i.started
            return self.depth - len(i.batches), -first if i.batches else 0.0
        inst = max(self.instances, key=order)
        inst.batches.append(batch)
        if len(inst.batches) == 1:
            self.start(inst, now + self.args.handoff_ms / 1e3)

    def step(self, now: float) -> None:
        free = sum(self.depth - len(i.batches) for i in self.instances)
        idle = sum(1 for i in self.instances if not i.batches)
        while (batch := self.scheduler.next_batch(now, free, idle)) is not None:
            self.dispatch(batch, now)
            free = sum(self.depth - len(i.batches) for i in self.instances)
            idle = sum(1 for i in self.instances if not i.batches)
        wake = self.scheduler.next_wakeup(now, free)
        if wake is not None and wake > now and wake != self.wake_at:
            self.wake_at = wake
            self.at(wake, "wake", 0)

    def done(self, inst: Instance, now: float) -> None:
        batch = inst.batches.popleft()
        # As `WorkerPool` reports it today: every instance's time as instance 0's.
        self.scheduler.complete(batch, {"y": np.zeros((batch.size, 1), np.float32)}, now, now - inst.started)
        for request in batch.requests:
            self.latencies.append((now, now - request.arrival))
            self.at(now + self.args.think_ms / 1e3, "arrive", 0)
        if inst.batches:
            self.start(inst, now)


def run(args: argparse.Namespace, max_batch: int, mode: str) -> dict[str, Any]:
    config = SchedulerConfig(max_batch_size=max_batch, max_queue_size=args.clients * 2,
                             workers=args.instances)
    scheduler = Scheduler(config)
    sim = Sim(scheduler, [Instance(i) for i in range(args.instances)],
              np.random.default_rng(args.seed), args, mode)
    for client in range(args.clients):
        sim.at(client * 1e-4, "arrive", client)
    ids = 0
    while sim.events:
        now, _, kind, what = heapq.heappop(sim.events)
        if now > args.seconds:
            break
        if kind == "arrive":
            ids += 1
            scheduler.add(Request(ids, INPUTS, 1, KEY, now), now)
        elif kind == "done":
            sim.done(sim.instances[what], now)
        sim.step(now)
    return {"max_batch": max_batch, "dispatch": mode, **summary(args, sim.latencies)}


def summary(args: argparse.Namespace, latencies: list[tuple[float, float]]) -> dict[str, Any]:
    warm = args.seconds / 5  # the first fifth settles the queue and the estimates
    seconds = np.array([s for t, s in latencies if t >= warm])
    throughput = len(seconds) / (args.seconds - warm)
    mean = args.clients / throughput
    return {"throughput": round(throughput, 1),
            "mean_by_littles_law_ms": round(mean * 1e3, 1),
            "p50_ms": round(float(np.percentile(seconds, 50)) * 1e3, 1),
            "p99_ms": round(float(np.percentile(seconds, 99)) * 1e3, 1),
            "p99_over_mean": round(float(np.percentile(seconds, 99)) / mean, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--clients", type=int, default=256)
    parser.add_argument("--max-batch", type=int, nargs="+", default=[32, 16])
    parser.add_argument("--fixed-ms", type=float, default=4.0, help="batch time a + b * n: a")
    parser.add_argument("--per-item-ms", type=float, default=3.3, help="b (one core, 3x64x64)")
    parser.add_argument("--jitter", type=float, default=0.2, help="log-normal sigma of batch time")
    parser.add_argument("--skew", type=float, default=1.0,
                        help="every second instance this many times slower (a shared core)")
    parser.add_argument("--handoff-ms", type=float, default=1.0, help="an idle instance's start")
    parser.add_argument("--think-ms", type=float, default=1.0, help="answer to the next request")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    runs = [run(args, size, mode) for size in args.max_batch for mode in MODES]
    print(json.dumps({"args": vars(args), "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
