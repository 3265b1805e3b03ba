"""Write the chosen configuration into the model's config.yaml, where `surge serve` reads it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from surge.repository.config import CONFIG_FILE, ModelConfig, read_config, write_config
from surge.tuning.space import ORIGINAL, Candidate


@dataclass(frozen=True)
class Measured:
    """What the tune measured of one variant: its accuracy (percent), whether it is within the
    budget, and its best in-process items/s."""

    variant: str
    accuracy: float | None
    accepted: bool
    throughput: float | None


@dataclass(frozen=True)
class Ladder:
    """The accuracy ladder a tune writes: rungs most accurate first, their measured accuracy,
    and the budget they were admitted under."""

    rungs: tuple[str, ...]
    max_accuracy_drop: float
    accuracy: dict[str, float] = field(default_factory=dict)


def choose_ladder(measured: Sequence[Measured], max_drop: float | None) -> Ladder | None:
    """The original, then each variant within the budget that is faster than every rung above
    it, by accuracy (a rung both less accurate and no faster would never help); None when no
    variant qualifies or the budget sets no largest drop."""
    by_name = {m.variant: m for m in measured}
    top = by_name.get(ORIGINAL)
    if max_drop is None or top is None or top.accuracy is None or not top.throughput:
        return None
    rungs, fastest = [top], top.throughput
    usable = [m for m in measured if m.variant != ORIGINAL and m.accepted
              and m.accuracy is not None and m.throughput]
    for m in sorted(usable, key=lambda m: (-(m.accuracy or 0.0), m.variant)):
        if m.throughput and m.throughput > fastest:
            rungs.append(m)
            fastest = m.throughput
    if len(rungs) < 2:
        return None
    return Ladder(tuple(m.variant for m in rungs), max_drop,
                  {m.variant: round(m.accuracy or 0.0, 4) for m in rungs})


def apply_candidate(config: ModelConfig, candidate: Candidate, slo_p99_ms: float | None,
                    ladder: Ladder | None = None) -> ModelConfig:
    """`config` with the candidate's variant, batching, instances, threads and the SLO set; with
    a ladder, the candidate's batching and layout serve every rung and no single variant is
    set (the ladder starts from the original)."""
    batching = config.batching.model_copy(update={
        "enabled": candidate.max_batch_size > 1,
        "max_queue_delay_ms": candidate.max_queue_delay_ms,
        # preferred sizes above the new max would make the config invalid
        "preferred_batch_sizes": [s for s in config.batching.preferred_batch_sizes
                                  if s <= candidate.max_batch_size],
    })
    updated = config.model_copy(update={
        "variant": None if candidate.variant == ORIGINAL else candidate.variant,
        "max_batch_size": candidate.max_batch_size,
        "batching": batching,
        "instances": candidate.instances,
        "threads": candidate.threads,
        "slo_p99_ms": slo_p99_ms,
        "ladder": list(ladder.rungs) if ladder and slo_p99_ms else [],
        "max_accuracy_drop": ladder.max_accuracy_drop if ladder and slo_p99_ms else None,
        "ladder_accuracy": dict(ladder.accuracy) if ladder and slo_p99_ms else {},
    })
    if updated.ladder:
        updated = updated.model_copy(update={"variant": None})
    # model_copy skips validation; round-trip so a bad combination fails here, not in serve
    return ModelConfig.model_validate(updated.model_dump())


def write_selection(model_dir: Path, candidate: Candidate, slo_p99_ms: float | None,
                    ladder: Ladder | None = None) -> Path:
    """Update `model_dir/config.yaml` in place (keys the selector does not own are kept)."""
    path = model_dir / CONFIG_FILE
    config = read_config(path) if path.exists() else ModelConfig(name=model_dir.name)
    write_config(path, apply_candidate(config, candidate, slo_p99_ms, ladder))
    return path


def write_engine(model_dir: Path, engine: str) -> Path:
    """Set the engine in `model_dir/config.yaml`; ONNX Runtime stays `auto` where it was."""
    path = model_dir / CONFIG_FILE
    config = read_config(path) if path.exists() else ModelConfig(name=model_dir.name)
    if config.engine == "auto" and engine == "onnxruntime":
        return path
    write_config(path, ModelConfig.model_validate({**config.model_dump(), "engine": engine}))
    return path
