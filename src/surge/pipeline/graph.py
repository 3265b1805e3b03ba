"""A pipeline's steps as a DAG over tensor names: checked, ordered, and type-checked.

Structure is checked from the config alone (`plan`): step names unique, every tensor a step
reads is a pipeline input or another step's output, each tensor written once, every declared
input read and every declared output produced, no cycle, every model a step or its
`params_from` names in the repository (and none the pipeline itself). Dtypes and shapes are
checked once the model steps are loaded and their signatures known (`check_types`). Every error
is a ConfigError naming the step.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

from surge.errors import ConfigError
from surge.repository.config import ModelConfig, StepConfig, TensorConfig
from surge.runtimes.base import TensorSpec


@dataclass(frozen=True)
class StepTypes:
    """What one step reads and writes, by the step's own tensor names (None: not declared)."""

    inputs: Mapping[str, TensorSpec] | None
    outputs: Mapping[str, TensorSpec] | None


def declared(tensors: Sequence[TensorConfig] | None) -> tuple[TensorSpec, ...]:
    """The specs of a config's `inputs` or `outputs`."""
    return tuple(t.spec() for t in tensors or [])


def plan(pipeline: str, config: ModelConfig, models: Collection[str]) -> tuple[StepConfig, ...]:
    """The steps in an order that runs each after the steps it reads from."""
    where = f"pipeline {pipeline!r}"
    producers = _producers(where, config)
    for step in config.steps:
        _check_models(where, pipeline, step, models)
        for tensor in step.inputs.values():
            if tensor not in producers:
                raise ConfigError(f"{where}, step {step.name!r} reads {tensor!r}, which no step "
                                  "writes and is not a pipeline input")
    for output in config.outputs or []:
        if producers.get(output.name, "") == "":
            raise ConfigError(f"{where}: output {output.name!r} is written by no step")
    order = _ordered(where, config.steps, producers)
    read = {name for step in config.steps for name in step.inputs.values()}
    for given in config.inputs or []:
        if given.name not in read:  # every request would have to bring it, for nothing
            raise ConfigError(f"{where}: input {given.name!r} is read by no step")
    return order


def _check_models(where: str, pipeline: str, step: StepConfig, models: Collection[str]) -> None:
    """A step's model, and the model its params come from, must be in the repository; a step
    naming its own pipeline would wait for itself to load."""
    where = f"{where}, step {step.name!r}"
    if step.model == pipeline:
        raise ConfigError(f"{where}: {pipeline!r} is this pipeline; a step names a model")
    if step.model is not None and step.model not in models:
        raise ConfigError(f"{where}: unknown model {step.model!r}")
    if step.params_from is not None and step.params_from not in models:
        raise ConfigError(f"{where}: params_from names unknown model {step.params_from!r}")


def check_step_models(pipeline: str, config: ModelConfig, kind_of: Callable[[str], str]) -> None:
    """Refuse a model step naming a pipeline (`kind_of(model)` reads its config's kind): two
    pipelines naming each other would each wait for the other to load, for ever."""
    for step in config.steps:
        if step.model is not None and kind_of(step.model) == "pipeline":
            raise ConfigError(f"pipeline {pipeline!r}, step {step.name!r}: {step.model!r} is a "
                              "pipeline; a step names a model")


def _producers(where: str, config: ModelConfig) -> dict[str, str]:
    """Tensor name -> the step writing it ('' for a pipeline input)."""
    producers = {tensor.name: "" for tensor in config.inputs or []}
    names: set[str] = set()
    for step in config.steps:
        if step.name in names:
            raise ConfigError(f"{where}: two steps are named {step.name!r}")
        names.add(step.name)
        for tensor in step.outputs.values():
            if tensor in producers:
                writer = f"step {producers[tensor]!r}" if producers[tensor] else "a pipeline input"
                raise ConfigError(f"{where}, step {step.name!r} writes {tensor!r}, which is "
                                  f"already written by {writer}")
            producers[tensor] = step.name
    return producers


def _ordered(where: str, steps: list[StepConfig],
             producers: Mapping[str, str]) -> tuple[StepConfig, ...]:
    """Kahn's topological sort; the steps left over lie on a cycle."""
    waiting = {s.name: {producers[t] for t in s.inputs.values()} - {""} for s in steps}
    by_name = {s.name: s for s in steps}
    order: list[StepConfig] = []
    while waiting:
        ready = [name for name, needs in waiting.items() if not needs]
        if not ready:
            raise ConfigError(f"{where}: steps {sorted(waiting)} form a cycle")
        for name in ready:
            order.append(by_name[name])
            del waiting[name]
        for needs in waiting.values():
            needs.difference_update(ready)
    return tuple(order)


def check_types(pipeline: str, steps: tuple[StepConfig, ...], types: Mapping[str, StepTypes],
                inputs: Collection[TensorSpec], outputs: Collection[TensorSpec]) -> None:
    """Walk the steps in order, carrying each tensor's spec; a mismatch names its step."""
    known: dict[str, TensorSpec | None] = {spec.name: spec for spec in inputs}
    for step in steps:
        where = f"pipeline {pipeline!r}, step {step.name!r}"
        declared = types[step.name]
        if declared.inputs is not None:
            _check_reads(where, step, declared.inputs, known)
        for own, tensor in step.outputs.items():
            if declared.outputs is not None and own not in declared.outputs:
                raise ConfigError(f"{where}: no output {own!r} (outputs: "
                                  f"{sorted(declared.outputs)})")
            known[tensor] = declared.outputs[own] if declared.outputs is not None else None
    for spec in outputs:
        have = known.get(spec.name)
        if have is not None and not spec.fits(have):
            raise ConfigError(f"pipeline {pipeline!r}: output {spec.name!r} is declared "
                              f"{spec.describe()}, its step writes {have.describe()}")


def _check_reads(where: str, step: StepConfig, declared: Mapping[str, TensorSpec],
                 known: Mapping[str, TensorSpec | None]) -> None:
    missing = sorted(set(declared) - set(step.inputs))
    if missing:
        raise ConfigError(f"{where}: input(s) {missing} are not mapped")
    for own, tensor in step.inputs.items():
        want = declared.get(own)
        if want is None:
            raise ConfigError(f"{where}: no input {own!r} (inputs: {sorted(declared)})")
        have = known.get(tensor)
        if have is not None and not want.fits(have):
            raise ConfigError(f"{where}: input {own!r} expects {want.describe()}, "
                              f"tensor {tensor!r} is {have.describe()}")
