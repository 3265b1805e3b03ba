"""`tune()`: optimize (if variants are missing) -> evaluate -> profile -> select -> write config.

The search runs in rungs: every configuration is first *predicted* from the in-process profiles
(milliseconds each), the best few are served for real in short runs, and the finalists in full
runs. The untuned configuration (original model, max batch 1, one instance) and the chosen one
are then measured back to back by the same load generator, so the speed-up is a same-run ratio.
Everything lands in a `TuningReport`, saved as JSON under `REPO/NAME/tuning/`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import Progress

from surge.configfile import write_text_atomically
from surge.errors import ConfigError
from surge.evaluate.harness import EvalDataset, EvalReport, evaluate, load_dataset, run_dataset
from surge.evaluate.profile import ProfileReport, default_batch_sizes, profile_variant
from surge.platform import available_cores
from surge.repository import Repository
from surge.runtimes import RunnerOptions
from surge.tasks import get_task
from surge.tuning.apply import Measured, choose_ladder, write_engine, write_selection
from surge.tuning.engines import EngineChoice, choose_engine
from surge.tuning.options import check_kinds, check_rate
from surge.tuning.predict import (
    Measurement,
    Observation,
    ServingCosts,
    fit_costs,
    observe,
    predict,
)
from surge.tuning.search import Rung, SelectionReport, select
from surge.tuning.serving import (
    TUNING_DIR,
    ServingTrialError,
    check_tuning_folder,
    measure_served,
)
from surge.tuning.space import ORIGINAL, AccuracyBudget, Candidate, Effort, SearchSpace, Slo
from surge.tuning.target import TuneTarget, resolve_target
from surge.tuning.variants import VariantResult, make_variants

REPORT_FILE = "report.json"
PREDICTED = "predicted"
SHORT_RUN = "short run"
FULL_RUN = "full run"
BASELINE = "baseline"
FINAL = "final"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class TuneOptions:
    """What to tune for (the data, the task, the SLO, the accuracy budget), what may be tried
    and how much effort to spend."""

    data: str
    task: str
    slo: Slo
    accuracy: AccuracyBudget = AccuracyBudget()
    space: SearchSpace = SearchSpace()
    effort: Effort = Effort()
    protocol: str = "http"  # how the load generator talks to the served trials
    write_config: bool = True
    step: str | None = None  # tuning a pipeline: its model step to tune (surge.tuning.target)

    def __post_init__(self) -> None:
        check_kinds(self)  # first: the checks below read the fields' attributes
        object.__setattr__(self, "data", str(self.data))  # a Path: as the report saves it
        task = get_task(self.task)  # an unknown task fails here, before any work
        metric = task.check_metric(self.accuracy.metric)
        self.accuracy.check_range(metric, *task.headline_range(metric))
        check_rate(self)
        rows, sizes = self.slo.load.rows, self.space.max_batch_sizes
        if max(sizes) < rows:
            raise ConfigError(f"--max-batch {','.join(map(str, sizes))}: every size is below "
                              f"--rows-per-request {rows}; max batch counts rows, so give "
                              f"sizes of at least {rows}, e.g. {rows},{2 * rows},{5 * rows}")


@dataclass
class ServedRun:
    """One configuration served for real, with what the queueing model predicted for it."""

    candidate: Candidate
    rung: str
    predicted: Measurement
    measured: Measurement
    startup_s: float
    error: str = ""
    client_cpu_share: float | None = None  # cores the load generator itself used
    served: str = ""  # what the load went to: the model, or the pipeline it is a step of


@dataclass
class TuningReport:
    """Everything `surge tune` found; `surge report` renders it."""

    model: str
    task: str
    data: str
    slo_p99_ms: float
    load: str
    concurrency: int | None
    rate: float | None
    max_accuracy_drop: float | None
    min_metric: float | None
    reference_metric: float | None = None
    variants: list[VariantResult] = field(default_factory=list)
    profiles: list[ProfileReport] = field(default_factory=list)
    engine: EngineChoice | None = None  # ONNX Runtime vs OpenVINO, measured in process
    selection: SelectionReport | None = None
    served: list[ServedRun] = field(default_factory=list)
    baseline: ServedRun | None = None
    tuned: ServedRun | None = None
    speedup: float | None = None
    chosen: Candidate | None = None
    kept_untuned: bool = False  # the chosen one lost the back-to-back re-measurement
    config_path: str | None = None
    serving_costs: ServingCosts | None = None  # the prediction model's final fit
    optimized: list[str] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    total_seconds: float = 0.0
    pipeline: str | None = None  # the pipeline the served trials ran through, if any
    step: str | None = None
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))

    def save(self, model_dir: Path) -> Path:
        path = model_dir / TUNING_DIR / REPORT_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(path, json.dumps(self.to_dict(), indent=1))
        return path


def _jsonable(value: Any) -> Any:
    """inf/nan are not JSON: store them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def baseline_candidate(rows: int = 1) -> Candidate:
    """The untuned configuration: the original model, no batching (a batch is one request of
    `rows` rows), one instance, all cores."""
    return Candidate(ORIGINAL, rows, 0.0, 1, available_cores())


class _Stages:
    """Times each stage for the report."""

    def __init__(self, report: TuningReport) -> None:
        self.report = report
        self.started = time.monotonic()
        self._mark = self.started

    def done(self, name: str) -> None:
        now = time.monotonic()
        self.report.stage_seconds[name] = now - self._mark
        self._mark = now

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def tune(repo_root: Path, model: str, options: TuneOptions,
         progress: Progress | None = None,
         on_stage: Callable[[str], None] | None = None) -> TuningReport:
    """Tune `model` in the repository at `repo_root` (a pipeline: its model step
    `options.step`, measured through the pipeline); returns (and saves) the report."""
    repo = Repository(repo_root)
    target = resolve_target(repo, model, options.step)
    model = target.model
    model_dir = repo.model_dir(model)
    check_tuning_folder(model_dir, (REPORT_FILE,))  # saved at the end: refused at the start
    slo = options.slo
    report = _new_report(target, options)
    stages = _Stages(report)
    say = on_stage or (lambda _: None)
    dataset = _reference_dataset(repo, model, options)  # a bad --data fails before any work

    if options.space.optimize and not repo.variants(model):
        say("optimize: making variants")
        report.optimized = make_variants(repo, model, options.space.variants, report)
        repo = Repository(repo_root)
    stages.done("optimize")

    say("evaluate")
    variants = [ORIGINAL, *repo.variants(model)]
    _evaluate_all(repo, model, variants, dataset, options, progress, report)
    stages.done("evaluate")
    accepted = [v.variant for v in report.variants if v.accepted]

    say("engine")
    report.engine = _choose_engine(repo, model, options)
    stages.done("engine")

    say("profile")
    profiles = _profile_evaluated(repo, model, options, progress, report, dataset.inputs)
    stages.done("profile")

    say("measure the untuned baseline")
    measurer = _Measurer(model_dir, profiles, options, report, progress)
    first = measurer.serve(baseline_candidate(slo.load.rows), BASELINE)
    stages.done("baseline")

    say("select")
    reserve = 2 * options.effort.final_rounds * (first.startup_s + options.effort.full_run_s + 1.0)
    remaining = options.effort.budget_s - stages.elapsed() - reserve
    report.selection = _search(options, report, measurer, accepted, remaining)
    stages.done("select")

    chosen = report.selection.chosen
    if chosen is not None:
        say("re-measure the untuned and the chosen configurations")
        finish(report, measurer.serve, chosen.candidate, model_dir, options)
    stages.done("final")
    report.serving_costs = measurer.costs
    report.total_seconds = stages.elapsed()
    report.save(model_dir)
    return report


def _new_report(target: TuneTarget, options: TuneOptions) -> TuningReport:
    slo = options.slo
    return TuningReport(target.model, options.task, options.data, slo.p99_ms,
                        slo.load.describe(), slo.load.concurrency, slo.load.rate,
                        options.accuracy.max_drop, options.accuracy.min_metric,
                        pipeline=target.pipeline, step=target.step)


def compare_back_to_back(
    serve: Callable[[Candidate, str], ServedRun], untuned: Candidate, tuned: Candidate,
    rounds: int,
) -> tuple[ServedRun, ServedRun, float | None]:
    """Serve both configurations in alternating order (A B, B A, ...) so that load from other
    processes drifting over time hits both alike; returns the run nearest each one's median
    throughput and the ratio of the medians."""
    runs: dict[Candidate, list[ServedRun]] = {untuned: [], tuned: []}
    for index in range(max(1, rounds)):
        order = (untuned, tuned) if index % 2 == 0 else (tuned, untuned)
        for candidate in order:
            runs[candidate].append(serve(candidate, FINAL))
    medians = {c: float(np.median([r.measured.throughput for r in rs])) for c, rs in runs.items()}

    def typical(c: Candidate) -> ServedRun:
        return min(runs[c], key=lambda r: abs(r.measured.throughput - medians[c]))

    ratio = medians[tuned] / medians[untuned] if medians[untuned] > 0 else None
    return typical(untuned), typical(tuned), ratio


def finish(report: TuningReport, serve: Callable[[Candidate, str], ServedRun],
           chosen: Candidate, model_dir: Path, options: TuneOptions) -> None:
    """Re-measure the untuned and the chosen configurations back to back; write the chosen
    one into config.yaml unless the untuned one won there (`keeps_untuned`)."""
    report.chosen = chosen
    report.baseline, report.tuned, report.speedup = compare_back_to_back(
        serve, baseline_candidate(options.slo.load.rows), chosen, options.effort.final_rounds)
    report.kept_untuned = keeps_untuned(report.baseline, report.speedup, options.slo.p99_ms)
    written = report.baseline.candidate if report.kept_untuned else chosen
    if options.write_config:
        report.config_path = _write_config(model_dir, written, report, options)


def keeps_untuned(untuned: ServedRun, speedup: float | None, slo_p99_ms: float) -> bool:
    """The untuned configuration served faster than the chosen one back to back and met the
    SLO there: the search's runs favoured a choice that would make serving slower."""
    return (speedup is not None and speedup < 1.0
            and untuned.measured.p99_ms is not None and untuned.measured.p99_ms <= slo_p99_ms)


def _reference_dataset(repo: Repository, model: str, options: TuneOptions) -> EvalDataset:
    loaded = repo.load(model)
    dataset = load_dataset(options.data, loaded.signature.input_names[0])
    samples = options.effort.eval_samples
    dataset = dataset.subset(samples) if samples else dataset
    # an accuracy of 3 rows would pass for a measurement
    Effort.check_samples(len(dataset), f"--data {options.data!r} has {len(dataset)} sample(s)")
    return dataset


def _evaluate_all(repo: Repository, model: str, variants: list[str], dataset: EvalDataset,
                  options: TuneOptions, progress: Progress | None, report: TuningReport
                  ) -> dict[str, EvalReport]:
    task = get_task(options.task)
    out: dict[str, EvalReport] = {}
    reference_outputs: np.ndarray | None = None
    for variant in variants:
        # `model@original`: the version files, even when the config already selects a variant
        # (as a tune before this one left it); a plain `model` would load that variant.
        ref = f"{model}@{variant}"
        try:
            loaded = repo.load(ref)  # the config's threads and device, as serving would
            if variant == ORIGINAL and task.scores_against_reference:
                # the original is the reference: it scores itself perfectly, and the variants
                # are scored against its outputs
                reference_outputs = _first_output(loaded, dataset, progress)
            result = evaluate(loaded, dataset, task, reference=reference_outputs,
                              progress=progress, metric=options.accuracy.metric)
        except Exception as exc:  # a broken variant loses; the tune goes on
            report.variants.append(VariantResult(variant, "", None, False,
                                                 f"could not be evaluated: {exc}"))
            if variant == ORIGINAL:
                raise
            continue
        out[variant] = result
    reference = out[ORIGINAL].metric
    report.reference_metric = reference
    for variant, result in out.items():
        why = options.accuracy.rejects(result.metric, reference)
        report.variants.append(VariantResult(variant, result.metric_name, result.metric,
                                             why is None, why or "within the accuracy budget",
                                             result.seconds))
    return out


def _write_config(model_dir: Path, chosen: Candidate, report: TuningReport,
                  options: TuneOptions) -> str:
    """Write the chosen configuration with the SLO and the accuracy ladder of the measured
    variants (see `choose_ladder`); returns the config's path."""
    measured = [Measured(v.variant, v.metric, v.accepted, v.inprocess_best)
                for v in report.variants]
    ladder = choose_ladder(measured, options.accuracy.max_drop)
    return str(write_selection(model_dir, chosen, options.slo.p99_ms, ladder))


def _first_output(loaded: Any, dataset: EvalDataset, progress: Progress | None) -> np.ndarray:
    runner = loaded.runner
    outputs = run_dataset(runner, dataset, 256, progress, "reference outputs")
    return outputs[runner.signature.output_names[0]]


def _profile_evaluated(repo: Repository, model: str, options: TuneOptions,
                       progress: Progress | None, report: TuningReport,
                       samples: dict[str, np.ndarray]) -> dict[str, ProfileReport]:
    """Every evaluated variant is profiled (on the evaluation data's rows), so the report can
    place it on the Pareto plot."""
    evaluated = [v.variant for v in report.variants if v.metric is not None]
    profiles = _profile_all(repo, model, evaluated, options, progress, samples)
    report.profiles = list(profiles.values())
    for result in report.variants:
        if result.variant in profiles:
            result.inprocess_best = profiles[result.variant].best_throughput()
    return profiles


def _choose_engine(repo: Repository, model: str, options: TuneOptions) -> EngineChoice | None:
    """Chosen before profiling and written to config.yaml at once, so the profiles and the
    served trials all run on the chosen engine."""
    config = repo.config(model)
    if config.engine not in ("auto", "onnxruntime", "openvino") or config.factory:
        return None
    choice = choose_engine(repo.model_file(model), max(options.space.max_batch_sizes),
                           seconds=max(4 * options.effort.profile_s, 0.5))
    if choice is not None and options.write_config:
        write_engine(repo.model_dir(model), choice.engine)
    return choice


def _profile_all(repo: Repository, model: str, variants: list[str], options: TuneOptions,
                 progress: Progress | None, samples: dict[str, np.ndarray] | None = None
                 ) -> dict[str, ProfileReport]:
    sizes = profile_sizes(max(options.space.max_batch_sizes), options.slo.load.rows)
    # the untuned baseline's setting too: its prediction calibrates the serving overhead
    baseline = baseline_candidate()
    settings = sorted({*options.space.layouts(), (baseline.instances, baseline.threads)})
    device = repo.config(model).device  # profile where serving will run
    out = {}
    for variant in variants:
        ref = f"{model}@{variant}"  # `@original`: the version files (see _evaluate_all)

        def factory(runner_options: RunnerOptions, ref: str = ref) -> Any:
            return repo.load(ref, options=runner_options).runner

        out[variant] = profile_variant(factory, model, variant, sizes, settings,
                                       options.effort.profile_s, progress, device, samples)
    return out


def profile_sizes(max_batch_size: int, rows: int) -> list[int]:
    """Batch sizes (rows) to profile: powers of two up to the largest max batch, and every
    whole number of `rows`-row requests that fits, the batches the server will really run."""
    whole = range(rows, max_batch_size + 1, rows) if rows > 1 else ()
    return sorted({*default_batch_sizes(max_batch_size), *whole})


class _Measurer:
    """`measure(candidate, rung)` for the selector: a prediction or a real served run."""

    def __init__(self, model_dir: Path, profiles: dict[str, ProfileReport], options: TuneOptions,
                 report: TuningReport, progress: Progress | None) -> None:
        self.model_dir = model_dir
        self.profiles = profiles
        self.options = options
        self.report = report
        self.costs = ServingCosts()
        self.observations: list[Observation] = []
        self.progress = progress
        self.task = progress.add_task("serve + bench", total=None) if progress else None

    def learn(self, run: ServedRun) -> None:
        """Refit the serving costs to every served run so far (the first is the baseline), so
        each prediction draws on all the measurements made before it."""
        if run.error or not self._profiled(run.candidate):
            return
        seen = observe(self.profiles[run.candidate.variant], run.candidate,
                       self.options.slo.load, run.measured)
        if seen is not None:
            self.observations.append(seen)
            self.costs = fit_costs(self.observations)

    def predicted(self, candidate: Candidate) -> Measurement:
        return predict(self.profiles[candidate.variant], candidate, self.options.slo.load,
                       self.costs)

    def __call__(self, candidate: Candidate, rung: Rung) -> Measurement:
        if rung.name == PREDICTED:
            return self.predicted(candidate)
        return self.serve(candidate, rung.name).measured

    def serve(self, candidate: Candidate, rung: str) -> ServedRun:
        effort = self.options.effort
        duration = effort.short_run_s if rung == SHORT_RUN else effort.full_run_s
        predicted = self.predicted(candidate) if self._profiled(candidate) else \
            Measurement(0.0, math.inf)
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, description=f"serve + bench {candidate.key} ({rung})")
        try:
            result = measure_served(self.model_dir, candidate, self.options.slo.load, duration,
                                    self.options.slo.p99_ms, self.options.protocol, rung=rung,
                                    pipeline=self.report.pipeline)
            bench_run = result.bench["runs"][0]
            run = ServedRun(candidate, rung, predicted, result.measurement, result.startup_s,
                            client_cpu_share=bench_run.get("client_cpu_share"),
                            served=result.bench["model"])
        except ServingTrialError as exc:
            run = ServedRun(candidate, rung, predicted, Measurement(0.0, math.inf, rung, 1), 0.0,
                            str(exc))
        self.report.served.append(run)
        self.learn(run)
        if self.progress is not None and self.task is not None:
            self.progress.advance(self.task)
        return run

    def _profiled(self, candidate: Candidate) -> bool:
        profile = self.profiles.get(candidate.variant)
        return profile is not None and (candidate.instances, candidate.threads) in \
            profile.settings()


def _search(options: TuneOptions, report: TuningReport, measurer: _Measurer,
            accepted: list[str], budget_s: float) -> SelectionReport:
    space = options.space.candidates(accepted, options.slo.load.rows)
    accuracy = {v.variant: v.metric for v in report.variants if v.metric is not None}
    effort = options.effort
    startup = report.served[0].startup_s if report.served else 5.0
    short = (Rung(SHORT_RUN, startup + effort.short_run_s + 1.0),) if effort.short_runs else ()
    rungs = (Rung(PREDICTED, 0.0), *short, Rung(FULL_RUN, startup + effort.full_run_s + 1.0))
    survivors = (effort.short_runs, effort.finalists) if short else (effort.finalists,)
    return select(space, accuracy, options.accuracy, options.slo, measurer, rungs,
                  reference=report.reference_metric or 0.0, finalists=effort.finalists,
                  brute_force_limit=0, survivors=survivors, time_budget_s=max(0.0, budget_s))
