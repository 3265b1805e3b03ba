"""The accuracy ladder `surge tune` writes: the original first, then each variant within the
budget that is faster than every rung above it, with the accuracies it measured."""

from __future__ import annotations

from pathlib import Path

import pytest

from surge.repository.config import ModelConfig, read_config
from surge.tuning.apply import Ladder, Measured, apply_candidate, choose_ladder, write_selection
from surge.tuning.space import Candidate

MEASURED = [
    Measured("original", 91.2, True, 300.0),
    Measured("int8-static", 91.1, True, 900.0),
    Measured("int8-dynamic", 91.15, True, 250.0),  # more accurate than int8-static, but slower
    Measured("prune-50", 90.5, True, 1200.0),
    Measured("low-rank", 87.0, False, 2000.0),  # outside the budget
]


def test_ladder_keeps_faster_rungs_within_the_budget_by_accuracy() -> None:
    ladder = choose_ladder(MEASURED, 1.0)
    assert ladder is not None
    assert ladder.rungs == ("original", "int8-static", "prune-50")
    assert ladder.max_accuracy_drop == 1.0
    assert ladder.accuracy == {"original": 91.2, "int8-static": 91.1, "prune-50": 90.5}


def test_no_ladder_without_a_faster_variant_or_a_drop_budget() -> None:
    assert choose_ladder(MEASURED[:1] + MEASURED[2:3], 1.0) is None
    assert choose_ladder(MEASURED, None) is None
    assert choose_ladder([Measured("original", None, True, 300.0), *MEASURED[1:]], 1.0) is None


def test_the_written_config_serves_the_ladder(tmp_path: Path) -> None:
    candidate = Candidate("int8-static", 16, 1.0, 1, 2)
    ladder = Ladder(("original", "int8-static"), 0.5, {"original": 91.2, "int8-static": 91.1})
    (tmp_path / "config.yaml").write_text("max_batch_size: 8\nvariant: int8-static\n")
    write_selection(tmp_path, candidate, 50.0, ladder)
    config = read_config(tmp_path / "config.yaml")
    assert config.ladder == ["original", "int8-static"]
    assert config.max_accuracy_drop == 0.5
    assert config.ladder_accuracy == {"original": 91.2, "int8-static": 91.1}
    assert config.variant is None  # the ladder starts from the original
    assert config.max_batch_size == 16
    assert config.slo_p99_ms == 50.0


def test_without_an_slo_no_ladder_is_written() -> None:
    ladder = Ladder(("original", "int8-static"), 0.5, {"original": 91.2, "int8-static": 91.1})
    config = apply_candidate(ModelConfig(), Candidate("int8-static", 8, 1.0, 1, 2), None, ladder)
    assert config.ladder == []
    assert config.variant == "int8-static"


@pytest.mark.parametrize("drop", [0.05])
def test_a_tight_budget_leaves_only_variants_inside_it(drop: float) -> None:
    measured = [Measured(m.variant, m.accuracy, m.accuracy is not None and m.accuracy >= 91.2
                         - drop, m.throughput) for m in MEASURED]
    assert choose_ladder(measured, drop) is None
