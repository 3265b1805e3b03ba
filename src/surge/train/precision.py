"""Mixed precision: autocast regions over fp32 master weights, a GradScaler for fp16."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from surge.errors import ConfigError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device) -> None:
    """fp16 needs CUDA; bf16 on CUDA needs a device that supports it."""
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision fp16 needs a CUDA device; use precision=bf16 on CPU")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("precision bf16: this CUDA device has no bf16 support; use fp16")


@dataclass
class Precision:
    """Where to autocast, and the loss scaler (a disabled no-op unless fp16)."""

    name: str
    device_type: str
    scaler: torch.amp.GradScaler

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        if self.name == "fp32":
            yield
            return
        with torch.autocast(self.device_type, dtype=self.dtype):
            yield


def make_precision(precision: str, device: torch.device) -> Precision:
    check_precision(precision, device)
    # Loss scaling keeps small fp16 gradients from flushing to zero; bf16 has fp32's range.
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    return Precision(precision, device.type, scaler)
