"""A load's config override refused for a value names the key and the value, as the same
mistake in config.yaml does (docs/serving-engine.md, "Timeout action and override")."""

from __future__ import annotations

from typing import Any

import pytest

from surge.engine.reload import override_config
from surge.errors import ConfigError
from surge.repository.config import ModelConfig, parse_config


def _base() -> ModelConfig:
    return parse_config({"max_batch_size": 8}, "m/config.yaml")


@pytest.mark.parametrize(("override", "message"), [
    ({"queue": {"allow_timeout_override": "maybe"}},
     "config override: queue.allow_timeout_override: Input should be a valid boolean "
     "(got 'maybe')"),
    ({"queue": {"priorities": {"9": {"allow_timeout_override": 2}}}},
     "config override: queue.priorities.9.allow_timeout_override: Input should be a valid "
     "boolean (got 2)"),
    ({"response_cache": "yes"},
     "config override: response_cache: Input should be a valid boolean (got 'yes')"),
])
def test_a_refused_value_is_named(override: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        override_config(_base(), override)
    assert str(refused.value) == message


def test_a_rule_across_fields_keeps_its_own_words() -> None:
    with pytest.raises(ConfigError, match=r"^config override: Value error, response_cache is "
                       "for kind model without a ladder"):
        override_config(_base(), {"response_cache": True, "ladder": ["original", "int8"],
                                  "slo_p99_ms": 50, "max_accuracy_drop": 1.0})
