"""Write the chosen configuration into the model's config.yaml, where `surge serve` reads it."""

from __future__ import annotations

from pathlib import Path

from surge.repository.config import CONFIG_FILE, ModelConfig, read_config, write_config
from surge.tuning.space import ORIGINAL, Candidate


def apply_candidate(config: ModelConfig, candidate: Candidate, slo_p99_ms: float | None
                    ) -> ModelConfig:
    """`config` with the candidate's variant, batching, instances, threads and the SLO set."""
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
    })
    # model_copy skips validation; round-trip so a bad combination fails here, not in serve
    return ModelConfig.model_validate(updated.model_dump())


def write_selection(model_dir: Path, candidate: Candidate, slo_p99_ms: float | None) -> Path:
    """Update `model_dir/config.yaml` in place (keys the selector does not own are kept)."""
    path = model_dir / CONFIG_FILE
    config = read_config(path) if path.exists() else ModelConfig(name=model_dir.name)
    write_config(path, apply_candidate(config, candidate, slo_p99_ms))
    return path


def write_engine(model_dir: Path, engine: str) -> Path:
    """Set the engine in `model_dir/config.yaml`; ONNX Runtime stays `auto` where it was."""
    path = model_dir / CONFIG_FILE
    config = read_config(path) if path.exists() else ModelConfig(name=model_dir.name)
    if config.engine == "auto" and engine == "onnxruntime":
        return path
    write_config(path, ModelConfig.model_validate({**config.model_dump(), "engine": engine}))
    return path
