"""Checkpoints: full weights (safetensors), optimizer/schedule/scaler state, trainer state (JSON).

Layout of `checkpoint.dir`:

    epoch-0003/model.safetensors    full (unsharded, unsplit) weights, written by rank 0
    epoch-0003/optimizer.pt         optimizer + LR schedule + GradScaler (pipeline: one per stage)
    epoch-0003/trainer.json         epochs done, step, best metric, history, how it was run
    best.safetensors                weights of the best validation epoch so far
    latest.json                     names the newest complete checkpoint; written last

A checkpoint counts only once `latest.json` names it, so a crash while saving leaves the
previous one in force.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from surge.errors import ConfigError
from surge.train.distributed import DistState, barrier

LATEST = "latest.json"
BEST = "best.safetensors"


@dataclass
class TrainerState:
    """What a resumed run needs besides tensors; `epoch` counts completed epochs."""

    epoch: int = 0
    step: int = 0
    best_metric: float = -1.0
    best_epoch: int = 0
    world_size: int = 1
    parallelism: str = "none"
    history: list[dict[str, Any]] = field(default_factory=list)


# -- full weights from any plan ------------------------------------------------------------------
def full_model_state(module: nn.Module, parallelism: str, state: DistState) -> dict[str, torch.Tensor]:
    """The whole model's weights on every rank, on CPU, keyed like the unwrapped model."""
    if parallelism == "pipeline":
        mine = {k: v.detach().cpu() for k, v in module.state_dict().items()}
        parts: list[Any] = [None] * state.world_size
        dist.all_gather_object(parts, mine)
        merged: dict[str, torch.Tensor] = {}
        for part in parts:
            merged.update(part)
        return merged
    options = StateDictOptions(full_state_dict=parallelism == "fsdp")
    weights = get_model_state_dict(module, options=options)
    return {k: v.detach().cpu().clone() for k, v in weights.items()
            if isinstance(v, torch.Tensor)}


def load_model_state(module: nn.Module, weights: dict[str, torch.Tensor], parallelism: str) -> None:
    if parallelism == "pipeline":
        # A traced stage's constant buffers are not saved (see the recipe): they keep their
        # values; every parameter and saved buffer must be there.
        params = {name for name, _ in module.named_parameters()}
        module.load_state_dict({k: weights[k] if k in weights or k in params else v
                                for k, v in module.state_dict().items()})
        return
    set_model_state_dict(module, dict(weights),
                         options=StateDictOptions(full_state_dict=True))


def save_weights(weights: dict[str, torch.Tensor], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp))
    os.replace(tmp, path)


# -- optimizer -----------------------------------------------------------------------------------
def _optimizer_file(parallelism: str, rank: int) -> str:
    return f"optimizer-stage{rank}.pt" if parallelism == "pipeline" else "optimizer.pt"


def optimizer_bundle(module: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                     scaler: torch.amp.GradScaler, parallelism: str) -> dict[str, Any]:
    """Optimizer state keyed by parameter name (gathered in full under FSDP), plus the scaler.

    The LR schedule is not saved: it is a function of the step count, replayed on resume, so
    a run resumed with more epochs follows the longer schedule.
    """
    options = StateDictOptions(full_state_dict=parallelism == "fsdp", cpu_offload=True)
    return {
        "optimizer": get_optimizer_state_dict(module, optimizer, options=options),
        "scaler": scaler.state_dict(),
    }


def restore_optimizer(bundle: dict[str, Any], module: nn.Module, optimizer: torch.optim.Optimizer,
                      scheduler: Any, steps_done: int, scaler: torch.amp.GradScaler,
                      parallelism: str) -> None:
    options = StateDictOptions(full_state_dict=parallelism == "fsdp")
    set_optimizer_state_dict(module, optimizer, optim_state_dict=bundle["optimizer"],
                             options=options)
    with warnings.catch_warnings():
        # Replaying the schedule without optimizer steps is the point here, not a mistake.
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(steps_done):
            scheduler.step()
    if bundle["scaler"]:
        scaler.load_state_dict(bundle["scaler"])


# -- save / load ---------------------------------------------------------------------------------
def save_checkpoint(
    directory: Path, trainer: TrainerState, weights: dict[str, torch.Tensor],
    bundle: dict[str, Any], state: DistState,
) -> Path:
    """Every rank calls this; rank 0 writes the weights and, last, the `latest.json` pointer."""
    target = directory / f"epoch-{trainer.epoch:04d}"
    if state.is_main:
        target.mkdir(parents=True, exist_ok=True)
    barrier(state)
    if state.is_main or trainer.parallelism == "pipeline":
        torch.save(bundle, target / _optimizer_file(trainer.parallelism, state.rank))
    if state.is_main:
        save_weights(weights, target / "model.safetensors")
        (target / "trainer.json").write_text(json.dumps(asdict(trainer), indent=1) + "\n")
    barrier(state)
    if state.is_main:
        pointer = directory / (LATEST + ".tmp")
        pointer.write_text(json.dumps({"checkpoint": target.name, "epoch": trainer.epoch}) + "\n")
        os.replace(pointer, directory / LATEST)
    barrier(state)
    return target


@dataclass
class Checkpoint:
    """A complete checkpoint read back from disk (this rank's optimizer bundle only)."""

    path: Path
    trainer: TrainerState
    weights: dict[str, torch.Tensor]
    bundle: dict[str, Any]


def latest_checkpoint(directory: Path) -> Path | None:
    pointer = directory / LATEST
    if not pointer.is_file():
        return None
    try:
        name = json.loads(pointer.read_text())["checkpoint"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{pointer} is not a checkpoint pointer ({type(exc).__name__}: "
                          f"{exc}); remove it to start afresh") from None
    checkpoint = directory / str(name)
    if not checkpoint.is_dir() or checkpoint.parent != directory:
        raise ConfigError(f"{pointer} names {name!r}, which is not a checkpoint in {directory}")
    return checkpoint


def load_checkpoint(path: Path, parallelism: str, state: DistState) -> Checkpoint:
    trainer = TrainerState(**json.loads((path / "trainer.json").read_text()))
    if parallelism != trainer.parallelism or (
        parallelism in ("pipeline", "fsdp") and trainer.world_size != state.world_size
    ):
        raise ConfigError(
            f"{path} was saved by {trainer.parallelism} on {trainer.world_size} processes; "
            f"cannot resume it with {parallelism} on {state.world_size}"
        )
    weights = load_file(str(path / "model.safetensors"))
    bundle = torch.load(path / _optimizer_file(parallelism, state.rank), map_location="cpu",
                        weights_only=True)
    return Checkpoint(path, trainer, weights, bundle)
