"""One request handed to what serves its model version: a pipeline, an accuracy ladder, a
sequence model's state store or a model's own queue (`Engine.infer` found the version)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

# A module reference: surge.pipeline.served imports this package back (ModelHandle, Counters).
import surge.pipeline.served as pipelines
from surge.datatypes import label_bf16
from surge.engine.ladder import ServedLadder
from surge.scheduler.queues import own_timeout_fails
from surge.scheduler.types import check_options, priority_level

if TYPE_CHECKING:
    from surge.engine.engine import Served


async def compute(served: Served, inputs: dict[str, np.ndarray], outputs: list[str] | None,
                  priority: int, timeout_us: int | None, request_id: str
                  ) -> dict[str, np.ndarray]:
    """The answer of `served` to one request (queued, computed, its bf16 outputs labelled)."""
    if isinstance(served, pipelines.ServedPipeline):  # noqa: SIM114 - requests typed apart
        answer = await served.infer(
            served.make_request(inputs, outputs, priority, timeout_us, request_id))
    elif isinstance(served, ServedLadder):
        answer = await served.infer(
            served.make_request(inputs, outputs, priority, timeout_us, request_id))
    elif served.sequences is not None:  # a stateful model: its sequence's state goes along
        check_options(priority, timeout_us)  # the wait for its sequence comes first
        answer = await served.sequences.infer(inputs, outputs, lambda ins, outs, left: (
            served.infer(served.make_request(ins, outs, priority, left, request_id))),
            timeout_us, bounded=own_timeout_fails(served.scheduler.config,
                                                  priority_level(priority)))
    else:
        answer = await served.infer(
            served.make_request(inputs, outputs, priority, timeout_us, request_id))
    handle = served.handle
    if handle is not None and handle.bf16_outputs:  # they came back as uint16 words
        return label_bf16(answer, handle.bf16_outputs)
    return answer

