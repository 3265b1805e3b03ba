"""Compare a variant's outputs with the original's: raw errors, plus the task's measures (top-1
agreement and accuracy for classification, cosine for embeddings, ...)."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from surge.optimize.source import ModelSource, run_runner
from surge.optimize.variant import CheckResult, Tolerance
from surge.runtimes import RunnerOptions, load_runner
from surge.tasks import CheckMeasures, get_task


def compare(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
            task: str | None, tolerance: Tolerance, labels: np.ndarray | None = None
            ) -> CheckResult:
    """Errors over every output; the task's measures on the first output (none without one)."""
    diffs = [np.abs(candidate[name].astype(np.float64) - ref.astype(np.float64)).ravel()
             for name, ref in reference.items()]
    every = np.concatenate(diffs)
    first = next(iter(reference))
    ref, cand = reference[first], candidate[first]
    broken = _nan_where_finite(reference, candidate)
    # A NaN error compares false with every bound, so it would pass them; its task measures
    # (NDCG, AUC) are undefined.
    measures = (get_task(task).check(ref, cand, labels) if task and not broken
                else CheckMeasures())
    result = CheckResult(
        samples=int(ref.shape[0]), max_abs=float(every.max(initial=0.0)),
        mean_abs=float(every.mean()) if every.size else 0.0, **asdict(measures),
    )
    return replace(result, failures=broken + failures(result, tolerance))


def _nan_where_finite(reference: dict[str, np.ndarray],
                      candidate: dict[str, np.ndarray]) -> tuple[str, ...]:
    """A failure line per output where the variant answers NaN or inf and the original not."""
    out = []
    for name, ref in reference.items():
        ours = np.asarray(candidate[name], dtype=np.float64)
        bad = int((~np.isfinite(ours) & np.isfinite(np.asarray(ref, np.float64))).sum())
        if bad:
            out.append(f"output {name!r}: {bad} of {ours.size} values NaN or infinite where "
                       "the original's are finite")
    return tuple(out)


def failures(result: CheckResult, tol: Tolerance) -> tuple[str, ...]:
    """One readable line per tolerance missed."""
    out = []
    if tol.max_abs is not None and result.max_abs > tol.max_abs:
        out.append(f"max abs error {result.max_abs:.4g} > {tol.max_abs}")
    if tol.mean_abs is not None and result.mean_abs > tol.mean_abs:
        out.append(f"mean abs error {result.mean_abs:.4g} > {tol.mean_abs}")
    if tol.min_top1 is not None and result.top1_agreement is not None and (
        result.top1_agreement < tol.min_top1
    ):
        out.append(f"top-1 agreement {result.top1_agreement:.4f} < {tol.min_top1}")
    if tol.min_cosine is not None and result.cosine is not None and result.cosine < tol.min_cosine:
        out.append(f"cosine {result.cosine:.4f} < {tol.min_cosine}")
    if (tol.max_accuracy_drop is not None and result.accuracy is not None
            and result.reference_accuracy is not None):
        drop = 100.0 * (result.reference_accuracy - result.accuracy)
        if drop > tol.max_accuracy_drop:
            out.append(f"accuracy drop {drop:.2f} points > {tol.max_accuracy_drop}")
    out += _drop("NDCG", result.reference_ndcg, result.ndcg, tol.max_ndcg_drop)
    out += _drop("AUC", result.reference_auc, result.auc, tol.max_auc_drop)
    return tuple(out)


def _drop(metric: str, reference: float | None, value: float | None,
          budget: float | None) -> list[str]:
    """The line for a metric (a fraction) that fell more than `budget` points, if it did."""
    if budget is None or reference is None or value is None:
        return []
    drop = 100.0 * (reference - value)
    if drop <= budget:
        return []
    return [f"{metric} drop {drop:.2f} points > {budget} ({100 * reference:.2f} -> "
            f"{100 * value:.2f})"]


def verify(source: ModelSource, artifact: Path, tolerance: Tolerance, threads: int = 1) -> CheckResult:
    """Load the artifact in the engine that will serve it and compare it with the original.
    One thread: checks need no speed, and spinning thread pools crawl on a shared machine."""
    runner = load_runner(artifact, RunnerOptions(intra_op_threads=threads))
    candidate = run_runner(runner, {n: source.samples[n] for n in source.input_names})
    reference = source.reference_outputs()
    candidate = {name: candidate[name] for name in reference if name in candidate} or candidate
    missing = [n for n in reference if n not in candidate]
    if missing:  # the artifact changed the output names: never keep it
        return CheckResult(0, float("inf"), float("inf"),
                           failures=(f"outputs {missing} missing (variant has {list(candidate)})",))
    return compare(reference, candidate, source.task, tolerance, source.labels)
