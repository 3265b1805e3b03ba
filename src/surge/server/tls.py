"""TLS for the HTTP, gRPC and metrics listeners, with the certificate reloaded while serving.

One `Certificates` object reads the key pair (and the client CA) and hands it to every listener:
HTTP and metrics share one `ssl.SSLContext` and gRPC has one of its own (ALPN "h2"). A reload
builds fresh contexts from the files and, only once both loaded, makes them the current
generation: the listeners' contexts switch each new handshake to it as the ClientHello arrives
(`sni_callback`), so a pair that fails half way never reaches a listener, a new client CA
replaces the old one, and open connections keep theirs. With
`--grpc-server grpcio`, gRPC asks for its certificate through
`grpc.dynamic_ssl_server_credentials`, whose fetcher returns the new pair once after a reload.
Files are re-read when their modification time, size or inode changes (checked every
`check_interval_s`) or on SIGHUP; a new pair that does not load leaves the old one in use and is logged.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from surge.datafiles import file_stamp, regular_file
from surge.errors import ConfigError, SurgeError

log = logging.getLogger(__name__)


class TlsError(SurgeError):
    """A certificate, key or CA file that cannot be used (CLI: one line, exit 2)."""


@dataclass(frozen=True)
class TlsConfig:
    """Where the server's certificate and key are, and whose client certificates it accepts."""

    cert: Path  # PEM certificate chain, leaf first
    key: Path  # PEM private key of the leaf certificate, unencrypted
    ca: Path | None = None  # PEM CA bundle: when set, clients must present a certificate it signed
    check_interval_s: float = 5.0  # how often the files' modification times are compared

    def __post_init__(self) -> None:
        if not self.check_interval_s > 0:  # NaN too
            raise ValueError(f"check_interval_s must be positive, got {self.check_interval_s}")


@dataclass(frozen=True)
class KeyPair:
    """The PEM bytes of one certificate generation (what gRPC is handed)."""

    cert: bytes
    key: bytes
    ca: bytes | None


def _read(path: Path, what: str) -> bytes:
    try:
        # A FIFO (or a device) would block the event loop that reloads: regular files only.
        regular_file(path, f"the TLS {what}")
        return path.read_bytes()
    except ConfigError as exc:
        raise TlsError(str(exc)) from None
    except OSError as exc:
        raise TlsError(f"cannot read the TLS {what} {path} ({exc.strerror})") from None


def read_pair(config: TlsConfig) -> KeyPair:
    """The files' bytes, checked: the key must match the certificate, the CA must parse."""
    pair = _pair_bytes(config)
    _context_for(config)  # OpenSSL's own check of the pair and the CA
    return pair


def _pair_bytes(config: TlsConfig) -> KeyPair:
    return KeyPair(_read(config.cert, "certificate"), _read(config.key, "key"),
                   _read(config.ca, "CA bundle") if config.ca is not None else None)


def _context_for(config: TlsConfig) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, config)
    if config.ca is not None:
        try:
            context.load_verify_locations(cafile=str(config.ca))
        except (ssl.SSLError, OSError) as exc:
            raise TlsError(f"--tls-ca {config.ca}: not a PEM CA bundle ({_reason(exc)})") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _load_chain(context: ssl.SSLContext, config: TlsConfig) -> None:
    try:
        context.load_cert_chain(str(config.cert), str(config.key))
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            raise TlsError(f"--tls-key {config.key} is not the key of --tls-cert {config.cert}") \
                from None
        raise TlsError(f"--tls-cert {config.cert} / --tls-key {config.key}: not a PEM "
                       f"certificate and key ({_reason(exc)})") from None
    except OSError as exc:
        raise TlsError(f"cannot read --tls-cert {config.cert} or --tls-key {config.key} "
                       f"({exc.strerror})") from None


def _reason(exc: Exception) -> str:
    return getattr(exc, "reason", None) or str(exc).splitlines()[0][:200]


def _generation(config: TlsConfig) -> tuple[KeyPair, tuple[ssl.SSLContext, ssl.SSLContext]]:
    """The pair's bytes (for gRPC core) and fresh HTTP and gRPC contexts loaded from the files:
    all or nothing, so that a pair that fails to load changes nothing in use."""
    pair = _pair_bytes(config)  # first: a file that is not regular is refused before OpenSSL
    grpc_context = _context_for(config)
    grpc_context.set_alpn_protocols(["h2"])  # which gRPC clients require
    return pair, (_context_for(config), grpc_context)


def _stamp(config: TlsConfig) -> tuple[int, ...]:
    return file_stamp(config.cert, config.key, *([config.ca] if config.ca is not None else []))


class Certificates:
    """The server's current certificate, for the HTTP context and the gRPC credentials."""

    def __init__(self, config: TlsConfig) -> None:
        self.config = config
        self._pair, live = _generation(config)  # TlsError at startup: the server does not start
        self._live = live  # (HTTP, gRPC) contexts of the current generation
        # The listeners keep these objects; each handshake is switched to the current ones.
        self.context, self.grpc_context = live
        for index, context in enumerate(live):
            context.sni_callback = self._switch_to(index)
        self._stamp = _stamp(config)
        self._lock = threading.Lock()  # gRPC's fetcher runs on gRPC's own threads
        self._grpc_pending = False
        self.generation = 1  # how many pairs were loaded: 2 after the first reload

    def _switch_to(self, index: int) -> Callable[[Any, str | None, ssl.SSLContext], None]:
        def switch(connection: Any, _server_name: str | None, _context: ssl.SSLContext) -> None:
            current = self._live[index]
            if connection.context is not current:
                connection.context = current  # certificate, key and client CA of the generation
        return switch

    def reload_if_changed(self) -> bool:
        """Load the files again if they changed on disk; True when a new pair is in use."""
        stamp = _stamp(self.config)
        if stamp == self._stamp:
            return False
        return self.reload(stamp)

    def reload(self, stamp: tuple[int, ...] | None = None) -> bool:
        """Load the files again; on failure keep the pair in use and log why."""
        self._stamp = stamp if stamp is not None else _stamp(self.config)
        try:
            pair, live = _generation(self.config)
        except TlsError as exc:
            log.error("TLS certificate not reloaded, the previous one stays in use: %s", exc)
            return False
        with self._lock:
            self._pair, self._live = pair, live  # new handshakes use it; open ones keep theirs
            self._grpc_pending = True
            self.generation += 1
        log.warning("TLS certificate reloaded from %s (generation %d)", self.config.cert,
                    self.generation)
        return True

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """Credentials whose certificate follows `reload()` for new gRPC handshakes."""
        return grpc.dynamic_ssl_server_credentials(
            self._grpc_configuration(), self._grpc_fetch,
            require_client_authentication=self.config.ca is not None,
        )

    def _grpc_configuration(self) -> grpc.ServerCertificateConfiguration:
        pair = self._pair
        return grpc.ssl_server_certificate_configuration([(pair.key, pair.cert)], pair.ca)

    def _grpc_fetch(self) -> grpc.ServerCertificateConfiguration | None:
        # Called by gRPC before each handshake: None keeps the configuration it has.
        with self._lock:
            if not self._grpc_pending:
                return None
            self._grpc_pending = False
            return self._grpc_configuration()


__all__ = ["Certificates", "KeyPair", "TlsConfig", "TlsError", "read_pair"]
