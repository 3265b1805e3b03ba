"""`queue.priorities` in config.yaml and in a load's config override: levels as the V2
`priority` parameter names them, each with its own max_size and default_timeout_ms."""

from __future__ import annotations

from pathlib import Path

import pytest

from surge.engine.reload import override_config
from surge.errors import ConfigError
from surge.repository.config import parse_config, read_config, write_config
from surge.repository.queueing import MAX_PRIORITY, PriorityQueueConfig

YAML = """\
queue:
  max_size: 64
  default_timeout_ms: 1000
  priorities:
    0: {max_size: 48}
    1: {default_timeout_ms: 20}
    18446744073709551615: {max_size: 8, default_timeout_ms: 60000}
"""


def test_levels_read_from_yaml_keep_their_policies(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(YAML)
    queue = read_config(tmp_path / "config.yaml").queue
    assert queue.priorities == {
        0: PriorityQueueConfig(max_size=48),
        1: PriorityQueueConfig(default_timeout_ms=20.0),
        MAX_PRIORITY: PriorityQueueConfig(max_size=8, default_timeout_ms=60000.0),
    }
    assert queue.max_size == 64
    assert queue.default_timeout_ms == 1000


def test_a_written_config_reads_back_the_same(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(YAML)
    config = read_config(tmp_path / "config.yaml")
    write_config(tmp_path / "again.yaml", config)  # keys written as strings, as JSON has them
    assert read_config(tmp_path / "again.yaml") == config


def test_json_keys_name_levels_as_strings() -> None:
    config = parse_config({"queue": {"priorities": {"3": {"max_size": 2}}}}, "m/config.yaml")
    assert config.queue.priorities == {3: PriorityQueueConfig(max_size=2)}


BAD = [
    ({"x": {"max_size": 1}}, "queue.priorities: Value error, key 'x' is no priority level"),
    ({"-1": {"max_size": 1}}, "key '-1' is no priority level"),
    ({-1: {"max_size": 1}}, "key -1 is no priority level"),
    ({"01": {"max_size": 1}}, "key '01' is no priority level"),
    ({" 1": {"max_size": 1}}, "key ' 1' is no priority level"),
    ({1.0: {"max_size": 1}}, "key 1.0 is no priority level"),
    ({True: {"max_size": 1}}, "key True is no priority level"),
    ({MAX_PRIORITY + 1: {"max_size": 1}}, f"key {MAX_PRIORITY + 1} is no priority level"),
    ({"1" + "0" * 30: {"max_size": 1}}, "is no priority level"),
    ({1: {"max_size": 1}, "1": {"max_size": 2}}, "priority level 1 is given twice"),
    ({0: {"max_size": 1}, 8: {"max_size": 2}}, "levels 0 and 8 are one level"),
    ({1: {"max_sise": 3}}, "unknown key 'queue.priorities.1.max_sise'"),
    ({1: {"max_size": 0}}, "queue.priorities.1.max_size: Input should be greater than or equal"),
    ({1: {"max_size": 2.0}}, "queue.priorities.1.max_size: Input should be a valid integer"),
    ({1: {"max_size": True}}, "queue.priorities.1.max_size: Input should be a valid integer"),
    ({1: {"default_timeout_ms": 0}}, "queue.priorities.1.default_timeout_ms: Input should be"),
    ({1: {"default_timeout_ms": float("inf")}}, "queue.priorities.1.default_timeout_ms"),
    ({1: {"default_timeout_ms": "5"}}, "queue.priorities.1.default_timeout_ms"),
    ({1: {}}, "queue.priorities.1: Value error, a priority level's policy sets max_size"),
    ({1: None}, "queue.priorities.1: Input should be a valid dictionary"),
    ({1: {"max_size": 65}}, "queue.priorities.1.max_size (65) is above queue.max_size (64)"),
    ([1], "queue.priorities: Input should be a valid dictionary"),
]


@pytest.mark.parametrize(("levels", "message"), BAD)
def test_a_bad_level_is_a_config_error_naming_it(levels: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"queue": {"max_size": 64, "priorities": levels}}, "m/config.yaml")
    assert str(info.value).startswith("m/config.yaml: ")
    assert message in str(info.value)


def test_a_load_override_sets_levels_and_is_checked_as_config_yaml_is() -> None:
    base = parse_config({"queue": {"max_size": 16}}, "m/config.yaml")
    override = {"queue": {"max_size": 16, "priorities": {"0": {"max_size": 4}}}}
    assert override_config(base, override).queue.priorities == {0: PriorityQueueConfig(max_size=4)}
    with pytest.raises(ConfigError, match=r"config override: queue.priorities.2.max_size"):
        override_config(base, {"queue": {"priorities": {"2": {"max_size": -1}}}})
    with pytest.raises(ConfigError, match=r"config override: queue.priorities: .*'two'"):
        override_config(base, {"queue": {"priorities": {"two": {"max_size": 1}}}})


def test_an_override_of_other_fields_keeps_the_levels_of_config_yaml() -> None:
    base = parse_config({"queue": {"priorities": {5: {"default_timeout_ms": 9}}}}, "m")
    config = override_config(base, {"instances": 2})
    assert config.queue.priorities == {5: PriorityQueueConfig(default_timeout_ms=9.0)}
