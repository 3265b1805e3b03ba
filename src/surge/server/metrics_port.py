"""The metrics port's ASGI app: the Prometheus text (or OpenMetrics) exposition of a registry.

prometheus_client's own app renders on the event loop: a scrape of a small server took 21 ms
during which no inference request moved (8 clients scraping in a loop raised inference's p50
from 1.4 to 43 ms on 2 cores), and it answered 500 to an `Accept` header that is not UTF-8.
Here the rendering runs in a thread, once for all the scrapes of the same kind that arrive
while it runs, and headers are read as Latin-1 (which any byte is).

With Triton's names (`--metrics-names`, surge/engine/triton_metrics.py) their families follow
Surge's: read from the engine on the event loop (a chunk of versions per turn of it), made
into families and rendered with the rest in the thread.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric

from surge.engine import triton_metrics
from surge.engine.triton_metrics import TritonSource, VersionSample

Send = Callable[[dict[str, Any]], Awaitable[None]]
# (Accept header, gzip wanted, metric names asked for with ?name[]=...)
_Kind = tuple[str, bool, tuple[str, ...]]


class MetricsApp:
    """Answers every HTTP request with the registry's metrics, as prometheus_client's does, and
    with Triton's when given their source (`surge=False`: only those)."""

    def __init__(self, registry: CollectorRegistry, triton: TritonSource | None = None,
                 surge: bool = True) -> None:
        self.registry = registry
        self.triton, self.surge = triton, surge
        self._rendering: dict[_Kind, asyncio.Future[tuple[bytes, str]]] = {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Send) -> None:
        if scope["type"] != "http":
            return
        kind = _kind(scope)
        body, content_type = await asyncio.shield(self._rendered(kind))
        headers = [(b"content-type", content_type.encode("latin-1"))]
        if kind[1]:
            headers.append((b"content-encoding", b"gzip"))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _rendered(self, kind: _Kind) -> asyncio.Future[tuple[bytes, str]]:
        """The rendering of `kind` under way, or a new one (shielded: a scraper that hangs up
        does not cancel it for the others)."""
        running = self._rendering.get(kind)
        if running is None:
            running = asyncio.ensure_future(self._gathered_and_rendered(kind))
            self._rendering[kind] = running
            running.add_done_callback(lambda _: self._rendering.pop(kind, None))
        return running

    async def _gathered_and_rendered(self, kind: _Kind) -> tuple[bytes, str]:
        own = await self.triton.gather() if self.triton is not None else None
        return await asyncio.to_thread(self._render, kind, own)

    def _render(self, kind: _Kind, own: list[VersionSample] | None) -> tuple[bytes, str]:
        """`own`: this engine's Triton samples (None: read from the multiprocess files)."""
        accept, gzipped, names = kind
        encoder, content_type = _encoder(accept)
        surge, from_files = triton_metrics.split(self.registry.collect())
        triton = [] if self.triton is None else from_files if own is None else \
            triton_metrics.families(own, self.triton.cache)
        surge = triton_metrics.restrict(surge if self.surge else [], names)
        triton = triton_metrics.restrict(triton, names)
        if content_type.startswith("application/openmetrics-text"):
            body = encoder(_Families(surge + triton_metrics.openmetrics(triton)))
        else:
            body = encoder(_Families(surge)) + triton_metrics.text(triton)
        return (gzip.compress(body) if gzipped else body), content_type


class _Families:
    """Families already collected, as the encoders take a registry."""

    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> list[Metric]:
        return self.metrics


def _encoder(accept: str) -> tuple[Callable[[Any], bytes], str]:
    """prometheus_client's encoder for an Accept header; the text format when the header is
    one it cannot parse (`version=abc` raised TypeError there, and the scrape got a 500): a
    scraper sending it still gets the metrics, as with no Accept header at all."""
    try:
        return choose_encoder(accept)
    except (TypeError, ValueError):
        return choose_encoder("")


def _kind(scope: dict[str, Any]) -> _Kind:
    accept = [v.decode("latin-1") for k, v in scope["headers"] if k == b"accept"]
    encodings = [v.decode("latin-1") for k, v in scope["headers"] if k == b"accept-encoding"]
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    return (",".join(accept), "gzip" in ",".join(encodings),
            tuple(sorted(query.get("name[]", ()))))


__all__ = ["MetricsApp"]
