"""The `worker` field of a model config: dedicated by default, or a shared worker group."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from surge.errors import ConfigError
from surge.repository.config import ModelConfig, WorkerConfig, parse_config, write_config


def parsed(data: dict[str, Any]) -> ModelConfig:
    return parse_config(data, "m/config.yaml")


def test_a_model_has_a_dedicated_worker_unless_it_asks_for_a_group() -> None:
    assert parsed({}).worker is None
    assert parsed({"worker": "dedicated"}).worker is None


@pytest.mark.parametrize(("value", "group", "processes"), [
    ("shared", "default", 1),
    ({"group": "small", "processes": 2}, "small", 2),
    ({"processes": 3}, "default", 3),
    ({"group": "per-customer.v2"}, "per-customer.v2", 1),
])
def test_shared_group_forms(value: Any, group: str, processes: int) -> None:
    assert parsed({"worker": value}).worker == WorkerConfig(group=group, processes=processes)


def test_a_shared_worker_survives_writing_and_reading_the_config(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    write_config(path, parsed({"worker": "shared"}))
    assert parse_config(yaml.safe_load(path.read_text()), "x").worker == WorkerConfig()


@pytest.mark.parametrize(("data", "message"), [
    ({"worker": "sharde"}, "worker: Value error, expected 'dedicated', 'shared' or a mapping "
                           "{group: NAME, processes: N} (got 'sharde')"),
    ({"worker": 3}, "worker: Value error, expected 'dedicated', 'shared'"),
    ({"worker": {"group": "a/b"}}, "worker.group: Value error, invalid worker group name 'a/b'"),
    ({"worker": {"group": ""}}, "worker.group: Value error, invalid worker group name ''"),
    ({"worker": {"processes": 0}}, "worker.processes: Input should be greater than or equal "
                                   "to 1 (got 0)"),
    ({"worker": {"processes": 65}}, "worker.processes: Input should be less than or equal to 64 "
                                    "(got 65)"),
    ({"worker": {"proceses": 2}}, "unknown key 'worker.proceses'"),
    ({"worker": "shared", "instances": 2}, "instances (2) is for dedicated workers"),
    ({"worker": "shared", "placement": "cluster"}, "a shared group runs local processes, not "
                                                   "placement 'cluster'"),
])
def test_bad_worker_values_name_the_field_and_the_value(data: dict[str, Any],
                                                        message: str) -> None:
    with pytest.raises(ConfigError) as error:
        parsed(data)
    assert str(error.value).startswith("m/config.yaml: ")
    assert message in str(error.value)
