"""What a tune changes and what it measures: a model on its own, or a model step of a pipeline.

Tuning a pipeline tunes one of its model steps (`--step NAME`): the step's model is evaluated,
profiled and given variants like any model, and its config.yaml receives the choice; but every
served trial serves the whole pipeline and loads it with the pipeline's own inputs (JPEG bytes,
text), so decoding, tokenizing and the hand-offs between steps are part of what is measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from surge.errors import ConfigError
from surge.repository import Repository


@dataclass(frozen=True)
class TuneTarget:
    """The model whose config a tune writes, and the pipeline (if any) it is measured through."""

    model: str
    pipeline: str | None = None
    step: str | None = None

    @property
    def served(self) -> str:
        """The name the served trials load and the load generator sends requests to."""
        return self.pipeline or self.model

    def describe(self) -> str:
        if self.pipeline is None:
            return self.model
        return f"{self.pipeline} (step {self.step!r}: {self.model})"


def resolve_target(repo: Repository, name: str, step: str | None) -> TuneTarget:
    """`name` is a model, or a pipeline whose model step `step` names (optional when it has one
    model step). Errors name the pipeline and its model steps."""
    config = repo.config(name)
    if config.kind != "pipeline":
        if step is not None:
            raise ConfigError(f"--step {step!r}: {name!r} is a model, not a pipeline")
        _check_tensors_in(repo, name)
        return TuneTarget(name)
    models = {s.name: s.model for s in config.steps if s.model is not None}
    if step is None:
        if len(models) != 1:
            raise ConfigError(f"pipeline {name!r} has model steps {sorted(models)}: choose one "
                              "with --step")
        step = next(iter(models))
    if step not in models:
        kind = "a processor step" if any(s.name == step for s in config.steps) else "no step"
        raise ConfigError(f"pipeline {name!r}: {step!r} is {kind}; its model steps are "
                          f"{sorted(models)}")
    model = models[step]
    assert model is not None
    _check_tensors_in(repo, model)
    return TuneTarget(model, name, step)


def _check_tensors_in(repo: Repository, model: str) -> None:
    """A tune evaluates, profiles and serves a model on its own tensors: one that decodes
    files in its workers (`preprocess:`) would be measured on requests its steps refuse."""
    if repo.config(model).preprocess:
        raise ConfigError(f"model {model!r} has preprocess steps, which surge tune does not "
                          "measure: tune an entry of the same files without them (its version "
                          "directory a link to this one's) and copy the settings it writes")


def pipeline_models(repo_root: Path, pipeline: str) -> list[str]:
    """The models a pipeline's steps name, in step order, each once."""
    config = Repository(repo_root).config(pipeline)
    return list(dict.fromkeys(s.model for s in config.steps if s.model is not None))
