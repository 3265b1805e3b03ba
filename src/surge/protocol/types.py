"""What a decoded V2 inference request is, independent of the wire it came on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict, TypeGuard

import numpy as np

from surge.errors import InputError, shown
from surge.protocol.shared_memory import Placement

# Extensions of the V2 protocol this server implements (listed by GET /v2 and ServerMetadata).
EXTENSIONS: tuple[str, ...] = (
    "binary_tensor_data",
    "model_configuration",
    "model_repository",
    "statistics",
)
# Listed besides EXTENSIONS while shared memory is on (`surge serve --shared-memory system`).
SHARED_MEMORY_EXTENSION = "system_shared_memory"
SERVER_NAME = "surge"
# Longest error message sent back (HTTP `error`, gRPC status details): messages quote client
# input, and the input may be megabytes.
MAX_ERROR_CHARS = 1000


def extensions(shared_memory: bool) -> list[str]:
    """The extensions a server lists (GET /v2, ServerMetadata)."""
    return [*EXTENSIONS, SHARED_MEMORY_EXTENSION] if shared_memory else list(EXTENSIONS)


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    """An output the client asked for; `binary` selects the binary extension for it (HTTP),
    `place` a registered shared-memory region to write it into instead."""

    name: str
    binary: bool = False
    place: Placement | None = None


@dataclass(frozen=True, slots=True)
class InferRequest:
    """A decoded inference request: tensors plus the scheduling parameters it carried."""

    inputs: dict[str, np.ndarray]
    outputs: tuple[RequestedOutput, ...] | None  # None: every output
    request_id: str = ""
    priority: int = 0
    timeout_us: int | None = None
    binary_default: bool = False  # answer un-listed outputs in binary (HTTP `binary_data_output`)
    variant: str | None = None  # `"variant": NAME`: computed by this variant only
    full_accuracy: bool = False  # `"accuracy": "full"`: by the most accurate variant served
    # Triton's sequence parameters (0 or '': none); read by sequence models only.
    sequence_id: int | str = 0
    sequence_start: bool = False
    sequence_end: bool = False

    @property
    def output_names(self) -> list[str] | None:
        return None if self.outputs is None else [o.name for o in self.outputs]

    def places(self) -> dict[str, Placement]:
        """The requested outputs to write into shared memory, by name."""
        if self.outputs is None:
            return {}
        return {o.name: o.place for o in self.outputs if o.place is not None}


# Largest `priority` and `timeout`: both are uint64 in Triton and on the gRPC wire, while a JSON
# body read by Python's parser (see rest._json_header) may hold an integer of any size, and a
# timeout past a float's range failed the request with a 500 (OverflowError).
MAX_UINT64 = 2**64 - 1


def _is_uint64(value: object) -> TypeGuard[int]:
    return not isinstance(value, bool) and isinstance(value, int) and 0 <= value <= MAX_UINT64


def parse_priority(value: object) -> int:
    """The V2 `priority` parameter: a non-negative integer (0 = default, 1 = highest)."""
    if not _is_uint64(value):
        raise InputError(f"parameter 'priority' must be a non-negative integer up to "
                         f"{MAX_UINT64}, got {shown(value)}")
    return value


def parse_pin(accuracy: object, variant: object) -> tuple[str | None, bool]:
    """The `variant` and `accuracy` parameters (None when absent) as (variant, full accuracy):
    a request pins at most one variant, and `accuracy` takes only "full"."""
    if accuracy is not None and accuracy != "full":
        raise InputError(f"parameter 'accuracy' must be 'full', got {shown(accuracy)}")
    if variant is not None and (not isinstance(variant, str) or not variant):
        raise InputError(f"parameter 'variant' must be a variant name, got {shown(variant)}")
    if accuracy is not None and variant is not None:
        raise InputError("give parameter 'accuracy' or parameter 'variant', not both")
    return variant, accuracy is not None


def parse_timeout(value: object) -> int | None:
    """The V2 `timeout` parameter in microseconds; 0 means no timeout."""
    if not _is_uint64(value):
        raise InputError(f"parameter 'timeout' must be a non-negative integer of microseconds "
                         f"up to {MAX_UINT64}, got {shown(value)}")
    return value or None


SEQUENCE_PARAMETERS = ("sequence_id", "sequence_start", "sequence_end")


class SequenceFields(TypedDict):
    """InferRequest's sequence fields, as `parse_sequence` reads them."""

    sequence_id: int | str
    sequence_start: bool
    sequence_end: bool


def parse_sequence(sequence_id: object, start: object, end: object) -> SequenceFields:
    """The `sequence_id` (an unsigned integer or a string; absent, 0 or '': none),
    `sequence_start` and `sequence_end` (bools; absent: false) parameters as InferRequest
    fields. A model without sequence batching ignores them, as Triton's does."""
    if sequence_id is None:
        sequence_id = 0
    if not (_is_uint64(sequence_id) or isinstance(sequence_id, str)):
        raise InputError(f"parameter 'sequence_id' must be a non-negative integer up to "
                         f"{MAX_UINT64} or a string, got {shown(sequence_id)}")
    for name, value in (("sequence_start", start), ("sequence_end", end)):
        if value is not None and not isinstance(value, bool):
            raise InputError(f"parameter {name!r} must be a bool (true or false), got "
                             f"{shown(value)}")
    return {"sequence_id": sequence_id, "sequence_start": bool(start),
            "sequence_end": bool(end)}
