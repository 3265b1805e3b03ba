"""Parallelism plans: DDP, FSDP2 (`fully_shard`), and pipeline stages (`torch.distributed.pipelining`).

Every plan exposes the same two things to the recipe: the module whose parameters this rank
optimizes, and a `step(inputs, labels)` that runs forward and backward and returns the loss
this rank saw (None on pipeline stages that do not compute it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from surge.errors import ConfigError
from surge.runtimes.torch_runner import resolve_factory
from surge.tasks import resolve_builder
from surge.train.config import ModelSpec, PipelineConfig
from surge.train.distributed import DistState
from surge.train.precision import DTYPES, Precision

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def trains_channels_last(requested: bool, mode: str) -> bool:
    """Whether `model.channels_last` applies to `mode`: FSDP2 shards only contiguous
    parameters, and pipeline stages send activations point to point, which takes only
    contiguous tensors, so only one process and DDP train channels-last."""
    return requested and mode in ("none", "ddp")


def build_model(spec: ModelSpec, seed: int) -> nn.Module:
    """The builder's module with weights drawn from `seed` (the same on every rank)."""
    torch.manual_seed(seed)
    module = resolve_factory(resolve_builder(spec.builder))(**spec.kwargs)
    if not isinstance(module, nn.Module):
        raise ConfigError(f"model.builder {spec.builder!r} returned {type(module).__name__}, "
                          "not a torch.nn.Module")
    return module


# -- pipeline split points ---------------------------------------------------------------------
def split_candidates(model: nn.Module) -> list[tuple[str, int]]:
    """Where a stage may begin, in call order, with each unit's parameter count.

    nn.Sequential containers (and the root) are opened up; any other module with children,
    such as a residual block, stays a unit of its own. Tensors still needed after a split point
    (a skip connection across it) are handed to the next stage with the main path.
    Registration order is taken as call order, as it is for the zoo's CNNs.
    """
    units: list[tuple[str, int]] = []

    def visit(name: str, module: nn.Module) -> None:
        children = list(module.named_children())
        if children and (not name or isinstance(module, nn.Sequential)):
            for child_name, child in children:
                visit(f"{name}.{child_name}" if name else child_name, child)
            return
        units.append((name, sum(p.numel() for p in module.parameters())))

    visit("", model)
    return units


def balanced_split(model: nn.Module, stages: int) -> list[str]:
    """Split points giving each stage about 1/stages of the parameters (greedy prefix sums)."""
    candidates = split_candidates(model)
    if stages > len(candidates):
        raise ConfigError(f"cannot split a model of {len(candidates)} layers into {stages} stages")
    total = sum(count for _, count in candidates) or 1
    points: list[str] = []
    running = 0
    for index, (name, count) in enumerate(candidates):
        remaining_layers = len(candidates) - index
        remaining_stages = stages - 1 - len(points)
        if index and remaining_stages and (
            running + count / 2 > total * (len(points) + 1) / stages
            or remaining_layers == remaining_stages
        ):
            points.append(name)
        running += count
    return points


def resolve_split(model: nn.Module, config: PipelineConfig, stages: int) -> list[str]:
    """The configured split points, checked, or balanced ones when none are given."""
    if stages < 2:
        raise ConfigError("parallelism pipeline needs at least 2 processes (one stage each)")
    if not config.split_points:
        return balanced_split(model, stages)
    if len(config.split_points) != stages - 1:
        raise ConfigError(
            f"pipeline.split_points lists {len(config.split_points)} points, but {stages} "
            f"processes make {stages} stages and need {stages - 1}"
        )
    order = [name for name, _ in split_candidates(model)]
    known = dict(model.named_modules())
    positions = []
    for name in config.split_points:
        if name not in known or not name:
            raise ConfigError(f"pipeline.split_points: the model has no module {name!r}")
        first_unit = next((i for i, unit in enumerate(order)
                           if unit == name or unit.startswith(name + ".")), None)
        if first_unit is None:
            raise ConfigError(f"pipeline.split_points: {name!r} is inside a block that cannot be "
                              f"cut; stages may begin at {', '.join(order[1:])}")
        if first_unit == 0:
            raise ConfigError(f"pipeline.split_points: {name!r} leaves the first stage empty")
        positions.append(first_unit)
    if positions != sorted(set(positions)):
        raise ConfigError(
            f"pipeline.split_points {config.split_points} must be distinct and in call order"
        )
    return list(config.split_points)


# -- plans --------------------------------------------------------------------------------------
@dataclass
class DataParallelPlan:
    """One replica (none/ddp) or one shard (fsdp) of the whole model per rank."""

    model: nn.Module
    loss_fn: LossFn
    precision: Precision

    @property
    def module(self) -> nn.Module:
        return self.model

    def step(self, inputs: torch.Tensor, labels: torch.Tensor) -> float | None:
        with self.precision.autocast():
            loss = self.loss_fn(self.model(inputs).float(), labels)
        self.precision.scaler.scale(loss).backward()
        return float(loss.detach())


def data_parallel_plan(
    model: nn.Module, mode: str, state: DistState, loss_fn: LossFn, precision: Precision,
    channels_last: bool = False,
) -> DataParallelPlan:
    model = model.to(state.device)
    if trains_channels_last(channels_last, mode):
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if mode == "ddp" and state.distributed:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [state.device.index] if state.device.type == "cuda" else None
        model = DistributedDataParallel(model, device_ids=device_ids)
    elif mode == "fsdp":
        model = shard_model(model, precision, state)
        # FSDP2's policy casts parameters for compute; an autocast region on top is redundant.
        precision = Precision("fp32", precision.device_type, precision.scaler)
    return DataParallelPlan(model, loss_fn, precision)


def shard_model(model: nn.Module, precision: Precision, state: DistState) -> nn.Module:
    """FSDP2: shard each top-level child that holds parameters, then the root.

    Normalization layers keep fp32 parameters (their running statistics are fp32 buffers, and
    low-precision statistics drift); everything else computes in the policy's dtype. The mesh
    is built on this rank's device type: FSDP's default mesh would pick CUDA whenever a GPU is
    visible, even for ranks that train on the CPU.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(state.device.type, (state.world_size,))

    policy = MixedPrecisionPolicy(
        param_dtype=None if precision.name == "fp32" else DTYPES[precision.name],
        reduce_dtype=torch.float32, output_dtype=torch.float32,
    )
    if precision.name != "fp32":
        norm_policy = MixedPrecisionPolicy(reduce_dtype=torch.float32, cast_forward_inputs=False)
        for layer in model.modules():
            if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                fully_shard(layer, mesh=mesh, mp_policy=norm_policy)
    for unit in shard_units(model):
        fully_shard(unit, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules FSDP2 shards one by one: each top-level child that holds parameters, and the
    members of a ModuleList or ModuleDict (a container without `forward` cannot be sharded as
    one unit: embedding tables kept in a ModuleList become one shard group per table)."""
    units: list[nn.Module] = []
    for child in model.children():
        if isinstance(child, nn.ModuleList | nn.ModuleDict):
            units += shard_units(child)
        elif any(True for _ in child.parameters()):
            units.append(child)
    return units


@dataclass
class PipelinePlan:
    """This rank's stage of the model and the schedule that drives the micro-batches."""

    stage_module: nn.Module
    schedule: Any
    stage_index: int
    num_stages: int
    precision: Precision

    @property
    def module(self) -> nn.Module:
        return self.stage_module

    @property
    def is_first(self) -> bool:
        return self.stage_index == 0

    @property
    def is_last(self) -> bool:
        return self.stage_index == self.num_stages - 1

    def step(self, inputs: torch.Tensor, labels: torch.Tensor) -> float | None:
        losses: list[torch.Tensor] = []
        with self.precision.autocast():
            if self.is_first:
                self.schedule.step(inputs)
            elif self.is_last:
                self.schedule.step(target=labels, losses=losses)
            else:
                self.schedule.step()
        if not self.is_last:
            return None
        return float(torch.stack([loss.detach().float() for loss in losses]).mean())


def _as_args(value: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return value if isinstance(value, tuple) else (value,)


def _stage_examples(pipe: Any, example: torch.Tensor, state: DistState, precision: Precision,
                    ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """This rank's stage inputs and outputs for `example`, run through the stages in eval mode
    (running statistics untouched) under the training precision (same dtypes).

    A stage may take and give several tensors: a skip connection that crosses a split point
    travels to the next stage beside the main path.
    """
    args: tuple[torch.Tensor, ...] = (example.to(state.device),)
    stage_input = stage_output = args
    with precision.autocast():
        for index in range(pipe.num_stages):
            stage = pipe.get_stage_module(index).to(state.device)
            training = stage.training
            outputs = _as_args(stage.eval()(*args))
            stage.train(training)
            # Activations carry gradients between stages, as in training.
            outputs = tuple(out.detach().requires_grad_(out.requires_grad) for out in outputs)
            if index == state.rank:
                stage_input, stage_output = args, outputs
            args = outputs
    return stage_input, stage_output


def pipeline_plan(
    model: nn.Module, config: PipelineConfig, input_shape: list[int], batch_size: int,
    state: DistState, loss_fn: LossFn, precision: Precision,
    input_dtype: torch.dtype = torch.float32,
) -> PipelinePlan:
    """Trace the model into stages at the split points and build this rank's stage.

    Each stage is given its input and output shapes up front: left to infer them, a stage runs
    its first forward on uninitialized tensors in training mode, which would corrupt the running
    statistics of its BatchNorm layers.
    """
    from torch.distributed.pipelining import (
        PipelineStage,
        Schedule1F1B,
        ScheduleGPipe,
        SplitPoint,
        pipeline,
    )

    points = resolve_split(model, config, state.world_size)
    micro = batch_size // config.microbatches
    example = torch.zeros(micro, *input_shape, dtype=input_dtype)
    pipe = pipeline(model, mb_args=(example,),
                    split_spec=dict.fromkeys(points, SplitPoint.BEGINNING))
    stage_module = pipe.get_stage_module(state.rank).to(state.device)
    stage_input, stage_output = _stage_examples(pipe, example, state, precision)
    stage = PipelineStage(stage_module, state.rank, pipe.num_stages, state.device,
                          input_args=stage_input, output_args=stage_output)
    schedule_cls = ScheduleGPipe if config.schedule == "gpipe" else Schedule1F1B

    def scored(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return loss_fn(output.float(), target)

    schedule = schedule_cls(stage, n_microbatches=config.microbatches, loss_fn=scored)
    return PipelinePlan(stage_module, schedule, state.rank, pipe.num_stages, precision)

