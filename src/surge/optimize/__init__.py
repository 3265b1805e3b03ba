"""Model optimization: verbs that turn one model into servable, checked variants.

    variant = quantize(source, Int8StaticConfig(method="entropy"), out_dir)
    variant = prune(source, PruneConfig(ratio=0.5, norm="l1"), out_dir)
    variant = low_rank(source, LowRankConfig(energy=0.9), out_dir)
    variant = mixed_precision(source, Bf16Config(), out_dir)

Each verb dispatches on its config's class through a registry (one class per format) and returns
a frozen `Variant`: the artifact, its engine, how it was made, and its check against the original.
"""

from surge.optimize.exporting import OnnxExportConfig, export_onnx
from surge.optimize.low_rank import LowRankConfig, low_rank
from surge.optimize.mixed_precision import Bf16Config, Fp16Config, mixed_precision
from surge.optimize.names import parse_variant, parse_variants
from surge.optimize.prune import PruneConfig, prune
from surge.optimize.quantize import Int8DynamicConfig, Int8StaticConfig, quantize
from surge.optimize.registry import OptimizeConfig, apply, register, registered
from surge.optimize.source import ModelSource
from surge.optimize.tables import Fp16TablesConfig, Int8TablesConfig
from surge.optimize.variant import CheckResult, Tolerance, Variant

__all__ = [
    "Bf16Config",
    "CheckResult",
    "Fp16Config",
    "Fp16TablesConfig",
    "Int8DynamicConfig",
    "Int8StaticConfig",
    "Int8TablesConfig",
    "LowRankConfig",
    "ModelSource",
    "OnnxExportConfig",
    "OptimizeConfig",
    "PruneConfig",
    "Tolerance",
    "Variant",
    "apply",
    "export_onnx",
    "low_rank",
    "mixed_precision",
    "parse_variant",
    "parse_variants",
    "prune",
    "quantize",
    "register",
    "registered",
]
