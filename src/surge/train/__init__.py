"""Training recipes: DDP, pipeline and FSDP2 parallelism with mixed precision, via torchrun.

Its names load on first use: torchrun's wrapper (`python -m surge.train.agent`) imports this
package before its own module and needs none of them (the launcher alone took it 1.5 s)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from surge.train.config import TrainConfig, load_train_config, parse_train_config
    from surge.train.launcher import LaunchOptions, launch, validate

_LAZY = {
    "TrainConfig": "surge.train.config", "load_train_config": "surge.train.config",
    "parse_train_config": "surge.train.config", "LaunchOptions": "surge.train.launcher",
    "launch": "surge.train.launcher", "validate": "surge.train.launcher",
}

__all__ = [
    "LaunchOptions", "TrainConfig", "launch", "load_train_config", "parse_train_config", "validate",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'surge.train' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
