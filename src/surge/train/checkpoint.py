"""Checkpoints: full weights (safetensors), optimizer/schedule/scaler state, trainer state (JSON).

Layout of `checkpoint.dir`:

    epoch-0003/model.safetensors    full (unsharded, unsplit) weights, written by rank 0
    epoch-0003/optimizer.pt         optimizer + LR schedule + GradScaler (pipeline: one per stage)
    epoch-0003/trainer.json         epochs done, step, best metric, history, how it was run
    epoch-0003/best.safetensors     best.safetensors as it was then (a hard link where possible)
    best.safetensors                weights of the best validation epoch so far
    latest.json                     names the newest complete checkpoint; written last

A checkpoint counts only once `latest.json` names it, so a crash while saving leaves the
previous one in force. A checkpoint that cannot be read, or that was saved for another model,
optimizer or a newer Surge, is refused in one line naming the file.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn

from surge.errors import ConfigError, first_line, shown
from surge.train.config import ModelSpec, TrainConfig
from surge.train.distributed import DistState, barrier

# torch's state-dict API (torch.distributed.checkpoint) is imported where it is used: it loads
# DTensor and sympy (1.2 s), which `surge train`'s checks of a checkpoint never need.

LATEST = "latest.json"
BEST = "best.safetensors"
SCHEMA = 1  # the trainer.json layout this Surge writes and reads
T = TypeVar("T")


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
    model: dict[str, Any] = field(default_factory=dict)  # builder and kwargs (empty: unknown)
    optimizer: str = ""  # optimizer.name ("": unknown, an older checkpoint)
    schema: int = SCHEMA


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
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

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
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(module, dict(weights),
                         options=StateDictOptions(full_state_dict=True))


def save_weights(weights: dict[str, torch.Tensor], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp))
    os.replace(tmp, path)


def link_or_copy(source: Path, target: Path) -> None:
    """Put `source`'s content at `target` atomically: a hard link costs no space and keeps the
    content when `source` is replaced later (save_weights replaces, never rewrites)."""
    tmp = target.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:  # a filesystem without hard links
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def restore_best(checkpoint: Path, state: DistState) -> None:
    """Put back the best weights the checkpoint knew: a run that stopped after it may have
    replaced best.safetensors with an epoch the resumed run does not count as its best."""
    if state.is_main and (checkpoint / BEST).is_file():
        link_or_copy(checkpoint / BEST, checkpoint.parent / BEST)


# -- optimizer -----------------------------------------------------------------------------------
def _optimizer_file(parallelism: str, rank: int) -> str:
    return f"optimizer-stage{rank}.pt" if parallelism == "pipeline" else "optimizer.pt"


def optimizer_bundle(module: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                     scaler: torch.amp.GradScaler, parallelism: str) -> dict[str, Any]:
    """Optimizer state keyed by parameter name (gathered in full under FSDP), plus the scaler.

    The LR schedule is not saved: it is a function of the step count, replayed on resume, so
    a run resumed with more epochs follows the longer schedule.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=parallelism == "fsdp", cpu_offload=True)
    return {
        "optimizer": get_optimizer_state_dict(module, optimizer, options=options),
        "scaler": scaler.state_dict(),
    }


def restore_optimizer(bundle: dict[str, Any], module: nn.Module, optimizer: torch.optim.Optimizer,
                      scheduler: Any, steps_done: int, scaler: torch.amp.GradScaler,
                      parallelism: str) -> None:
    """Load the optimizer's state (moments, step counts), keep the recipe's hyperparameters,
    and replay the schedule from its start: the saved param groups hold the old run's lr (and
    a one-cycle's max_lr), which would ignore a changed optimizer.lr and start a chained
    schedule (cosine) from the saved lr rather than from the beginning."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=parallelism == "fsdp")
    recipe_groups = [{k: v for k, v in group.items() if k != "params"}
                     for group in optimizer.param_groups]
    set_optimizer_state_dict(module, optimizer, optim_state_dict=bundle["optimizer"],
                             options=options)
    for group, hyperparameters in zip(optimizer.param_groups, recipe_groups, strict=True):
        group.update(hyperparameters)
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
        if (directory / BEST).is_file():
            link_or_copy(directory / BEST, target / BEST)
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
    try:  # OSError: unreadable, or removed since (a new run in the folder forgets it)
        name = json.loads(pointer.read_text())["checkpoint"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{pointer} is not a checkpoint pointer ({type(exc).__name__}: "
                          f"{exc}); remove it to start afresh") from None
    checkpoint = directory / str(name)
    if not checkpoint.is_dir() or checkpoint.parent != directory:
        raise ConfigError(f"{pointer} names {name!r}, which is not a checkpoint in {directory}")
    return checkpoint


def load_checkpoint(path: Path, config: TrainConfig, state: DistState) -> Checkpoint:
    """The checkpoint at `path`, refused in one line when it cannot be read or resumed by
    `config` on `state`'s processes (the weights are checked by `check_weights_fit`)."""
    trainer = read_trainer(path / "trainer.json")
    check_epochs(path, trainer, config.epochs)
    parallelism = config.parallelism
    if parallelism != trainer.parallelism or (
        parallelism in ("pipeline", "fsdp") and trainer.world_size != state.world_size
    ):
        raise ConfigError(
            f"{path} was saved by {trainer.parallelism} on {trainer.world_size} processes; "
            f"cannot resume it with {parallelism} on {state.world_size}"
        )
    if trainer.optimizer and trainer.optimizer != config.optimizer.name:
        raise ConfigError(
            f"{path} was saved with optimizer.name {trainer.optimizer}; cannot resume it with "
            f"{config.optimizer.name} (its state would be dropped): set optimizer.name="
            f"{trainer.optimizer}, or start a new run without --resume")
    weights = read_weights(path / "model.safetensors")
    bundle = read_file(path / _optimizer_file(parallelism, state.rank),
                       lambda f: torch.load(f, map_location="cpu", weights_only=True))
    return Checkpoint(path, trainer, weights, bundle)


def check_epochs(path: Path, trainer: TrainerState, epochs: int) -> None:
    """A recipe of fewer epochs than the checkpoint has done cannot resume it: its schedule
    ends before the step count the checkpoint replays (a one-cycle schedule refuses the extra
    steps), and the export would report a best epoch past the recipe's last one."""
    if trainer.epoch > epochs:
        raise ConfigError(
            f"{path} has done {trainer.epoch} epochs, more than the recipe's epochs {epochs}: "
            f"resume with epochs={trainer.epoch} (export again) or more (train further)")


def read_file(file: Path, loader: Callable[[Path], T], directory: Path | None = None) -> T:
    """loader(file), or a one-line ConfigError for a missing, truncated or foreign file (a
    pickle that holds code is refused by torch.load's weights_only). `directory` is the
    checkpoint.dir the file belongs to (default: its folder's parent, an epoch's file)."""
    try:
        return loader(file)
    except Exception as exc:  # any reader's failure means the same: not a usable checkpoint
        reason = first_line(exc)
        pointer = (directory or file.parent.parent) / LATEST
        raise ConfigError(
            f"checkpoint file {file} cannot be read ({type(exc).__name__}: {reason}); restore "
            f"it, or remove {pointer} to start afresh") from None


def read_weights(file: Path, directory: Path | None = None) -> dict[str, torch.Tensor]:
    """A safetensors file of weights, refused in one line naming it when it cannot be read."""
    return read_file(file, lambda f: load_file(str(f)), directory)


def best_weights_file(checkpoint: Path) -> Path:
    """The best weights a run resumed from `checkpoint` starts with: the checkpoint's own copy,
    else the run's (`restore_best` puts the first in place of the second)."""
    own = checkpoint / BEST
    return own if own.is_file() else checkpoint.parent / BEST


def check_best(checkpoint: Path, trainer: TrainerState,
               expected: dict[str, torch.Tensor]) -> None:
    """The best weights a resumed run would export can be read and fit the model: a damaged
    or missing file was found only at the export, after the resumed run had trained."""
    file = best_weights_file(checkpoint)
    if not file.is_file():
        if trainer.best_epoch:
            raise ConfigError(
                f"{checkpoint} records best epoch {trainer.best_epoch}, but there is no {BEST} "
                f"in it nor in {checkpoint.parent}: restore it, or remove "
                f"{checkpoint.parent / LATEST} to start afresh")
        return
    problems = mismatches(read_weights(file, checkpoint.parent), expected)
    if problems:  # the checkpoint's own weights fit: this file is not the run's
        raise ConfigError(
            f"{file} holds weights of another model than {checkpoint} ({problems[0]}, "
            f"{len(problems)} mismatch(es)): restore it, or remove "
            f"{checkpoint.parent / LATEST} to start afresh")


def read_trainer(file: Path) -> TrainerState:
    """trainer.json, refused when a newer Surge wrote it (a later schema, or fields this one
    does not know, whose meaning it would drop)."""
    data = read_file(file, lambda f: json.loads(f.read_text()))
    if not isinstance(data, dict):
        raise ConfigError(f"checkpoint file {file} holds {type(data).__name__}, not a mapping")
    unknown = sorted(set(data) - {f.name for f in fields(TrainerState)})
    schema = data.get("schema", SCHEMA)
    if unknown or schema != SCHEMA:
        raise ConfigError(
            f"checkpoint file {file} has schema {schema!r}"
            + (f" and unknown fields {', '.join(unknown)}" if unknown else "")
            + f"; this Surge reads schema {SCHEMA}: resume it with the Surge that wrote it")
    for name, value in data.items():
        kind, meaning = _FIELDS[name]
        if not _of_type(value, kind):
            raise ConfigError(
                f"checkpoint file {file}: {name} is {shown(value)}, not {meaning}; restore "
                f"it, or remove {file.parent.parent / LATEST} to start afresh")
    return TrainerState(**data)


# What each trainer.json field holds, and says so: read back with another type (an edited or
# foreign file), it failed mid-run with a traceback (a str epoch in range(), an int history).
_COUNT = (int, "a whole number >= 0")
_FIELDS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "epoch": _COUNT, "step": _COUNT, "best_epoch": _COUNT, "world_size": _COUNT,
    "schema": _COUNT, "best_metric": ((int, float), "a number"),
    "parallelism": (str, "a str"), "optimizer": (str, "a str"),
    "history": (list, "a list of epoch records (mappings)"), "model": (dict, "a mapping"),
}


def _of_type(value: Any, kind: type | tuple[type, ...]) -> bool:
    if isinstance(value, bool) or not isinstance(value, kind):
        return False
    if kind is int and isinstance(value, int):
        return value >= 0
    if isinstance(value, list):
        return all(isinstance(record, dict) for record in value)
    return True


def check_weights_fit(path: Path, weights: dict[str, torch.Tensor],
                      expected: dict[str, torch.Tensor], spec: ModelSpec,
                      saved_for: dict[str, Any]) -> None:
    """The checkpoint's weights have the keys and shapes of the recipe's model."""
    problems = mismatches(weights, expected)
    if problems:
        saved = (f"; it was saved for {saved_for.get('builder')} with "
                 f"{shown(saved_for.get('kwargs'))}" if saved_for else "")
        raise ConfigError(
            f"{path} holds weights of another model ({problems[0]}, {len(problems)} "
            f"mismatch(es)); the recipe's model is {spec.builder} with {shown(spec.kwargs)}"
            f"{saved}: resume with that model, or start a new run without --resume")


def mismatches(weights: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> list[str]:
    """How `weights` differ from the model's `expected` ones in keys and shapes."""
    wrong = [f"{k}: saved {list(weights[k].shape)}, model {list(v.shape)}"
             for k, v in expected.items() if k in weights and weights[k].shape != v.shape]
    missing = [f"{k} missing" for k in expected if k not in weights]
    unexpected = [f"{k} not in the model" for k in weights if k not in expected]
    return wrong + missing + unexpected
