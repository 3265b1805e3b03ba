"""Checks of `TuneOptions` where they are built (as `ServeOptions` and `LaunchOptions` check
theirs): a value of the wrong kind, or one the search cannot use, is refused in one line
naming it, with the command line's words, before any variant is made or any data read."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from surge.errors import ConfigError
from surge.tuning.space import AccuracyBudget, Effort, SearchSpace, Slo

if TYPE_CHECKING:
    from surge.tuning.tune import TuneOptions

MIN_REQUESTS_PER_RUN = 10  # an open loop's served run: fewer measure no latency percentile
_PARTS = (("slo", Slo, "Slo(50.0, Load(concurrency=64))"),
          ("accuracy", AccuracyBudget, "AccuracyBudget(max_drop=1.0)"),
          ("space", SearchSpace, "SearchSpace()"), ("effort", Effort, "Effort(budget_s=600)"))


def check_kinds(options: TuneOptions) -> None:
    """Each field of the kind it is read as: `data=5` or `protocol='ftp'` failed only after the
    variants were made, or on the first served run."""
    from surge.bench import PROTOCOLS

    data = options.data
    if not isinstance(data, str | Path) or not str(data).strip():
        raise ConfigError(f"--data {data!r}: give a dataset name or file (a str): one "
                          "`surge data list` names, an .npz or a split directory")
    for name, kind, example in _PARTS:
        value = getattr(options, name)
        if not isinstance(value, kind):
            raise ConfigError(f"{name} {value!r}: give an instance of {kind.__name__}, e.g. "
                              f"{example}")
    if options.protocol not in PROTOCOLS:
        raise ConfigError(f"--protocol {options.protocol!r}: use {', '.join(PROTOCOLS)}")
    if not isinstance(options.write_config, bool):
        raise ConfigError(f"write_config {options.write_config!r}: give True or False")
    step = options.step
    if step is not None and (not isinstance(step, str) or not step.strip()):
        raise ConfigError(f"--step {step!r}: name a model step of the pipeline, or leave it out")


def check_rate(options: TuneOptions) -> None:
    """An open loop so slow that a served run sends a handful of requests measures no p99
    (and the throughput of one request or two): refuse it before the work."""
    rate, effort = options.slo.load.rate, options.effort
    run_s = effort.short_run_s if effort.short_runs else effort.full_run_s
    if rate is not None and rate * run_s < MIN_REQUESTS_PER_RUN:
        which = "--short-run" if effort.short_runs else "--full-run"
        raise ConfigError(f"--rate {rate:g}/s sends about {rate * run_s:.3g} requests in "
                          f"a {run_s:g} s run ({which}): fewer than "
                          f"{MIN_REQUESTS_PER_RUN} measure no p99; raise --rate or "
                          f"lengthen {which}")
