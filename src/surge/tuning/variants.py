"""The variants a tune tries: made by the optimizer when the model has none, and each one's
evaluation against the accuracy budget."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from surge.errors import SurgeError
from surge.repository import Repository

if TYPE_CHECKING:
    from surge.tuning.tune import TuningReport


@dataclass
class VariantResult:
    """A variant's evaluation and whether it is inside the accuracy budget."""

    variant: str
    metric_name: str
    metric: float | None
    accepted: bool
    reason: str
    eval_seconds: float = 0.0
    inprocess_best: float | None = None  # best in-process samples/s over the profile


def default_variants(repo: Repository, model: str) -> str:
    """Variants worth trying: int8 (ONNX Runtime) always; pruning when a PyTorch module with the
    same weights is at hand (a torch_factory model, or `parameters.torch_model`)."""
    config = repo.config(model)
    names = ["int8-dynamic", "int8-static"]
    if config.resolved_engine() == "torch_factory" or config.parameters.get("torch_model"):
        names.append("prune-50")
    return ",".join(names)


def make_variants(repo: Repository, model: str, spec: str | None,
                  report: TuningReport) -> list[str]:
    """Run the optimizer over `model` (variants under REPO/NAME/variants/); returns those kept.
    Variants the optimizer cannot make or rejects are listed in the report with the reason."""
    from surge.optimize import parse_variants
    from surge.optimize.pipeline import optimize_model

    kept = []
    # one call per variant, so one that cannot be made (say, int8-static without calibration
    # data) is reported and the others still get made
    for name, config in parse_variants(spec or default_variants(repo, model)).items():
        try:
            outcome = optimize_model(repo.root, model, {name: config})[0]
        except SurgeError as exc:
            report.variants.append(VariantResult(name, "", None, False, f"not made: {exc}"))
            continue
        if outcome.kept:
            kept.append(name)
            continue
        failures = outcome.variant.check.failures if outcome.variant else ()
        why = outcome.error or "; ".join(failures)
        report.variants.append(VariantResult(name, "", None, False,
                                             f"the optimizer's check rejected it: {why}"))
    return kept
