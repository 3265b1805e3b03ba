"""Low-rank factorization: a layer's weight W (out x in) becomes U_r (out x r) @ V_r (r x in) from
its truncated SVD, i.e. two thinner layers. A k x k convolution is factorized through its
(out) x (in*k*k) reshape: a k x k conv to r channels, then a 1x1 conv back to `out`.
A layer is replaced only when r * (in + out) < in * out, i.e. when it saves compute."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from surge.errors import ConfigError
from surge.optimize.registry import Artifact, OptimizeConfig, dispatch, register
from surge.optimize.source import ModelSource
from surge.optimize.variant import Tolerance, Variant


class LowRankBase(OptimizeConfig):
    verb = "low_rank"


@dataclass(frozen=True)
class LowRankConfig(LowRankBase):
    """Factorize Linear (and Conv2d) layers, choosing each rank by retained energy or fixing it."""

    format: ClassVar[str] = "lowrank"
    energy: float | None = 0.9
    """Keep the smallest rank whose singular values hold this share of sum(s^2), in (0, 1]."""
    rank: int | None = None
    """A fixed rank for every layer instead of `energy`."""
    convs: bool = True
    """Also factorize Conv2d layers (groups=1)."""
    skip: tuple[str, ...] = ()
    """Module names left as they are."""
    min_saving: float = 0.1
    """Replace a layer only when it saves at least this share of its multiply-adds."""

    def __post_init__(self) -> None:
        if (self.energy is None) == (self.rank is None):
            raise ConfigError("low_rank takes exactly one of energy or rank")
        if self.energy is not None and not 0.0 < self.energy <= 1.0:
            raise ConfigError(f"low-rank energy {self.energy} is out of range: use (0, 1]")
        if self.rank is not None and self.rank < 1:
            raise ConfigError(f"low-rank rank {self.rank} must be a positive integer")
        if not 0.0 <= self.min_saving < 1.0:
            raise ConfigError(f"min_saving {self.min_saving} is out of range: use [0, 1)")

    def variant_name(self) -> str:
        return f"lowrank-{self.energy:g}" if self.energy is not None else f"lowrank-r{self.rank}"


def low_rank(source: ModelSource, config: LowRankBase, out_dir: Path,
             tolerance: Tolerance | None = None) -> Variant:
    """Factorize a copy of the source module's layers and export it to ONNX."""
    return dispatch("low_rank", LowRankBase, source, config, out_dir, tolerance)


def choose_rank(singular: Any, energy: float | None, rank: int | None) -> int:
    """The rank keeping `energy` of sum(s^2), or `rank` capped at full rank."""
    import torch

    if rank is not None or energy is None:
        return min(rank or int(singular.numel()), int(singular.numel()))
    share = torch.cumsum(singular.double() ** 2, 0) / (singular.double() ** 2).sum()
    return min(int(torch.searchsorted(share, torch.tensor(energy - 1e-9, dtype=share.dtype))) + 1,
               int(singular.numel()))


def factorize_linear(layer: Any, r: int) -> Any:
    """Linear(in, out) -> Sequential(Linear(in, r, no bias), Linear(r, out)) from the SVD."""
    import torch
    from torch import nn

    u, s, vh = torch.linalg.svd(layer.weight.detach().double(), full_matrices=False)
    root = s[:r].sqrt()
    first = nn.Linear(layer.in_features, r, bias=False)
    second = nn.Linear(r, layer.out_features, bias=layer.bias is not None)
    with torch.no_grad():
        first.weight.copy_((root[:, None] * vh[:r]).float())
        second.weight.copy_((u[:, :r] * root[None, :]).float())
        if layer.bias is not None:
            second.bias.copy_(layer.bias.detach())
    return nn.Sequential(first, second)


def factorize_conv(layer: Any, r: int) -> Any:
    """Conv2d(in, out, k) -> Sequential(Conv2d(in, r, k), Conv2d(r, out, 1)) from the SVD."""
    import torch
    from torch import nn

    out, cin, kh, kw = layer.weight.shape
    u, s, vh = torch.linalg.svd(layer.weight.detach().double().reshape(out, -1), full_matrices=False)
    root = s[:r].sqrt()
    first = nn.Conv2d(cin, r, (kh, kw), stride=layer.stride, padding=layer.padding,
                      dilation=layer.dilation, bias=False, padding_mode=layer.padding_mode)
    second = nn.Conv2d(r, out, 1, bias=layer.bias is not None)
    with torch.no_grad():
        first.weight.copy_((root[:, None] * vh[:r]).float().reshape(r, cin, kh, kw))
        second.weight.copy_((u[:, :r] * root[None, :]).float().reshape(out, r, 1, 1))
        if layer.bias is not None and second.bias is not None:
            second.bias.copy_(layer.bias.detach())
    return nn.Sequential(first, second)


def _shape(layer: Any) -> tuple[int, int] | None:
    """(out, in*k*k) of a factorizable layer, None for anything else."""
    from torch import nn

    if isinstance(layer, nn.Linear):
        return layer.out_features, layer.in_features
    if isinstance(layer, nn.Conv2d) and layer.groups == 1:
        out, cin, kh, kw = layer.weight.shape
        return out, cin * kh * kw
    return None


def factorize_module(module: Any, config: LowRankConfig) -> tuple[Any, dict[str, Any]]:
    """A factorized deep copy of `module` and, per layer, the rank chosen or why it was kept."""
    import torch
    from torch import nn

    result = copy.deepcopy(module).eval()
    report: dict[str, Any] = {}
    for name, layer in list(result.named_modules()):
        shape = _shape(layer)
        if shape is None or name in config.skip or (
            isinstance(layer, nn.Conv2d) and not config.convs
        ):
            continue
        out, fan_in = shape
        weight = layer.weight.detach().double().reshape(out, -1)
        r = choose_rank(torch.linalg.svdvals(weight), config.energy, config.rank)
        saving = 1.0 - r * (out + fan_in) / (out * fan_in)
        if saving < config.min_saving:
            report[name] = {"rank": r, "kept": f"saves {saving:.0%} < {config.min_saving:.0%}"}
            continue
        factor = factorize_linear(layer, r) if isinstance(layer, nn.Linear) else factorize_conv(layer, r)
        result.set_submodule(name, factor)
        report[name] = {"rank": r, "full_rank": min(out, fan_in), "saving": round(saving, 3)}
    return result, report


@register(LowRankConfig)
def _make_low_rank(source: ModelSource, config: LowRankConfig, out_dir: Path) -> Artifact:
    from surge.export import export_onnx

    module = source.require_module("low_rank")
    factorized, report = factorize_module(module, config)
    replaced = sum("saving" in v for v in report.values())
    path = export_onnx(factorized, source.example(), out_dir / "model.onnx", source.input_names,
                       source.output_names)
    return Artifact(path, "onnxruntime", {"layers_factorized": replaced,
                                          "layers_considered": len(report), "layers": report})
