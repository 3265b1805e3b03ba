"""The serving core: one scheduler and instance pool per served model version, behind a typed seam.

- `interface`: `InferenceEngine`, what the front ends depend on, and the `ModelHandle` they read
- `engine`: `Engine`, the models of a repository by name and version; builds every pool
- `served`: `ServedModel`, one version: scheduler + pool + the driver loop
- `instances`: `InstancePool` and `PoolEvents`, the seam between a driver and its instances
- `stats`: `ModelStats` and the counters behind it
"""

from surge.engine.engine import Engine
from surge.engine.instances import Clock, InstancePool, PoolEvents, PoolFactory, PoolSpec
from surge.engine.interface import InferenceEngine, ModelHandle
from surge.engine.served import ServedModel
from surge.engine.stats import ModelStats

__all__ = [
    "Clock",
    "Engine",
    "InferenceEngine",
    "InstancePool",
    "ModelHandle",
    "ModelStats",
    "PoolEvents",
    "PoolFactory",
    "PoolSpec",
    "ServedModel",
]
