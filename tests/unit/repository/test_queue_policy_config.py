"""`queue.timeout_action` and `queue.allow_timeout_override` (Triton's ModelQueuePolicy fields),
at the model's level and per priority level: read, checked, handed to the scheduler (and to
each rung of a laddered model) and echoed in Triton's fields."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from surge.engine import ModelHandle
from surge.engine.ladder import rung_config
from surge.engine.reload import override_config
from surge.engine.served import scheduler_config
from surge.errors import ConfigError
from surge.protocol.grpc_gen import grpc_service_pb2 as pb
from surge.protocol.metadata import model_config
from surge.repository.config import ORIGINAL, ModelConfig, parse_config, read_config, write_config
from surge.repository.queueing import PriorityQueueConfig
from surge.runtimes.base import Signature, TensorSpec
from surge.scheduler import LevelPolicy

YAML = """\
queue:
  default_timeout_ms: 50
  timeout_action: DELAY
  allow_timeout_override: false
  priorities:
    0: {timeout_action: reject}
    9: {allow_timeout_override: true, default_timeout_ms: 1000}
"""
BATCHED = Signature((TensorSpec("x", "FP32", (-1, 4)),), (TensorSpec("y", "FP32", (-1, 4)),),
                    batched=True, max_batch_size=8, platform="onnxruntime_onnx")


def _config(queue: dict[str, Any]) -> ModelConfig:
    return parse_config({"max_batch_size": 8, "queue": queue}, "m/config.yaml")


def _refusal(queue: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        _config(queue)
    assert str(info.value).startswith("m/config.yaml: ")
    return str(info.value)


def test_the_keys_read_from_yaml_in_either_case(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(YAML)
    queue = read_config(tmp_path / "config.yaml").queue
    assert (queue.timeout_action, queue.allow_timeout_override) == ("delay", False)
    assert queue.priorities == {
        0: PriorityQueueConfig(timeout_action="reject"),
        9: PriorityQueueConfig(allow_timeout_override=True, default_timeout_ms=1000.0)}
    for written in ("Delay", "delay", "REJECT"):
        assert _config({"timeout_action": written}).queue.timeout_action == written.lower()


def test_a_written_config_reads_back_the_same(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(YAML)
    config = read_config(tmp_path / "config.yaml")
    write_config(tmp_path / "again.yaml", config)
    assert read_config(tmp_path / "again.yaml") == config


def test_by_default_a_passed_deadline_is_rejected_and_the_own_timeout_wins() -> None:
    queue = _config({}).queue
    assert (queue.timeout_action, queue.allow_timeout_override) == ("reject", True)
    settings = scheduler_config(_config({}), 1)
    assert (settings.timeout_action, settings.allow_timeout_override) == ("reject", True)


@pytest.mark.parametrize(("queue", "message"), [
    ({"timeout_action": "drop"}, "queue.timeout_action: Value error, timeout_action 'drop' is "
                                 "no action: give reject"),
    ({"timeout_action": 1}, "timeout_action 1 is no action"),
    ({"timeout_action": None}, "timeout_action None is no action"),
    ({"priorities": {"9": {"timeout_action": "later"}}},
     "queue.priorities.9.timeout_action: Value error, timeout_action 'later' is no action"),
    ({"allow_timeout_override": "no"},
     "queue.allow_timeout_override: Input should be a valid boolean (got 'no')"),
    ({"allow_timeout_override": 1},
     "queue.allow_timeout_override: Input should be a valid boolean (got 1)"),
    ({"priorities": {"3": {"allow_timeout_override": "false"}}},
     "queue.priorities.3.allow_timeout_override: Input should be a valid boolean (got 'false')"),
])
def test_a_bad_value_is_a_config_error_naming_the_key_and_the_value(
        queue: dict[str, Any], message: str) -> None:
    assert message in _refusal(queue)


def test_delay_where_no_request_can_have_a_deadline_is_refused() -> None:
    refused = _refusal({"timeout_action": "delay", "allow_timeout_override": False})
    assert "queue.timeout_action delay never applies: no deadline there" in refused
    # A level inherits the model's delay and override, and has no default timeout either.
    refused = _refusal({"allow_timeout_override": False,
                        "priorities": {"7": {"timeout_action": "delay"}}})
    assert "queue.priorities.7.timeout_action delay never applies" in refused


def test_delay_is_taken_wherever_a_deadline_can_come_from() -> None:
    _config({"timeout_action": "delay"})  # the requests' own `timeout`, as in Triton
    _config({"timeout_action": "delay", "allow_timeout_override": False,
             "default_timeout_ms": 50})
    _config({"timeout_action": "delay", "allow_timeout_override": False,
             "default_timeout_ms": 50, "priorities": {"5": {"max_size": 3}}})
    _config({"allow_timeout_override": False, "priorities": {
        "7": {"timeout_action": "delay", "default_timeout_ms": 20}}})


def test_the_models_delay_is_taken_where_only_a_level_that_follows_it_has_a_deadline() -> None:
    # Levels not listed have no deadline, level 9 (following the model's delay) has one.
    config = _config({"timeout_action": "delay", "allow_timeout_override": False,
                      "priorities": {"9": {"default_timeout_ms": 2000}}})
    assert scheduler_config(config, 1).priorities[9].default_timeout_s == 2.0
    _config({"timeout_action": "delay", "allow_timeout_override": False,
             "priorities": {"9": {"allow_timeout_override": True}}})
    # Every level following it without a deadline: refused, naming the model's key.
    refused = _refusal({"timeout_action": "delay", "allow_timeout_override": False,
                        "priorities": {"9": {"max_size": 3}, "3": {"timeout_action": "reject",
                                                               "default_timeout_ms": 5}}})
    assert "queue.timeout_action delay never applies" in refused
    assert "nor a level that follows it with one" in refused


def test_a_level_that_only_ignores_timeouts_under_the_models_delay_is_taken() -> None:
    """The level wrote no `delay`: its requests simply have no deadline, while the model's
    delay still applies to the other levels' `timeout`s."""
    config = _config({"timeout_action": "delay",
                      "priorities": {"9": {"allow_timeout_override": False}}})
    assert config.queue.level_policies()[9].allow_timeout_override is False


def test_a_level_that_sets_only_the_new_keys_is_a_policy() -> None:
    levels = _config({"priorities": {"2": {"timeout_action": "delay"},
                                     "0": {"allow_timeout_override": False}}}).queue
    assert levels.level_policies() == {
        2: LevelPolicy(None, None, "priority 2", "delay", None),
        8: LevelPolicy(None, None, "priority 0", None, False)}


def test_a_load_override_is_checked_the_same_way() -> None:
    base = _config({})
    assert override_config(base, {"queue": {"timeout_action": "DELAY"}}).queue.timeout_action \
        == "delay"
    with pytest.raises(ConfigError, match=r"config override: queue.timeout_action: .*'wait'"):
        override_config(base, {"queue": {"timeout_action": "wait"}})
    with pytest.raises(ConfigError, match=r"config override: queue.allow_timeout_override"):
        override_config(base, {"queue": {"allow_timeout_override": "yes"}})


def test_every_rung_of_a_ladder_gets_the_models_policy() -> None:
    config = parse_config({
        "max_batch_size": 8, "slo_p99_ms": 50, "ladder": [ORIGINAL, "int8"],
        "max_accuracy_drop": 1.0, "ladder_accuracy": {ORIGINAL: 90.0, "int8": 89.5},
        "queue": {"timeout_action": "delay", "allow_timeout_override": False,
                  "default_timeout_ms": 40, "priorities": {"2": {"timeout_action": "reject"}}},
    }, "m")
    for rung in config.ladder:
        settings = scheduler_config(rung_config(config, rung), 1)
        assert (settings.timeout_action, settings.allow_timeout_override) == ("delay", False)
        assert settings.priorities[2].timeout_action == "reject"


def _echo(queue: dict[str, Any]) -> dict[str, Any]:
    config = ModelConfig(name="m", max_batch_size=8, queue=queue)
    handle = ModelHandle("m", 1, (1,), config, BATCHED, BATCHED.platform, ("cpu",))
    return dict(model_config(handle)["dynamic_batching"])


def test_the_triton_fields_echo_the_policy_of_the_model_and_of_each_level() -> None:
    batching = _echo({"default_timeout_ms": 50, "timeout_action": "delay",
                      "allow_timeout_override": False, "max_size": 64,
                      "priorities": {"0": {"timeout_action": "reject"},
                                     "9": {"allow_timeout_override": True}}})
    assert batching["default_queue_policy"] == {
        "timeout_action": "DELAY", "default_timeout_microseconds": 50_000,
        "allow_timeout_override": False, "max_queue_size": 64}
    assert batching["priority_queue_policy"] == {
        "8": {"timeout_action": "REJECT", "default_timeout_microseconds": 50_000,
              "allow_timeout_override": False, "max_queue_size": 64},
        "9": {"timeout_action": "DELAY", "default_timeout_microseconds": 50_000,
              "allow_timeout_override": True, "max_queue_size": 64}}


def test_tritons_own_message_decodes_the_echo() -> None:
    echo = {"name": "m", "dynamic_batching": _echo({
        "default_timeout_ms": 50, "timeout_action": "DELAY", "allow_timeout_override": False,
        "priorities": {"9": {"timeout_action": "reject"}}})}
    batching = json_format.ParseDict(echo, pb.ModelConfig()).dynamic_batching
    assert batching.default_queue_policy.timeout_action == pb.ModelQueuePolicy.DELAY
    assert batching.default_queue_policy.allow_timeout_override is False
    assert batching.priority_queue_policy[9].timeout_action == pb.ModelQueuePolicy.REJECT
