"""Why a request of a served model failed, as the `reason` label of Triton's
`nv_inference_request_failure` names it (surge/engine/stats.py, FAIL_REASONS).

Read from the error the request is failed with: where a request fails decides that error
(surge/engine/served.py), so its type is the reason, and the driver passes no reason of its own.
"""

from __future__ import annotations

import asyncio

from surge.engine.stats import FAIL_REASONS
from surge.errors import DeadlineExceededError, ModelNotReadyError, QueueFullError
from surge.workers.transport import SlotSpaceError

REJECTED, CANCELED, BACKEND, OTHER = FAIL_REASONS


def failure_reason(error: BaseException) -> str:
    """REJECTED: refused by the scheduler (queue full or a deadline it cannot meet at
    admission, expired in the queue, refused at dispatch as too late). CANCELED: its client
    went away (queued or computing). OTHER: the model stopped with the request still queued,
    or its batch did not fit the workers' shared memory. BACKEND: the rest."""
    if isinstance(error, QueueFullError | DeadlineExceededError):
        return REJECTED
    if isinstance(error, asyncio.CancelledError):
        return CANCELED
    if isinstance(error, ModelNotReadyError | SlotSpaceError):
        return OTHER
    # Every other error a queued request meets is its instance's, whatever its type: the
    # model raised, its worker crashed or hung, every instance was lost, or the model's
    # preprocessing in its workers refused the row (an InputError: the inputs themselves were
    # checked before the request was queued).
    return BACKEND
