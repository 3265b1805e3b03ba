"""Where a model's instances run: instances x threads that fit the cores, and slot sizes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from surge.datatypes import v2_to_numpy
from surge.errors import ConfigError
from surge.platform import fits
from surge.runtimes.base import TensorSpec

_BYTES_GUESS = 64  # bytes per BYTES element when sizing a slot


@dataclass(frozen=True)
class Placement:
    """Where one instance runs and with how many intra-op threads."""

    device: str
    threads: int


def plan_instances(instances: int, threads: int, device: str, cores: int,
                   cuda_devices: int = 0) -> list[Placement]:
    """Instances x threads that fit `cores`; with CUDA, `instances` on every device."""
    devices = [device]
    if device == "cuda":
        if cuda_devices < 1:
            raise ConfigError("device 'cuda' requested but no CUDA device is available")
        devices = [f"cuda:{i}" for i in range(cuda_devices)]
    total = instances * len(devices)
    per = threads or max(1, cores // total)
    if not fits(total, per, cores):
        raise ConfigError(
            f"instances x threads = {total} x {per} = {total * per} does not fit {cores} cores; "
            f"lower 'instances' or 'threads'"
        )
    return [Placement(d, per) for d in devices for _ in range(instances)]


def cuda_device_count(device: str) -> int:
    """CUDA devices, asked only when the config names CUDA (importing torch is slow)."""
    if not device.startswith("cuda"):
        return 0
    import torch

    return int(torch.cuda.device_count())


# A worker's slots start at most this large and grow with the batches that need more: sized
# for max_batch_size up front, a large max batch of large rows reserved (fallocate) more of
# /dev/shm than there is before the first request, and the model failed to load.
FIRST_SLOT_MAX_BYTES = 64 * 2**20


def first_slot_bytes(specs: tuple[TensorSpec, ...], batch: int) -> int:
    """A worker's first slot for `specs`: a full batch of `batch`, up to FIRST_SLOT_MAX_BYTES."""
    return min(slot_bytes(specs, batch), FIRST_SLOT_MAX_BYTES)


def slot_bytes(specs: tuple[TensorSpec, ...], batch: int) -> int:
    """Bytes for `batch` items of `specs`, variable dims taken as 1 (slots grow when needed)."""
    total = 0
    for spec in specs:
        dims = spec.shape[1:] if batch > 1 else spec.shape
        items = int(np.prod([max(d, 1) for d in dims])) * max(batch, 1)
        size = _BYTES_GUESS if spec.datatype == "BYTES" else v2_to_numpy(spec.datatype).itemsize
        total += items * size + 64
    return total


