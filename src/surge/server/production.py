"""What `surge serve` adds for running in production: TLS, scoped keys, the access log,
tracing, and following the repository. `ProductionOptions` says what is wanted; `Production`
builds the pieces once and the serving process hands them to each front end.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import grpc

from surge.engine import InferenceEngine
from surge.engine.reload import RepositoryPoller
from surge.errors import SurgeError
from surge.protocol.rest import error_body
from surge.server.access_log import AccessLog, AccessLogConfig
from surge.server.keys import ApiKey, FollowedKeyFile, KeyRing, Scope
from surge.server.observe import RequestLog
from surge.server.tls import Certificates, TlsConfig

log = logging.getLogger(__name__)

ModelControl = Literal["explicit", "poll"]
DEFAULT_POLL_INTERVAL_S = 5.0


@dataclass(frozen=True)
class ProductionOptions:
    """TLS, keys, logs, tracing and repository following (all off by default)."""

    tls: TlsConfig | None = None  # HTTPS, gRPC over TLS and HTTPS metrics when set
    keys: tuple[ApiKey, ...] = ()  # scoped keys, besides ServeOptions.api_key (scope admin)
    # A key file (`KEY SCOPE` lines) whose keys are added, read again when it changes (its
    # modification time, size and inode compared every keys_check_interval_s) and on SIGHUP.
    keys_file: Path | None = None
    keys_check_interval_s: float = 5.0
    metrics_auth: bool = True  # the metrics port asks for a key (scope read) when keys are set
    access_log: AccessLogConfig | None = None
    # An exporter's name (console, otlp: the server makes the provider), an OpenTelemetry
    # TracerProvider, or "global" for the global one.
    tracing: Any = None
    # explicit: models change only through the load/unload API; poll: the server follows the
    # repository every poll_interval_s and refuses load/unload requests, as Triton does.
    # None: explicit, but not chosen, so a repository with no model is refused as a mistake
    # (`serve_checks.check_has_models`), as `surge serve` without --model-control does.
    model_control: ModelControl | None = None
    poll_interval_s: float = DEFAULT_POLL_INTERVAL_S

    def __post_init__(self) -> None:
        if self.model_control not in ("explicit", "poll", None):
            raise ValueError(f"model_control must be explicit, poll or None, got "
                             f"{self.model_control!r}")
        if not self.poll_interval_s > 0:  # NaN too
            raise ValueError(f"poll_interval_s must be positive, got {self.poll_interval_s}")
        if not self.keys_check_interval_s > 0:
            raise ValueError("keys_check_interval_s must be positive, got "
                             f"{self.keys_check_interval_s}")


class Production:
    """The production pieces of one server, shared by its HTTP, gRPC and metrics front ends."""

    def __init__(self, options: ProductionOptions, api_key: str | None = None) -> None:
        self.options = options
        fixed = [*([ApiKey(api_key)] if api_key else []), *options.keys]
        self.keys = KeyRing(fixed)
        self.key_file = (FollowedKeyFile(options.keys_file, self.keys, fixed)
                         if options.keys_file is not None else None)
        self.certificates = Certificates(options.tls) if options.tls is not None else None
        self.request_log = RequestLog(
            AccessLog(options.access_log) if options.access_log is not None else None,
            _tracer(options.tracing))
        self.repository_api = options.model_control != "poll"
        self._poller: RepositoryPoller | None = None
        self._watches: list[asyncio.Task[None]] = []

    # -- lifecycle (around engine.start / engine.stop) ---------------------------------------
    def before_engine(self, engine: InferenceEngine, models: tuple[str, ...] | None) -> None:
        """Note the repository as the engine is about to load it (poll mode)."""
        if self.options.model_control != "poll":
            return
        repository = getattr(engine, "repository", None)
        if repository is None:
            raise SurgeError("--model-control poll needs an engine serving a repository")
        self._poller = RepositoryPoller(engine, repository, self.options.poll_interval_s, models)
        self._poller.snapshot()

    def after_start(self) -> None:
        """Start polling the repository and following the certificate and key files."""
        if self._poller is not None:
            self._poller.start()
        if self.certificates is not None:
            self._watches.append(asyncio.create_task(_every(
                self.certificates.config.check_interval_s, self.certificates.reload_if_changed),
                name="surge-tls-watch"))
        if self.key_file is not None:
            self._watches.append(asyncio.create_task(_every(
                self.options.keys_check_interval_s, self.key_file.reload_if_changed),
                name="surge-keys-watch"))

    def reload_files(self) -> None:
        """Read the certificate and the key file again, whatever changed (SIGHUP)."""
        if self.certificates is None and self.key_file is None:
            log.warning("SIGHUP: nothing to reload (no --tls-cert, no --api-keys-file)")
        if self.certificates is not None:
            self.certificates.reload()
        if self.key_file is not None:
            self.key_file.reload()

    async def stop_watching(self) -> None:
        """Stop following the repository and the certificate and key files (the drain)."""
        if self._poller is not None:
            await self._poller.stop()
        for watch in self._watches:
            watch.cancel()
        await asyncio.gather(*self._watches, return_exceptions=True)
        self._watches.clear()

    def close(self) -> None:
        """Write out the access log (the drain is over)."""
        self.request_log.close()

    # -- what the front ends are given -------------------------------------------------------
    @property
    def ssl_context(self) -> Any:
        return self.certificates.context if self.certificates is not None else None

    @property
    def grpc_ssl_context(self) -> Any:
        return self.certificates.grpc_context if self.certificates is not None else None

    def grpc_credentials(self) -> grpc.ServerCredentials | None:
        return self.certificates.grpc_credentials() if self.certificates is not None else None

    def metrics_app(self, app: Any) -> Any:
        """The Prometheus ASGI app, behind a key of scope read when the server has keys."""
        if not self.keys or not self.options.metrics_auth:
            return app
        return KeyedApp(app, self.keys, Scope.READ)


Send = Callable[[dict[str, Any]], Awaitable[None]]


class KeyedApp:
    """An ASGI app that answers 401/403 unless the request's key grants `scope`."""

    def __init__(self, app: Any, keys: KeyRing, scope: Scope) -> None:
        self.app, self.keys, self.scope = app, keys, scope

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Send) -> None:
        if scope["type"] == "http":
            try:
                self.keys.check((v for k, v in scope["headers"] if k == b"authorization"),
                                self.scope)
            except SurgeError as exc:
                status = getattr(exc, "status", 401)
                await send({"type": "http.response.start", "status": status,
                            "headers": [(b"content-type", b"application/json")]})
                await send({"type": "http.response.body", "body": error_body(str(exc))})
                return
        await self.app(scope, receive, send)


async def _every(interval_s: float, check: Callable[[], object]) -> None:
    while True:
        await asyncio.sleep(interval_s)
        check()


def _tracer(tracing: Any) -> Any:
    if tracing is None:
        return None
    from surge.server.tracing import EXPORTERS, Tracer, tracer_provider

    if tracing in EXPORTERS:
        return Tracer(tracer_provider(tracing))
    return Tracer(None if tracing == "global" else tracing)


__all__ = ["KeyedApp", "ModelControl", "Production", "ProductionOptions"]
