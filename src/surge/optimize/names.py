"""Variant names as the CLI takes them (`int8-static`, `prune-50`, `lowrank-0.9`, ...) -> configs."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from surge.errors import ConfigError, InvalidNameError
from surge.optimize.exporting import OnnxExportConfig
from surge.optimize.low_rank import LowRankConfig
from surge.optimize.mixed_precision import Bf16Config, Fp16Config
from surge.optimize.prune import PruneConfig
from surge.optimize.quantize import Int8DynamicConfig, Int8StaticConfig
from surge.optimize.registry import OptimizeConfig
from surge.optimize.tables import Fp16TablesConfig, Int8TablesConfig
from surge.repository.repository import check_name

KNOWN = ("onnx, int8-dynamic, int8-static[-minmax|-entropy|-percentile], prune-<percent>[-l2], "
         "lowrank-<energy> or lowrank-r<rank>, bf16, fp16, fp16-torch, int8-tables, fp16-tables")


def _number(text: str, name: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"variant {name!r}: {text!r} is not a number") from None


def _prune(match: re.Match[str], name: str) -> OptimizeConfig:
    percent = _number(match["percent"], name)
    if not 0 < percent < 100:
        raise ConfigError(f"variant {name!r}: prune ratio {percent:g}% is out of range (1-99)")
    return PruneConfig(ratio=percent / 100.0, norm=match["norm"] or "l1")


def _low_rank(match: re.Match[str], name: str) -> OptimizeConfig:
    if match["rank"]:
        return LowRankConfig(energy=None, rank=int(match["rank"]))
    energy = _number(match["energy"], name)
    if not 0 < energy <= 1:
        raise ConfigError(f"variant {name!r}: low-rank energy {energy:g} is out of range (0, 1]")
    return LowRankConfig(energy=energy)


_PATTERNS: list[tuple[re.Pattern[str], Callable[[re.Match[str], str], OptimizeConfig]]] = [
    (re.compile(r"onnx"), lambda m, n: OnnxExportConfig()),
    (re.compile(r"int8-dynamic"), lambda m, n: Int8DynamicConfig()),
    (re.compile(r"int8-static(?:-(?P<method>minmax|entropy|percentile))?"),
     lambda m, n: Int8StaticConfig(method=m["method"] or "minmax")),
    (re.compile(r"prune-(?P<percent>[^-]+)(?:-(?P<norm>l1|l2))?"), _prune),
    (re.compile(r"lowrank-(?:r(?P<rank>[0-9]+)|(?P<energy>[^-]+))"), _low_rank),
    (re.compile(r"bf16"), lambda m, n: Bf16Config()),
    (re.compile(r"fp16"), lambda m, n: Fp16Config()),
    (re.compile(r"fp16-torch"), lambda m, n: Fp16Config(engine="torch")),
    (re.compile(r"int8-tables"), lambda m, n: Int8TablesConfig()),
    (re.compile(r"fp16-tables"), lambda m, n: Fp16TablesConfig()),
]


def parse_variant(name: str) -> OptimizeConfig:
    """The config a variant name stands for; a clear error naming the bad part otherwise."""
    for pattern, build in _PATTERNS:
        match = pattern.fullmatch(name.strip())
        if match:
            # the name is the variant's folder and how it is served: one `prune-+50` or
            # `prune-5e1/` would be written but could never be loaded
            try:
                check_name(name.strip(), "variant")
            except InvalidNameError as exc:
                raise ConfigError(str(exc)) from None
            return build(match, name)
    raise ConfigError(f"unknown variant {name!r}; known: {KNOWN}")


def parse_variants(spec: str) -> dict[str, OptimizeConfig]:
    """'int8-static,prune-50' -> {name: config}, in order, duplicates refused."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise ConfigError("no variants given; e.g. --variants int8-static,prune-50,bf16")
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ConfigError(f"variant(s) {duplicated} given twice")
    return {name: parse_variant(name) for name in names}


def parse_tolerance(spec: str) -> dict[str, float]:
    """'top1=0.99,cosine=0.98,max_abs=0.5,mean_abs=0.01,accuracy_drop=0.5,ndcg_drop=2,
    auc_drop=1' -> Tolerance kwargs."""
    keys = {"max_abs": "max_abs", "mean_abs": "mean_abs", "top1": "min_top1",
            "cosine": "min_cosine", "accuracy_drop": "max_accuracy_drop",
            "ndcg_drop": "max_ndcg_drop", "auc_drop": "max_auc_drop"}
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in keys:
            raise ConfigError(f"bad tolerance {part!r}; use KEY=VALUE with KEY one of "
                              f"{', '.join(keys)}")
        number = _tolerance_number(value, part)
        if keys[key.strip()] in out:  # which of two bounds was meant cannot be told
            raise ConfigError(f"tolerance {spec!r} gives {key.strip()} twice; give it once")
        if key.strip() in ("top1", "cosine") and number > 1:
            raise ConfigError(f"tolerance {part!r}: {key.strip()} is a share, at most 1")
        out[keys[key.strip()]] = number
    if not out:
        raise ConfigError(f"tolerance {spec!r} names no bound; use KEY=VALUE with KEY one of "
                          f"{', '.join(keys)}")
    return out


def _tolerance_number(text: str, part: str) -> float:
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not 0 <= number < math.inf:
        raise ConfigError(f"tolerance {part!r}: {text.strip()!r} is not a number >= 0")
    return number
