"""The hang rule and its config fields."""

from __future__ import annotations

import pytest

from surge.errors import ConfigError
from surge.repository.config import ModelConfig, parse_config
from surge.workers.hang import HangRule


def test_limit_is_a_multiple_of_the_estimate_with_a_floor() -> None:
    rule = HangRule(multiple=10.0, min_s=2.0)
    assert rule.limit(0.5) == pytest.approx(5.0)
    assert rule.limit(0.001) == pytest.approx(2.0)  # tiny batches never trip on a hiccup
    assert rule.limit(None) is None  # nothing measured yet: no basis


def test_rule_is_checked() -> None:
    with pytest.raises(ValueError, match="multiple"):
        HangRule(multiple=0.5)
    with pytest.raises(ValueError, match="minimum"):
        HangRule(min_s=0.0)


def test_config_fields_default_and_bounds() -> None:
    config = ModelConfig()
    assert (config.hang_multiple, config.hang_min_ms) == (10.0, 2000.0)
    tuned = parse_config({"hang_multiple": 3, "hang_min_ms": 250}, "m/config.yaml")
    assert (tuned.hang_multiple, tuned.hang_min_ms) == (3.0, 250.0)
    with pytest.raises(ConfigError, match="hang_multiple"):
        parse_config({"hang_multiple": 0.5}, "m/config.yaml")
    with pytest.raises(ConfigError, match="hang_min_ms"):
        parse_config({"hang_min_ms": 0}, "m/config.yaml")
    described = ModelConfig.model_fields
    assert described["hang_multiple"].description
    assert described["hang_min_ms"].description
