"""Processors: the pre- and post-processing steps of pipelines, plain functions over numpy arrays.

The contract every processor keeps:

    fn(inputs: dict[str, np.ndarray], params: Mapping[str, Any]) -> dict[str, np.ndarray]

It works on a whole batch (dim 0 = request rows; BYTES tensors are numpy object arrays of
`bytes`) and raises `surge.errors.InputError` naming the input for bad data (HTTP 400, gRPC
INVALID_ARGUMENT). A pipeline step names one by a built-in short name (`image.decode`,
`labels.topk`, `detection.boxes`, `text.tokenize`: `<area>.<function>` of the modules below) or
as a trusted `package.module:function`, like model factories.

A processor may declare what it reads and writes with `@declares(describe)`: `describe(params)`
returns its tensors' specs (and raises ConfigError for bad params), so a pipeline's dtypes and
shapes are checked when it loads. An undeclared processor's tensors are checked at run time only.
`@declares(describe, inline=True)` also says the processor is cheap enough to run on the event
loop: handing a call to a processor thread and waking the loop back costs tens of microseconds,
more than picking the top k of a few rows of logits. `inline_when=fn` makes that choice per
call: `fn(inputs, params)` says whether this call's inputs are small enough (a 128x128 PNG decodes
in less CPU than the hand-off to a thread and back costs under load).
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from surge.errors import ConfigError
from surge.runtimes.base import TensorSpec

if TYPE_CHECKING:
    from surge.repository.config import ModelConfig, StepConfig

ProcessorFn = Callable[[dict[str, np.ndarray], Mapping[str, Any]], dict[str, np.ndarray]]


@dataclass(frozen=True)
class ProcessorSpec:
    """The tensors a processor reads and writes for given params; shapes include the batch dim."""

    inputs: Mapping[str, TensorSpec]
    outputs: Mapping[str, TensorSpec]


Describe = Callable[[Mapping[str, Any]], ProcessorSpec]
InlineWhen = Callable[[dict[str, np.ndarray], Mapping[str, Any]], bool]
Example = Callable[[Mapping[str, Any]], dict[str, np.ndarray]]
F = TypeVar("F", bound=Callable[..., Any])
S = TypeVar("S")
T = TypeVar("T")

# Built-in short names: `<area>.<function>` is `surge.processors.<module>:<function>`.
AREAS = {"image": "images", "labels": "classification", "detection": "detection", "text": "text"}

_DESCRIBED: dict[Callable[..., Any], Describe] = {}
_INLINE: set[Callable[..., Any]] = set()
_INLINE_WHEN: dict[Callable[..., Any], InlineWhen] = {}
_EXAMPLE: dict[Callable[..., Any], Example] = {}


def declares(describe: Describe, inline: bool = False,
             inline_when: InlineWhen | None = None,
             example: Example | None = None) -> Callable[[F], F]:
    """Mark a processor with the function that tells its tensors' specs for given params, and
    whether it is cheap enough to run on the event loop rather than in a processor thread
    (always, or for the calls `inline_when` accepts). `example(params)` makes one valid row of
    each input (a JPEG of the target size, a word): what a model's latency probe sends through a
    `preprocess:` step."""

    def mark(fn: F) -> F:
        _DESCRIBED[fn] = describe
        if inline:
            _INLINE.add(fn)
        if inline_when is not None:
            _INLINE_WHEN[fn] = inline_when
        if example is not None:
            _EXAMPLE[fn] = example
        return fn

    return mark


@dataclass(frozen=True)
class Processor:
    """A resolved processor: its name as configured, the function, and its specs if declared."""

    name: str
    run: ProcessorFn
    describe: Describe | None
    inline: bool = False  # run on the event loop: cheaper than the hand-off to a thread
    inline_when: InlineWhen | None = None  # on the loop for the calls it accepts
    example: Example | None = None  # one valid row of each input, for given params

    def runs_inline(self, inputs: dict[str, np.ndarray], params: Mapping[str, Any]) -> bool:
        return self.inline or (self.inline_when is not None and self.inline_when(inputs, params))


def step_params(step: StepConfig, source: ModelConfig) -> dict[str, Any]:
    """The params a processor step gets: `labels` and `parameters` of its source config (a
    pipeline's, its `params_from` model's, or the model a `preprocess:` step runs in), then its
    own."""
    params: dict[str, Any] = dict(source.parameters)
    if source.labels is not None:
        params["labels"] = list(source.labels)
    params.update(step.params)
    return params


def target(name: str) -> str:
    """`package.module:function` of a processor name (a built-in short name or a target)."""
    if ":" in name:
        return name
    area, _, function = name.partition(".")
    if area not in AREAS or not function.isidentifier():
        known = ", ".join(f"{a}.*" for a in AREAS)
        raise ConfigError(f"unknown processor {name!r}: use a built-in ({known}) or "
                          "'package.module:function'")
    return f"surge.processors.{AREAS[area]}:{function}"


def resolve(name: str) -> Processor:
    """Import the processor `name`; ConfigError when it cannot be found."""
    module_name, _, attribute = target(name).partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"processor {name!r}: cannot import {module_name} ({exc})") from None
    fn = getattr(module, attribute, None)
    if not callable(fn):
        raise ConfigError(f"processor {name!r}: {module_name} has no function {attribute!r}")
    return Processor(name, fn, _DESCRIBED.get(fn), fn in _INLINE, _INLINE_WHEN.get(fn),
                     _EXAMPLE.get(fn))


# (build, id(source)) -> (source, a deep copy of it, build(source))
_DERIVED: dict[tuple[Callable[..., Any], int], tuple[Any, Any, Any]] = {}
_DERIVED_MAX = 256


def once_per(source: S, build: Callable[[S], T]) -> T:
    """`build(source)`, made once and reused while `source` (a step's params, its labels) is the
    same object, unchanged: a step hands every call the same objects, and checking params or
    encoding labels anew cost more than the numpy of a small request (6 us of params for a
    128x128 PNG; 70 us to encode 1,000 ImageNet labels for a top-5). An edited source is
    checked against its copy (mostly identity checks: the copy holds the same strings and
    numbers) and built again."""
    key = (build, id(source))
    found = _DERIVED.get(key)
    if found is not None and found[0] is source and found[1] == source:
        return found[2]
    value = build(source)
    if len(_DERIVED) >= _DERIVED_MAX:
        _DERIVED.clear()  # many one-off params (benchmarks, tests): start again
    _DERIVED[key] = (source, copy.deepcopy(source), value)  # `source` kept: its id stays its own
    return value
