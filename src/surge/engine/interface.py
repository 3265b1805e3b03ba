"""What the front ends (HTTP, gRPC, the serving process) need from the serving core.

They depend on `InferenceEngine`, not on `Engine`: the seam is the list below, and a test can
put any object with these members behind a front end.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from surge.engine.metrics import SurgeMetrics
from surge.engine.stats import ModelStats
from surge.repository import ModelConfig
from surge.runtimes.base import Signature


@dataclass(frozen=True)
class ModelHandle:
    """A served model version as the protocol layer describes it."""

    name: str
    version: int
    versions: tuple[int, ...]
    config: ModelConfig
    signature: Signature
    platform: str
    devices: tuple[str, ...] = ()  # where the instances run, as their workers reported it
    # The outputs the signature declares BF16, which engines return as uint16 words: their
    # answers are labelled BF16 (`label_bf16`). Empty for most models: no work per request.
    bf16_outputs: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "bf16_outputs", frozenset(
            spec.name for spec in self.signature.outputs if spec.datatype == "BF16"))


class InferenceEngine(Protocol):
    """The serving core as the front ends use it."""

    @property
    def metrics(self) -> SurgeMetrics:
        """The server's Prometheus metrics; front ends count finished requests in them."""

    async def start(self) -> None:
        """Load the models to serve."""

    async def stop(self, grace_s: float = 30.0) -> None:
        """Drain accepted work (at most `grace_s`), then stop every instance."""

    def live(self) -> bool: ...

    def ready(self) -> bool:
        """Started, and every loaded model is ready."""

    def model_ready(self, name: str, version: int | None = None) -> bool: ...

    def model(self, name: str, version: int | None = None) -> ModelHandle:
        """The served version (latest when None); NotFoundError otherwise."""

    def index(self) -> list[dict[str, str]]:
        """One row (name, version, state, reason) per model in the repository."""

    def stats(self, name: str, version: int | None = None) -> ModelStats: ...

    async def load(self, name: str, config: Mapping[str, Any] | None = None) -> None:
        """(Re)load a model; `config` fields replace its config.yaml's for this load."""

    async def unload(self, name: str) -> None: ...

    async def files_changed(self, name: str) -> None:
        """A model's files changed on disk: reload it (when it is loaded)."""

    async def infer(
        self,
        name: str,
        version: int | None,
        inputs: dict[str, np.ndarray],
        *,
        outputs: list[str] | None = None,
        priority: int = 0,
        timeout_us: int | None = None,
        request_id: str = "",
    ) -> dict[str, np.ndarray]:
        """Queue one request and await its outputs."""
