"""Distributed state from torchrun's environment: gloo on CPU, NCCL on CUDA."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import timedelta

import torch
import torch.distributed as dist

from surge.platform import available_cores


@dataclass(frozen=True)
class DistState:
    """This process's place in the job. A plain single process is rank 0 of world 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    restart_count: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def backend(self) -> str:
        return "nccl" if self.device.type == "cuda" else "gloo"


def pick_device(preference: str, local_rank: int) -> torch.device:
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))


def state_from_env(device: str = "auto", env: Mapping[str, str] | None = None) -> DistState:
    """Read RANK, WORLD_SIZE, LOCAL_RANK, ... as torchrun sets them (absent: one process)."""
    env = os.environ if env is None else env
    local_rank = int(env.get("LOCAL_RANK", "0"))
    return DistState(
        rank=int(env.get("RANK", "0")),
        world_size=int(env.get("WORLD_SIZE", "1")),
        local_rank=local_rank,
        local_world_size=int(env.get("LOCAL_WORLD_SIZE", "1")),
        restart_count=int(env.get("TORCHELASTIC_RESTART_COUNT", "0")),
        device=pick_device(device, local_rank),
    )


def init_distributed(device: str = "auto", timeout_s: float = 600.0) -> DistState:
    """Join the process group torchrun described (MASTER_ADDR/PORT); no-op for one process."""
    state = state_from_env(device)
    if state.device.type == "cuda":
        torch.cuda.set_device(state.device)
    if state.distributed and not dist.is_initialized():
        attempt, store = _attempt_store(state, timeout_s)
        # The attempt every rank agrees on: it decides whether to resume from a checkpoint.
        state = replace(state, restart_count=attempt)
        dist.init_process_group(
            backend=state.backend, store=store,
            rank=state.rank, world_size=state.world_size, timeout=timedelta(seconds=timeout_s),
            device_id=state.device if state.device.type == "cuda" else None,
        )
    return state


def _attempt_store(state: DistState, timeout_s: float) -> tuple[int, dist.Store]:
    """The rendezvous store at MASTER_ADDR:MASTER_PORT, with keys private to this attempt.

    After an elastic restart the agent's store still holds the dead attempt's gloo addresses
    under the same keys, and the new ranks would try to connect to them; a per-attempt prefix
    keeps each attempt's rendezvous apart. The attempt is counted in the store itself, not
    taken from TORCHELASTIC_RESTART_COUNT: across machines that count differs between nodes
    (the node whose rank died restarts with 1; an agent that restarts its workers because a
    node rejoined keeps 0), and ranks with different prefixes would wait for each other until
    the timeout, or one would resume from the checkpoint and the other start over. Every rank
    of every attempt counts itself once, so all ranks of one attempt get the same number.
    """
    agent_hosts_it = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(
        os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ.get("MASTER_PORT", "29500")),
        world_size=state.world_size, is_master=not agent_hosts_it and state.rank == 0,
        timeout=timedelta(seconds=timeout_s),
    )
    attempt = (store.add("surge/ranks-started", 1) - 1) // state.world_size
    return attempt, dist.PrefixStore(f"surge/attempt-{attempt}", store)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(state: DistState) -> None:
    if state.distributed:
        dist.barrier()


def all_reduce_sum(values: list[float], state: DistState) -> list[float]:
    """Sum a few scalars over all ranks (metrics), in fp64 so counts stay exact."""
    if not state.distributed:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=state.device)
    dist.all_reduce(tensor)
    return [float(v) for v in tensor.tolist()]


def set_threads(threads: int, state: DistState) -> int:
    """Give each process on this machine its share of the cores (they would fight otherwise);
    where `threads` is 0 and OMP_NUM_THREADS names a count, that count, as torch itself reads it
    (torchrun sets it to 1 for several processes)."""
    if threads <= 0:
        threads = omp_threads() or max(1, available_cores() // max(1, state.local_world_size))
    torch.set_num_threads(threads)
    return threads


def omp_threads() -> int | None:
    """OMP_NUM_THREADS where it is a positive whole number (OpenMP also allows a list: None)."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None
