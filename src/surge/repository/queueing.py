"""The `batching` and `queue` sections of a model config: how requests wait and are admitted.

`queue.priorities` gives a priority level rules of its own (Triton's `priority_queue_policy`):
its keys are levels as the V2 `priority` parameter names them (0 = the default level).
`timeout_action` and `allow_timeout_override` are Triton's ModelQueuePolicy fields of the same
names, at the model's level and per priority level.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from surge.configfile import Bool, Float, Int, StrictConfig
from surge.errors import shown
from surge.scheduler.types import (
    DEFAULT_PRIORITY_LEVEL,
    MAX_PRIORITY,
    TIMEOUT_ACTIONS,
    LevelPolicy,
)

# A request's deadline is finite (`.inf` is no deadline in disguise): a day at most.
MAX_TIMEOUT_MS = 86_400_000
MAX_QUEUE_DELAY_MS = 10_000.0  # a wait past 10 s is no batching delay but a stall
MAX_QUEUE_SIZE = 1_000_000_000
_DIGITS = re.compile(r"0|[1-9][0-9]*")  # a level written as a string: JSON keys always are


class BatchingConfig(StrictConfig):
    """Dynamic batching: requests queued together are run as one batch."""

    enabled: Bool = Field(True, description="Combine queued requests into batches.")
    max_queue_delay_ms: Float = Field(
        2.0, ge=0, le=MAX_QUEUE_DELAY_MS,
        description="Longest a request waits for others to join its batch."
    )
    preferred_batch_sizes: list[Int] = Field(
        default_factory=list,
        description="Batch sizes to form as soon as reached, without waiting out the delay.",
    )


def _timeout_field(description: str) -> Any:
    return Field(None, ge=0.001, le=MAX_TIMEOUT_MS, description=description)


def _action_name(value: Any) -> Any:
    """A `timeout_action` as the scheduler names it: Triton writes REJECT and DELAY, YAML
    configs mostly lower case; both are taken."""
    if isinstance(value, str) and value.lower() in TIMEOUT_ACTIONS:
        return value.lower()
    raise ValueError(f"timeout_action {shown(value)} is no action: give reject (answer 504 "
                     "when the deadline passes in the queue) or delay (keep the request, "
                     "served after those still in time), in either case")


TimeoutAction = Annotated[Literal["reject", "delay"], BeforeValidator(_action_name)]
_ACTION_HELP = ("What a deadline passing in the queue does: reject (answered 504) or delay "
                "(the request stays queued, behind the requests of its level still in time).")
_OVERRIDE_HELP = ("Whether a request's own `timeout` parameter replaces the default timeout; "
                  "false: it is ignored and the default timeout applies.")


class PriorityQueueConfig(StrictConfig):
    """One priority level's own queue policy (`queue.priorities.<level>`)."""

    max_size: Int | None = Field(
        None, ge=1, le=MAX_QUEUE_SIZE, description="Requests of this level queued at once; "
        "beyond it this level's requests are rejected (503), other levels unaffected.")
    default_timeout_ms: Float | None = _timeout_field(
        "Deadline for this level's requests that carry no `timeout` parameter; replaces the "
        "model's queue.default_timeout_ms for them.")
    timeout_action: TimeoutAction | None = Field(
        None, description=_ACTION_HELP + " Unset: the model's queue.timeout_action.")
    allow_timeout_override: Bool | None = Field(
        None, description=_OVERRIDE_HELP + " Unset: the model's queue.allow_timeout_override.")

    @model_validator(mode="after")
    def _says_something(self) -> PriorityQueueConfig:
        if all(getattr(self, key) is None for key in type(self).model_fields):
            raise ValueError("a priority level's policy sets max_size, default_timeout_ms, "
                             "timeout_action or allow_timeout_override (one at least); leave "
                             "the level out to follow the model's queue")
        return self


class QueueConfig(StrictConfig):
    """Admission limits of the model's request queue."""

    max_size: Int = Field(256, ge=1, le=MAX_QUEUE_SIZE,
                          description="Queued requests beyond this are rejected (503); bounds "
                                      "the whole queue, every priority level together.")
    default_timeout_ms: Float | None = _timeout_field(
        "Deadline for requests that carry no `timeout` parameter (at least a microsecond, the "
        "unit of the `timeout` parameter).")
    priorities: dict[int, PriorityQueueConfig] = Field(
        default_factory=dict, description="Priority level (the V2 `priority` parameter; 0 = "
        "the default level) -> that level's own max_size, default_timeout_ms, timeout_action "
        "and allow_timeout_override. Levels not listed follow the settings above.")
    timeout_action: TimeoutAction = Field("reject", description=_ACTION_HELP)
    # True, unlike Triton's default: Surge has always let a request's `timeout` win.
    allow_timeout_override: Bool = Field(True, description=_OVERRIDE_HELP)

    @field_validator("priorities", mode="before")
    @classmethod
    def _levels(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value  # pydantic names the wrong type
        levels: dict[int, Any] = {}
        for key, policy in value.items():
            level = _level(key)
            if level in levels:
                raise ValueError(f"priority level {level} is given twice")
            levels[level] = policy
        if 0 in levels and DEFAULT_PRIORITY_LEVEL in levels:
            raise ValueError(f"levels 0 and {DEFAULT_PRIORITY_LEVEL} are one level (priority 0, "
                             f"the default, is served as {DEFAULT_PRIORITY_LEVEL}); give one")
        return levels

    @model_validator(mode="after")
    def _within_max_size(self) -> QueueConfig:
        for level, policy in sorted(self.priorities.items()):
            if policy.max_size is not None and policy.max_size > self.max_size:
                raise ValueError(
                    f"queue.priorities.{level}.max_size ({policy.max_size}) is above "
                    f"queue.max_size ({self.max_size}), which bounds the whole queue: lower "
                    "it or raise queue.max_size")
        return self

    @model_validator(mode="after")
    def _delay_applies(self) -> QueueConfig:
        """Refuse a `delay` that no request can ever reach: without a default timeout and with
        the requests' own `timeout` ignored, no request has a deadline to pass. Judged where
        the `delay` is written: a level's own where that level has no deadline; the model's
        where neither the levels it governs (those not listed, and those listed without an
        action of their own) have one. A level that only inherits a `delay` it cannot reach
        is no error: the model's delay still applies elsewhere."""
        for level, policy in sorted(self.priorities.items()):
            if policy.timeout_action == "delay" and not self._dated(policy):
                raise ValueError(_never(f"queue.priorities.{level}"))
        heirs = [p for p in self.priorities.values() if p.timeout_action is None]
        if self.timeout_action == "delay" and not (
                self.allow_timeout_override or self.default_timeout_ms is not None
                or any(self._dated(p) for p in heirs)):
            raise ValueError(_never("queue", ", nor a level that follows it with one"))
        return self

    def _dated(self, level: PriorityQueueConfig) -> bool:
        """Whether a request of `level` can have a deadline."""
        return self._override(level) or self._timeout(level) is not None

    def _action(self, level: PriorityQueueConfig) -> str:
        return level.timeout_action or self.timeout_action

    def _override(self, level: PriorityQueueConfig) -> bool:
        override = level.allow_timeout_override
        return self.allow_timeout_override if override is None else override

    def _timeout(self, level: PriorityQueueConfig) -> float | None:
        timeout = level.default_timeout_ms
        return self.default_timeout_ms if timeout is None else timeout

    def effective(self, level: PriorityQueueConfig) -> dict[str, Any]:
        """A configured level's rules with the model's where it leaves one out (the keyword
        arguments of the Triton-field echo's policy)."""
        return {"max_size": level.max_size or self.max_size,
                "timeout_ms": self._timeout(level), "action": self._action(level),
                "override": self._override(level)}

    def level_policies(self) -> dict[int, LevelPolicy]:
        """`priorities` for the scheduler: by the level requests are queued at (V2 priority 0
        is DEFAULT_PRIORITY_LEVEL), each named in refusals as configured."""
        return {level or DEFAULT_PRIORITY_LEVEL: LevelPolicy(
                    policy.max_size, _seconds(policy.default_timeout_ms), f"priority {level}",
                    policy.timeout_action, policy.allow_timeout_override)
                for level, policy in self.priorities.items()}


def _never(where: str, levels: str = "") -> str:
    return (f"{where}.timeout_action delay never applies: no deadline there "
            f"(allow_timeout_override false, no default_timeout_ms{levels}); set one")


def _seconds(ms: float | None) -> float | None:
    return ms / 1e3 if ms is not None else None


def _level(key: Any) -> int:
    """A `queue.priorities` key as the level it names: an integer, or its decimal string (the
    form a JSON object or a written config gives)."""
    level: int | None = None
    if isinstance(key, int) and not isinstance(key, bool):
        level = key
    elif isinstance(key, str) and _DIGITS.fullmatch(key) and len(key) <= 20:
        level = int(key)
    if level is None or not 0 <= level <= MAX_PRIORITY:
        raise ValueError(f"key {shown(key)} is no priority level: levels are integers from 0 "
                         f"to {MAX_PRIORITY} as the V2 `priority` parameter gives them "
                         "(0 = the default level)")
    return level
