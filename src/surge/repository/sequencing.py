"""The `sequence_batching` section of a model config: a stateful model's implicit state.

Triton's sequence batcher with implicit state (`sequence_batching { state [...] }`): requests
carry `sequence_id`, `sequence_start` and `sequence_end`, and the server itself feeds the
state output one request of a sequence produced as the state input of the next. Each `state`
entry pairs a model input with a model output; their datatype and dims come from the model's
signature (checked when the model loads, `surge.engine.sequences`), the initial state is zeros
(Triton's `initial_state: zero`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, model_validator

from surge.configfile import Float, Int, StrictConfig

if TYPE_CHECKING:
    from surge.repository.config import ModelConfig

# An idle sequence keeps its state this long at most: an hour (Triton has no bound; a state
# kept longer is a client that forgot to end it).
MAX_IDLE_MS = 3_600_000.0
MIN_IDLE_MS = 0.001  # a microsecond, Triton's unit: the config echo rounds to microseconds
MAX_SEQUENCES = 1_000_000  # live sequences of one model version, each holding its state


class StatePair(StrictConfig):
    """One implicit state: the model input fed from the model output of the previous request."""

    input: str = Field(description="The model input that takes the state (Triton's "
                       "`input_name`); clients never send it.")
    output: str = Field(description="The model output holding the next state (Triton's "
                        "`output_name`); clients never receive it.")


class SequenceBatchingConfig(StrictConfig):
    """Stateful models: requests of one sequence run in order on the state the previous one
    left; requests of different sequences batch together."""

    state: list[StatePair] = Field(min_length=1, description="The implicit states: input and "
                                   "output pairs of one datatype and shape; zeros to start.")
    max_sequence_idle_ms: Float = Field(
        1000.0, ge=MIN_IDLE_MS, le=MAX_IDLE_MS, description="A sequence with no request for "
        "this long is dropped with its state (Triton's max_sequence_idle_microseconds); a later "
        "request of it without sequence_start is refused.")
    max_sequences: Int = Field(
        1024, ge=1, le=MAX_SEQUENCES, description="Live sequences at most; the start of one "
        "more is refused (503, Retry-After) until a sequence ends or idles out.")

    @model_validator(mode="after")
    def _distinct(self) -> SequenceBatchingConfig:
        names = [name for pair in self.state for name in (pair.input, pair.output)]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"sequence_batching.state names tensor {name!r} twice: each "
                                 "state has an input and an output of its own")
        return self

    def state_inputs(self) -> set[str]:
        return {pair.input for pair in self.state}

    def state_outputs(self) -> set[str]:
        return {pair.output for pair in self.state}

    def hidden(self) -> set[str]:
        """The tensors clients neither send nor receive."""
        return self.state_inputs() | self.state_outputs()


def check_sequencing(config: ModelConfig) -> None:
    """A sequence model is a plain model whose answers depend on its state: no response
    cache (a cached answer ignores the state), no ladder (each rung would hold a state of its
    own), no pipeline (its steps' models hold their own)."""
    if config.sequence_batching is None:
        return
    if config.kind != "model" or config.ladder:
        raise ValueError("sequence_batching is for kind model without a ladder (a pipeline's "
                         "or a ladder's models would each keep a state of their own)")
    if config.response_cache:
        raise ValueError("sequence_batching and response_cache exclude each other: a sequence "
                         "model's answer depends on its state, not only on the request")
