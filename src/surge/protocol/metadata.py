"""Model metadata, Triton-style model configuration and statistics as plain JSON values.

HTTP sends these dicts as they are; the gRPC servicer builds its messages from the same dicts,
so both protocols always agree.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from surge.datatypes import v2_to_triton
from surge.repository.config import ModelConfig
from surge.repository.queueing import MAX_PRIORITY, QueueConfig
from surge.runtimes.base import Signature, TensorSpec
from surge.scheduler.types import DEFAULT_PRIORITY_LEVEL


class ModelView(Protocol):
    """What the front end reads from the engine's model handle."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def versions(self) -> Any: ...
    @property
    def config(self) -> ModelConfig: ...
    @property
    def signature(self) -> Signature: ...
    @property
    def platform(self) -> str: ...
    @property
    def devices(self) -> tuple[str, ...]: ...


def _tensor(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


def _shown(specs: Sequence[TensorSpec], config: ModelConfig) -> list[TensorSpec]:
    """The tensors clients send or receive: a sequence model's implicit state is the
    server's own (surge.engine.sequences)."""
    sequencing = config.sequence_batching
    if sequencing is None:
        return list(specs)
    hidden = sequencing.hidden()
    return [spec for spec in specs if spec.name not in hidden]


def model_metadata(model: ModelView) -> dict[str, Any]:
    """V2 model metadata: name, versions, platform, inputs and outputs with -1 dims."""
    signature = model.signature
    return {
        "name": model.name,
        "versions": [str(v) for v in model.versions],
        "platform": model.platform,
        "inputs": [_tensor(s) for s in _shown(signature.inputs, model.config)],
        "outputs": [_tensor(s) for s in _shown(signature.outputs, model.config)],
    }


def _config_tensor(spec: TensorSpec, batched: bool) -> dict[str, Any]:
    # Triton's dims leave out the batch dimension of models with max_batch_size > 0.
    dims = list(spec.shape[1:] if batched and spec.shape else spec.shape)
    return {"name": spec.name, "data_type": v2_to_triton(spec.datatype), "dims": dims}


def model_config(model: ModelView) -> dict[str, Any]:
    """Triton model configuration JSON for `model`."""
    signature = model.signature
    config = model.config
    batched = signature.batched
    on_gpu = any(d.startswith("cuda") for d in (*model.devices, config.device))
    kind = "KIND_GPU" if on_gpu else "KIND_CPU"
    result: dict[str, Any] = {
        "name": model.name,
        "platform": model.platform,
        "backend": "surge",
        "max_batch_size": signature.max_batch_size if batched else 0,
        "input": [_config_tensor(s, batched) for s in _shown(signature.inputs, config)],
        "output": [_config_tensor(s, batched) for s in _shown(signature.outputs, config)],
        "instance_group": [{"name": model.name, "kind": kind, "count": config.instances}],
        "response_cache": {"enable": config.response_cache},
    }
    if config.parameters:
        result["parameters"] = config_parameters(config.parameters)
    if config.model_warmup:
        result["model_warmup"] = model_warmup(config)
    if config.sequence_batching is not None:  # Triton's scheduling oneof: this or the next
        result["sequence_batching"] = sequence_batching(config, signature)
    elif batched and config.batching.enabled:
        # As in Triton, the queue policy lives in the dynamic batcher: a model that does not
        # batch shows neither (its queue limits still apply, as config.yaml sets them).
        result["dynamic_batching"] = {
            "preferred_batch_size": list(config.batching.preferred_batch_sizes),
            "max_queue_delay_microseconds": _microseconds(config.batching.max_queue_delay_ms),
            **queue_policies(config.queue),
        }
    return result


def model_warmup(config: ModelConfig) -> list[dict[str, Any]]:
    """The warm-up samples as Triton's ModelWarmup entries (Triton's type names; the data
    source as its oneof, the file by its name in the model's warmup/ folder)."""
    samples = []
    for sample in config.model_warmup:
        inputs = {}
        for name, given in sample.inputs.items():
            source: dict[str, Any] = (
                {"input_data_file": given.input_data_file} if given.input_data_file is not None
                else {"random_data": True} if given.random_data else {"zero_data": True})
            inputs[name] = {"data_type": v2_to_triton(given.datatype), "dims": list(given.dims),
                            **source}
        samples.append({"name": sample.name, "batch_size": sample.batch_size,
                        "inputs": inputs, "count": sample.count})
    return samples


def sequence_batching(config: ModelConfig, signature: Signature) -> dict[str, Any]:
    """The `sequence_batching` section as Triton's ModelSequenceBatching: the implicit states
    (zeros to start) and the oldest strategy, which batches the sequences' requests through
    the model's dynamic batching."""
    sequencing = config.sequence_batching
    assert sequencing is not None
    states = []
    for pair in sequencing.state:
        spec = _config_tensor(signature.input(pair.input), signature.batched)
        initial = {"data_type": spec["data_type"], "dims": spec["dims"], "zero_data": True,
                   "name": "zero"}
        states.append({"input_name": pair.input, "output_name": pair.output,
                       "data_type": spec["data_type"], "dims": spec["dims"],
                       "initial_state": [initial]})
    batching = config.batching.enabled and signature.batched
    sizes = list(config.batching.preferred_batch_sizes) if batching else []
    delay = config.batching.max_queue_delay_ms if batching else None
    oldest = {"max_candidate_sequences": sequencing.max_sequences,
              "preferred_batch_size": sizes, "max_queue_delay_microseconds": _microseconds(delay)}
    return {"max_sequence_idle_microseconds": _microseconds(sequencing.max_sequence_idle_ms),
            "state": states, "oldest": oldest}


def _microseconds(ms: float | None) -> int:
    return round(ms * 1000) if ms is not None else 0  # round: 1.001 ms * 1000 is 1000.99...


def _policy(max_size: int, timeout_ms: float | None, action: str, override: bool
            ) -> dict[str, Any]:
    """One level's rules as Triton's ModelQueuePolicy (its enum names are upper case)."""
    return {"timeout_action": action.upper(),
            "default_timeout_microseconds": _microseconds(timeout_ms),
            "allow_timeout_override": override, "max_queue_size": max_size}


def queue_policies(queue: QueueConfig) -> dict[str, Any]:
    """The `queue` section as Triton's dynamic batcher fields.

    Every V2 priority is a level of its own (0 is served at DEFAULT_PRIORITY_LEVEL), so
    `priority_levels` is the whole uint64 range. `default_queue_policy` is the model's queue
    (its max_size bounds all levels together); `priority_queue_policy` holds each configured
    level's effective rules, keyed by the level requests are queued at, with the model's
    settings where the level leaves one out."""
    levels = {str(level or DEFAULT_PRIORITY_LEVEL): _policy(**queue.effective(policy))
              for level, policy in sorted(queue.priorities.items())}
    fields: dict[str, Any] = {
        "priority_levels": MAX_PRIORITY, "default_priority_level": DEFAULT_PRIORITY_LEVEL,
        "default_queue_policy": _policy(queue.max_size, queue.default_timeout_ms,
                                        queue.timeout_action, queue.allow_timeout_override)}
    if levels:
        fields["priority_queue_policy"] = levels
    return fields


def config_parameters(parameters: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """The config's `parameters` as Triton's map of `{"string_value": ...}`: strings as they are,
    other values as JSON (`0.375`, `true`, `[1, 2]`), so that a client parses them back."""
    return {str(key): {"string_value": value if isinstance(value, str) else json.dumps(value)}
            for key, value in parameters.items()}


def _duration(value: Any) -> dict[str, int]:
    if isinstance(value, Mapping):
        return {"count": int(value.get("count", 0)), "ns": int(value.get("ns", 0))}
    if isinstance(value, tuple | list):
        return {"count": int(value[0]), "ns": int(value[1])}
    return {"count": int(getattr(value, "count", 0)), "ns": int(getattr(value, "ns", 0))}


_DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output",
              "cache_hit", "cache_miss")


def _as_dict(stats: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(stats) and not isinstance(stats, type):
        return dataclasses.asdict(stats)
    if isinstance(stats, Mapping):
        return dict(stats)
    return dict(vars(stats))


def _batch_stats(value: Any) -> list[dict[str, Any]]:
    """Per batch size counters: {size: (input, infer, output)} of (count, ns) pairs, {size:
    (count, ns)} (the whole compute time, as compute_infer) or Triton-shaped entries."""
    if isinstance(value, Mapping):
        return [{"batch_size": int(size), **_phase_durations(phases)}
                for size, phases in sorted(value.items())]
    entries = (_as_dict(b) for b in value)
    return [{"batch_size": int(e.get("batch_size", 0)),
             **{k: _duration(e.get(k, {}))
                for k in ("compute_input", "compute_infer", "compute_output")}}
            for e in entries]


def _phase_durations(phases: Any) -> dict[str, dict[str, int]]:
    if len(phases) == 3:
        return {key: _duration(pair) for key, pair in
                zip(("compute_input", "compute_infer", "compute_output"), phases, strict=True)}
    zero = {"count": 0, "ns": 0}
    return {"compute_input": zero, "compute_infer": _duration(phases), "compute_output": zero}


def model_statistics(name: str, version: int | str, stats: Any) -> dict[str, Any]:
    """One Triton `model_stats` entry from the engine's counters."""
    data = _as_dict(stats)
    inference = data.get("inference_stats", data)
    entry = {
        "name": name,
        "version": str(version),
        "last_inference": int(data.get("last_inference", 0)),
        "inference_count": int(data.get("inference_count", 0)),
        "execution_count": int(data.get("execution_count", 0)),
        "inference_stats": {key: _duration(inference.get(key, {})) for key in _DURATIONS},
        "batch_stats": _batch_stats(data.get("batch_phases") or data.get("batch_stats", {})),
    }
    if data.get("latency"):  # Surge's own: the latency model (HTTP only; gRPC has no field)
        entry["latency"] = data["latency"]
    if data.get("steps"):  # a pipeline's processor steps: calls and CPU (HTTP only, likewise)
        entry["steps"] = data["steps"]
    preprocess = data.get("preprocess_cpu") or (0, 0)
    if preprocess[0]:  # a model's preprocess steps in its workers: batches and CPU (likewise)
        entry["preprocess"] = {"batches": int(preprocess[0]), "cpu_ns": int(preprocess[1])}
    return entry
