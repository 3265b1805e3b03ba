"""Structured pruning: whole channels/neurons with the smallest L1/L2 norm are removed, so the
layers really shrink (unstructured masks save nothing on dense kernels).

Torch-Pruning's dependency graph keeps conv -> bn -> conv/linear chains and residual additions
consistent; the output layer is never pruned so the signature stays the same.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from surge.errors import ConfigError
from surge.optimize.registry import Artifact, OptimizeConfig, dispatch, register
from surge.optimize.source import ModelSource
from surge.optimize.variant import Tolerance, Variant

FineTune = Callable[[Any], None]


class PruneBase(OptimizeConfig):
    verb = "prune"


@dataclass(frozen=True)
class PruneConfig(PruneBase):
    """Remove `ratio` of the channels of every prunable layer, ranked by weight norm."""

    format: ClassVar[str] = "prune"
    ratio: float = 0.5
    """Fraction of channels/neurons removed per layer, in (0, 1)."""
    norm: str = "l1"
    """Channel importance: 'l1' or 'l2' norm of its weights."""
    finetune: FineTune | str | None = "auto"
    """A function training the pruned module in place; 'auto' = the source's default (a short
    pass over the training split of the model's dataset, when it names one); None = none."""
    ignore: tuple[str, ...] = ()
    """Module names never pruned (the output layer is always kept)."""
    round_to: int | None = None
    """Keep channel counts a multiple of this (SIMD-friendly widths)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.ratio < 1.0:
            raise ConfigError(f"prune ratio {self.ratio} is out of range: use a value in (0, 1)")
        if self.norm not in ("l1", "l2"):
            raise ConfigError(f"unknown prune norm {self.norm!r}; expected 'l1' or 'l2'")

    def variant_name(self) -> str:
        return f"prune-{round(self.ratio * 100)}"

    def parameters(self) -> dict[str, Any]:
        finetune = self.finetune if isinstance(self.finetune, str | None) else "custom"
        return {"ratio": self.ratio, "norm": self.norm, "finetune": finetune,
                "ignore": list(self.ignore), "round_to": self.round_to}


def prune(source: ModelSource, config: PruneBase, out_dir: Path,
          tolerance: Tolerance | None = None) -> Variant:
    """Prune a copy of the source module, optionally fine-tune it, export it to ONNX."""
    return dispatch("prune", PruneBase, source, config, out_dir, tolerance)


def prune_module(module: Any, example: tuple[Any, ...], ratio: float, norm: str = "l1",
                 ignore: tuple[str, ...] = (), round_to: int | None = None) -> Any:
    """A pruned deep copy of `module`; the original is left untouched."""
    import torch_pruning as tp
    from torch import nn

    pruned = copy.deepcopy(module).eval()
    named = dict(pruned.named_modules())
    unknown = [n for n in ignore if n not in named]
    if unknown:
        raise ConfigError(f"cannot ignore {unknown}: no such modules in the model")
    layers = [m for m in pruned.modules() if isinstance(m, nn.Linear | nn.Conv2d | nn.Conv1d)]
    ignored = [named[n] for n in ignore] + layers[-1:]  # the last layer makes the outputs
    pruner = tp.pruner.MetaPruner(
        pruned, example, importance=tp.importance.MagnitudeImportance(p=1 if norm == "l1" else 2),
        pruning_ratio=ratio, ignored_layers=ignored, round_to=round_to,
    )
    pruner.step()
    return pruned


def count_macs_params(module: Any, example: tuple[Any, ...]) -> tuple[int, int]:
    import torch_pruning as tp

    macs, params = tp.utils.count_ops_and_params(module, example)
    return int(macs), int(params)


def _finetune_fn(source: ModelSource, config: PruneConfig) -> FineTune | None:
    if config.finetune == "auto":
        return source.finetune
    if isinstance(config.finetune, str):
        raise ConfigError(f"unknown finetune {config.finetune!r}: give a function, 'auto' or None")
    return config.finetune


@register(PruneConfig)
def _make_pruned(source: ModelSource, config: PruneConfig, out_dir: Path) -> Artifact:
    from surge.export import export_onnx

    module = source.require_module("prune")
    example = source.example()
    pruned = prune_module(module, example, config.ratio, config.norm, config.ignore,
                          config.round_to)
    macs0, params0 = count_macs_params(module, example)
    macs1, params1 = count_macs_params(pruned, example)
    finetune = _finetune_fn(source, config)
    if finetune is not None:
        finetune(pruned)
    pruned.eval()
    path = export_onnx(pruned, example, out_dir / "model.onnx", source.input_names,
                       source.output_names)
    details = {"params": params1, "params_original": params0, "macs": macs1,
               "macs_original": macs0, "finetuned": finetune is not None}
    return Artifact(path, "onnxruntime", details)
