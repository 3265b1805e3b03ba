"""The model configuration shows the model's queue policy in Triton's dynamic batcher fields,
with Triton's field numbers, so that Triton's own clients decode it."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format

from surge.engine import ModelHandle
from surge.protocol.grpc_gen import grpc_service_pb2 as pb
from surge.protocol.metadata import model_config
from surge.repository.config import ModelConfig
from surge.runtimes.base import Signature, TensorSpec

BATCHED = Signature((TensorSpec("x", "FP32", (-1, 4)),), (TensorSpec("y", "FP32", (-1, 4)),),
                    batched=True, max_batch_size=8, platform="onnxruntime_onnx")
UNBATCHED = Signature((TensorSpec("x", "FP32", (2, 4)),), (TensorSpec("y", "FP32", (2, 4)),),
                      batched=False, max_batch_size=0, platform="onnxruntime_onnx")
ALL_LEVELS = 2**64 - 1


def _echo(signature: Signature = BATCHED, **settings: Any) -> dict[str, Any]:
    config = ModelConfig(name="m", max_batch_size=signature.max_batch_size, **settings)
    handle = ModelHandle("m", 1, (1,), config, signature, signature.platform, ("cpu",))
    return model_config(handle)


def _policy(size: int, timeout_us: int) -> dict[str, Any]:
    return {"timeout_action": "REJECT", "default_timeout_microseconds": timeout_us,
            "allow_timeout_override": True, "max_queue_size": size}


def test_default_queue_is_the_default_queue_policy() -> None:
    batching = _echo()["dynamic_batching"]
    assert batching == {"preferred_batch_size": [], "max_queue_delay_microseconds": 2000,
                        "priority_levels": ALL_LEVELS, "default_priority_level": 8,
                        "default_queue_policy": _policy(256, 0)}


def test_levels_show_their_effective_policy_keyed_by_served_level() -> None:
    batching = _echo(queue={"max_size": 6, "default_timeout_ms": 250, "priorities": {
        0: {"max_size": 4}, "9": {"max_size": 3, "default_timeout_ms": 1.5},
        1: {"default_timeout_ms": 40}}})["dynamic_batching"]
    assert batching["default_queue_policy"] == _policy(6, 250_000)
    # V2 priority 0 is served at level 8; a rule a level leaves out is the model's.
    assert batching["priority_queue_policy"] == {
        "1": _policy(6, 40_000), "8": _policy(4, 250_000), "9": _policy(3, 1500)}


def test_microseconds_are_rounded_not_truncated() -> None:
    batching = _echo(batching={"max_queue_delay_ms": 1.001},
                     queue={"default_timeout_ms": 1.001})["dynamic_batching"]
    assert batching["max_queue_delay_microseconds"] == 1001
    assert batching["default_queue_policy"]["default_timeout_microseconds"] == 1001


@pytest.mark.parametrize(("signature", "settings"), [
    (BATCHED, {"batching": {"enabled": False}}),
    (UNBATCHED, {}),
])
def test_a_model_that_does_not_batch_shows_no_dynamic_batcher(
        signature: Signature, settings: dict[str, Any]) -> None:
    # As in Triton, the queue policy belongs to the dynamic batcher.
    config = _echo(signature, queue={"max_size": 5, "priorities": {9: {"max_size": 2}}},
                   **settings)
    assert "dynamic_batching" not in config


# Triton's model_config.proto: ModelDynamicBatching and ModelQueuePolicy field numbers.
TRITON_FIELDS = {
    "ModelDynamicBatching": {"preferred_batch_size": 1, "max_queue_delay_microseconds": 2,
                             "priority_levels": 4, "default_priority_level": 5,
                             "default_queue_policy": 6, "priority_queue_policy": 7},
    "ModelQueuePolicy": {"timeout_action": 1, "default_timeout_microseconds": 2,
                         "allow_timeout_override": 3, "max_queue_size": 4},
}


@pytest.mark.parametrize("message", sorted(TRITON_FIELDS))
def test_grpc_messages_use_tritons_field_numbers(message: str) -> None:
    descriptor = getattr(pb, message).DESCRIPTOR
    assert {f.name: f.number for f in descriptor.fields} == TRITON_FIELDS[message]


def test_grpc_model_config_carries_every_level() -> None:
    echo = _echo(queue={"max_size": 6, "priorities": {9: {"max_size": 3}, 0: {"max_size": 2}}})
    batching = json_format.ParseDict(echo, pb.ModelConfig()).dynamic_batching
    assert batching.priority_levels == ALL_LEVELS
    assert batching.default_priority_level == 8
    assert batching.default_queue_policy.max_queue_size == 6
    assert batching.default_queue_policy.allow_timeout_override
    assert {level: p.max_queue_size for level, p in batching.priority_queue_policy.items()} == {
        8: 2, 9: 3}
    assert batching.priority_queue_policy[9].timeout_action == pb.ModelQueuePolicy.REJECT
