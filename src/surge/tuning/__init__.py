"""Selection: the serving configuration with the highest throughput under an SLO and an
accuracy budget, written into the model's config."""

from surge.tuning.apply import apply_candidate, write_selection
from surge.tuning.predict import Measurement, ServingCosts, predict
from surge.tuning.search import CandidateResult, Rung, SelectionReport, feasible, select
from surge.tuning.space import (
    ORIGINAL,
    AccuracyBudget,
    Candidate,
    Effort,
    Load,
    SearchSpace,
    Slo,
    build_space,
    parse_duration_s,
    parse_rate,
)

__all__ = [
    "ORIGINAL",
    "AccuracyBudget",
    "Candidate",
    "CandidateResult",
    "Effort",
    "Load",
    "Measurement",
    "Rung",
    "SearchSpace",
    "SelectionReport",
    "ServingCosts",
    "Slo",
    "apply_candidate",
    "build_space",
    "feasible",
    "parse_duration_s",
    "parse_rate",
    "predict",
    "select",
    "write_selection",
]
