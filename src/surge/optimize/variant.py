"""What an optimization produces: a `Variant` (a servable artifact plus its provenance) and the
`CheckResult` that compares it with the original on sample inputs."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

VARIANT_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Tolerance:
    """How far a variant may drift from the original before it is rejected. None = not checked."""

    max_abs: float | None = None
    """Largest allowed absolute difference over every output element."""
    mean_abs: float | None = None
    """Largest allowed mean absolute difference."""
    min_top1: float | None = None
    """Smallest allowed top-1 agreement with the original (classifiers)."""
    min_cosine: float | None = None
    """Smallest allowed mean cosine similarity to the original (embeddings)."""
    max_accuracy_drop: float | None = None
    """Largest allowed drop of accuracy, in points (0.5 = half a percent), when labels are known."""
    max_ndcg_drop: float | None = None
    """Largest allowed drop of NDCG@k, in points, when candidate lists are labelled (ranking)."""
    max_auc_drop: float | None = None
    """Largest allowed drop of AUC, in points, when rows are labelled (ranking)."""

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in asdict(self).items() if v is not None]
        return ",".join(parts) or "none"


@dataclass(frozen=True)
class CheckResult:
    """A variant's outputs against the original's on the same sample inputs."""

    samples: int
    max_abs: float
    mean_abs: float
    top1_agreement: float | None = None
    cosine: float | None = None
    accuracy: float | None = None
    reference_accuracy: float | None = None
    ndcg: float | None = None
    reference_ndcg: float | None = None
    auc: float | None = None
    reference_auc: float | None = None
    failures: tuple[str, ...] = ()
    """One line per tolerance the variant missed; empty when it passed."""

    @property
    def passed(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if v is not None}
        data["failures"] = list(self.failures)
        data["passed"] = self.passed
        return data


@dataclass(frozen=True)
class Variant:
    """One optimized model: a file an engine serves, how it was made, and how it compares."""

    name: str
    path: Path
    engine: str
    method: str
    """The verb and format that made it, e.g. 'quantize/int8-static'."""
    parameters: Mapping[str, Any]
    check: CheckResult
    source: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)
    """Measured facts about the transformation (parameter counts, ranks, excluded nodes)."""
    size_bytes: int = 0
    """The artifact's size when it was made (it stays known after a rejected file is deleted)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema_version": VARIANT_SCHEMA_VERSION,
            "name": self.name,
            "file": self.path.name,
            "engine": self.engine,
            "method": self.method,
            "source": self.source,
            "parameters": _plain(dict(self.parameters)),
            "details": _plain(dict(self.details)),
            "size_bytes": self.size_bytes,
            "check": _plain(self.check.as_dict()),
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }

    def write_yaml(self, path: Path) -> Path:
        path.write_text(yaml.safe_dump(self.as_dict(), sort_keys=False))
        return path


def _plain(value: Any) -> Any:
    """YAML-safe copy: tuples to lists, numpy scalars to floats, paths to strings."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)
