"""API keys and what each may do, checked the same way on the HTTP, gRPC and metrics ports.

Scopes are ordered: `read` (metadata, configuration, statistics, the repository index,
readiness of a model, metrics), `infer` (read + inference), `admin` (infer + repository load
and unload, which make the server read files, and shared-memory registration, which makes it
map memory a client names). Health (`/v2/health/*`, ServerLive,
ServerReady) stays open so that probes need no secret.
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from surge.errors import ServingError, SurgeError


class Scope(enum.IntEnum):
    """What a key allows; each scope includes the ones below it."""

    READ = 1
    INFER = 2
    ADMIN = 3


class UnauthenticatedError(ServingError):
    """No key, or a key the server does not know (HTTP 401, gRPC UNAUTHENTICATED)."""

    status = 401


class ForbiddenError(ServingError):
    """A known key without the scope the request needs (HTTP 403, gRPC PERMISSION_DENIED)."""

    status = 403


@dataclass(frozen=True)
class ApiKey:
    """One key and its scope."""

    key: str
    scope: Scope = Scope.ADMIN

    def __post_init__(self) -> None:
        if not self.key or any(c.isspace() for c in self.key) or not self.key.isprintable():
            raise SurgeError("an API key must be non-empty printable text without spaces")

    def __repr__(self) -> str:  # never print the secret
        return f"ApiKey(scope={self.scope.name.lower()})"


class KeyRing:
    """The server's keys; `check` raises unless a request's key grants the scope it needs."""

    def __init__(self, keys: Sequence[ApiKey]) -> None:
        self._tokens = tuple((f"Bearer {k.key}".encode(), k.scope) for k in keys)

    def __bool__(self) -> bool:
        return bool(self._tokens)

    def scope_of(self, values: Iterable[bytes]) -> Scope | None:
        """The widest scope any of the `Authorization` values grants; None when none is a key.

        Every value is compared with every key, each with compare_digest: the time taken does
        not depend on which key matched or on how much of a guess was right.
        """
        best: Scope | None = None
        for value in values:
            for token, scope in self._tokens:
                if hmac.compare_digest(value, token) and (best is None or scope > best):
                    best = scope
        return best

    def check(self, values: Iterable[bytes], needed: Scope, header: str = "Authorization") -> None:
        """Raise UnauthenticatedError or ForbiddenError unless a value grants `needed`."""
        if not self._tokens:
            return
        scope = self.scope_of(values)
        if scope is None:
            raise UnauthenticatedError(f"missing or wrong API key: send '{header}: Bearer <key>'")
        if scope < needed:
            raise ForbiddenError(f"this API key has scope '{scope.name.lower()}'; the request "
                                 f"needs '{needed.name.lower()}'")


def parse_scope(text: str) -> Scope:
    try:
        return Scope[text.strip().upper()]
    except KeyError:
        raise SurgeError(f"unknown API key scope {text.strip()!r}: use read, infer or admin") \
            from None


def read_key_file(path: Path) -> list[ApiKey]:
    """Keys from a file: one `KEY SCOPE` per line (scope read, infer or admin; admin when
    left out); blank lines and lines starting with # are skipped."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SurgeError(f"cannot read the API key file {path} ({exc})") from None
    keys = []
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) > 2:
            raise SurgeError(f"{path}:{number}: expected 'KEY [read|infer|admin]', got "
                             f"{len(fields)} fields")
        keys.append(ApiKey(fields[0], parse_scope(fields[1]) if len(fields) == 2 else Scope.ADMIN))
    if not keys:
        raise SurgeError(f"the API key file {path} holds no key")
    return keys


__all__ = ["ApiKey", "ForbiddenError", "KeyRing", "Scope", "UnauthenticatedError",
           "parse_scope", "read_key_file"]
