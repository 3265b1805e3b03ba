"""Which variant answers one request: the client's pin in, the variant that served it out.

A front end sets `request_route` to a fresh `VariantRoute` (holding the V2 request parameters
`"accuracy": "full"` or `"variant": NAME`) around one `InferenceEngine.infer` await; the served
model checks the pin and records the variant that computed the answer, which the front end
returns as the V2 response parameter `variant`. A context variable, like `request_timing`, so
the engine's `infer` keeps one signature for every caller (pipelines, benchmarks, tests).
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

from surge.errors import InputError
from surge.repository.config import ORIGINAL

if TYPE_CHECKING:
    from surge.engine.interface import InferenceEngine


@dataclass
class VariantRoute:
    """One request's pin (at most one of the two) and, once answered, the variant that served it."""

    variant: str | None = None  # pinned to this variant
    full_accuracy: bool = False  # pinned to the most accurate variant served
    served: str | None = None  # filled in by the served model
    # The version that answered, filled in by the served model (a pipeline: its own): the
    # front end must not look the model up again, an eviction may have removed it since.
    version: int | None = None

    def __post_init__(self) -> None:
        if self.variant is not None and self.full_accuracy:
            raise InputError("give either parameter 'accuracy' or parameter 'variant', not both")


def check_pin(route: VariantRoute | None, served: tuple[str, ...]) -> str | None:
    """The variant `route` pins among the `served` ones (most accurate first), or None when it
    pins nothing; InputError (400) for a variant that is not served."""
    if route is None:
        return None
    if route.full_accuracy:
        return served[0]
    if route.variant is not None and route.variant not in served:
        raise InputError(f"parameter 'variant': {route.variant!r} is not served by this model "
                         f"(served: {', '.join(served)})"[:300])
    return route.variant


def answered_version(route: VariantRoute, engine: InferenceEngine, name: str,
                     version: int | None) -> int:
    """The version that computed an answer: as the served model recorded it, else (an engine
    that records none) the version served now."""
    if route.version is not None:
        return route.version
    return engine.model(name, version).version


# Set by the front end around one `infer` await; read and filled by the served model.
request_route: ContextVar[VariantRoute | None] = ContextVar("surge_request_route", default=None)

__all__ = ["ORIGINAL", "VariantRoute", "answered_version", "check_pin", "request_route"]
