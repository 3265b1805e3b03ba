"""`surge optimize`: turn a repository model into checked, servable variants."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from surge.commands import console, exit_on_sigterm, points_note
from surge.errors import SurgeError

if TYPE_CHECKING:
    from surge.optimize import Tolerance
    from surge.optimize.pipeline import Outcome
    from surge.optimize.variant import CheckResult


def optimize(
    repo: Annotated[Path, typer.Argument(help="Model repository directory.")],
    model: Annotated[str, typer.Option(help="Model to optimize.")],
    variants: Annotated[str, typer.Option(
        help="Comma-separated: int8-static[-entropy|-percentile], int8-dynamic, prune-<percent>, "
             "lowrank-<energy>|lowrank-r<rank>, bf16, fp16, fp16-torch, onnx, int8-tables, "
             "fp16-tables (embedding tables only).")],
    calib: Annotated[Path | None, typer.Option(
        help="Calibration inputs: .npy (one-input model) or .npz (one array per input).")] = None,
    tolerance: Annotated[str | None, typer.Option(
        help="e.g. top1=0.95,accuracy_drop=0.5,cosine=0.99,max_abs=0.1,mean_abs=0.01 "
             "(default: top1>=0.9 and accuracy drop <= 1 point for classifiers, "
             "cosine>=0.98 for embeddings).")] = None,
    keep_failed: Annotated[bool, typer.Option(
        help="Also keep variants that miss the tolerance (marked in variant.yaml).")] = False,
    torch_model: Annotated[str | None, typer.Option(
        help="A torch_factory model with the same weights (for prune/lowrank/bf16 on ONNX).")] = None,
    finetune_epochs: Annotated[int, typer.Option(
        min=0, help="Fine-tune epochs after pruning, on the training split of the model's "
             "parameters.dataset (0 = none).")] = 2,
    check_rows: Annotated[int, typer.Option(
        min=1, help="Rows of the evaluation split of the model's parameters.dataset each variant "
             "is checked on.")] = 10_000,
    exclude: Annotated[list[str] | None, typer.Option(
        help="ONNX node name left in fp32 by quantization (repeatable).")] = None,
) -> None:
    """Make variants of a model, check each against the original, keep those within tolerance."""
    from surge.api import optimize as run_optimize
    from surge.optimize import Tolerance
    from surge.optimize.names import parse_tolerance
    from surge.optimize.pipeline import OptimizeOptions

    options = OptimizeOptions(
        calibration=calib,
        tolerance=Tolerance(**parse_tolerance(tolerance)) if tolerance is not None else None,
        keep_failed=keep_failed, torch_model=torch_model, finetune_epochs=finetune_epochs,
        exclude=tuple(exclude or ()), check_rows=check_rows,
    )
    with exit_on_sigterm():
        outcomes = run_optimize(repo, model, variants, options)
    console.print(_outcome_table(model, outcomes))
    failed = [o.name for o in outcomes if o.variant is None]
    if failed and len(failed) == len(outcomes):
        raise SurgeError(f"no variant of {model} could be made ({', '.join(failed)}): see "
                         f"the table above")
    if failed:
        console.print(f"[red]could not be made: {', '.join(failed)}[/red]")
    rejected = [o.name for o in outcomes if not o.kept and o.variant is not None]
    if rejected:
        console.print(f"[red]not kept (outside tolerance): {', '.join(rejected)}[/red] — "
                      "rerun with --keep-failed or a looser --tolerance to keep them")
    note = _drop_note(outcomes, options.tolerance)
    if note:
        console.print(note, highlight=False, soft_wrap=True)


def _drop_note(outcomes: list[Outcome], tolerance: Tolerance | None) -> str | None:
    """The unit of `accuracy_drop` when no variant passed its check and some missed it."""
    note = points_note("--tolerance accuracy_drop={}",
                       tolerance.max_accuracy_drop if tolerance is not None else None)
    checks = [o.variant.check for o in outcomes if o.variant is not None] if note else []
    if any(c.passed for c in checks) or not any(
            f.startswith("accuracy drop ") for c in checks for f in c.failures):
        return None
    return note


# The task's measures, shown when some variant has them: a ranking model's NDCG and AUC beside
# the original's (its check has no top-1 or cosine), a classifier's agreement and accuracy.
MEASURES: tuple[tuple[str, Callable[[CheckResult], str | None]], ...] = (
    ("top-1 agree", lambda c: _pct(c.top1_agreement)),
    ("accuracy", lambda c: _pct(c.accuracy)),
    ("cosine", lambda c: None if c.cosine is None else f"{c.cosine:.4f}"),
    ("NDCG (original)", lambda c: _versus(c.ndcg, c.reference_ndcg)),
    ("AUC (original)", lambda c: _versus(c.auc, c.reference_auc)),
)


def _outcome_table(model: str, outcomes: list[Outcome]) -> Table:
    checks = [o.variant.check for o in outcomes if o.variant is not None]
    measures = [(name, shown) for name, shown in MEASURES
                if any(shown(c) is not None for c in checks)]
    table = Table(title=f"variants of {model}")
    for column in ("variant", "engine", "size", "max abs", "mean abs",
                   *(name for name, _ in measures), "result"):
        table.add_column(column, justify="left" if column in ("variant", "engine", "result")
                         else "right")
    for outcome in outcomes:
        variant = outcome.variant
        if variant is None:
            table.add_row(outcome.name, *["-"] * (4 + len(measures)), f"[red]{outcome.error}")
            continue
        check = variant.check
        verdict = ("[green]kept" if check.passed else "[yellow]kept, FAILED: "
                   + "; ".join(check.failures)) if outcome.kept else (
            "[red]NOT KEPT: " + "; ".join(check.failures))
        table.add_row(
            outcome.name, variant.engine, f"{variant.size_bytes / 1e6:.2f} MB",
            f"{check.max_abs:.3g}", f"{check.mean_abs:.3g}",
            *(shown(check) or "-" for _, shown in measures), verdict,
        )
    return table


def _versus(value: float | None, reference: float | None) -> str | None:
    if value is None:
        return None
    return f"{value:.4f}" + ("" if reference is None else f" ({reference:.4f})")


def _pct(value: float | None) -> str | None:
    return None if value is None else f"{value:.2%}"
