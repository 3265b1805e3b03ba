"""API keys and what each may do, checked the same way on the HTTP, gRPC and metrics ports.

Scopes are ordered: `read` (metadata, configuration, statistics, the repository index,
readiness of a model, metrics), `infer` (read + inference), `admin` (infer + repository load
and unload, which make the server read files, and shared-memory registration, which makes it
map memory a client names). Health (`/v2/health/*`, ServerLive,
ServerReady) stays open so that probes need no secret.
"""

from __future__ import annotations

import enum
import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from surge.datafiles import file_stamp, regular_file
from surge.errors import ServingError, SurgeError

log = logging.getLogger(__name__)


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
        # Headers and gRPC metadata carry ASCII: another key could never be sent.
        if not self.key or not all("!" <= c <= "~" for c in self.key):
            raise SurgeError("an API key must be visible ASCII characters, without spaces")

    def __repr__(self) -> str:  # never print the secret
        return f"ApiKey(scope={self.scope.name.lower()})"


class KeyRing:
    """The server's keys; `check` raises unless a request's key grants the scope it needs."""

    def __init__(self, keys: Sequence[ApiKey]) -> None:
        self._scopes = _scopes_of(keys)  # SHA-256 of each key -> its widest scope

    def replace(self, keys: Sequence[ApiKey]) -> None:
        """Hold `keys` instead of the ones held: every later check sees the new set whole."""
        self._scopes = _scopes_of(keys)

    def __bool__(self) -> bool:
        return bool(self._scopes)

    def scope_of(self, values: Iterable[bytes]) -> Scope | None:
        """The widest scope any of the `Authorization` values grants; None when none is a key.

        Each value's token is hashed and looked up among the keys' hashes: the time taken
        depends neither on which key matched nor on how much of a guess was right (a lookup
        compares hashes, which a guess cannot steer), nor on how many keys there are. Comparing
        every value with every key let one request carrying a thousand `Authorization` values
        hold the event loop for seconds against a large key file.
        """
        found = [scope for scope in (self._scopes.get(_digest(_bearer_token(v))) for v in values)
                 if scope is not None]
        return max(found) if found else None

    def check(self, values: Iterable[bytes], needed: Scope, header: str = "Authorization") -> None:
        """Raise UnauthenticatedError or ForbiddenError unless a value grants `needed`."""
        if not self._scopes:
            return
        scope = self.scope_of(values)
        if scope is None:
            raise UnauthenticatedError(f"missing or wrong API key: send '{header}: Bearer <key>'")
        if scope < needed:
            raise ForbiddenError(f"this API key has scope '{scope.name.lower()}'; the request "
                                 f"needs '{needed.name.lower()}'")


def _scopes_of(keys: Sequence[ApiKey]) -> dict[bytes, Scope]:
    scopes: dict[bytes, Scope] = {}
    for key in keys:
        digest = _digest(key.key.encode())
        scopes[digest] = max(key.scope, scopes.get(digest, key.scope))
    return scopes


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


def _bearer_token(value: bytes) -> bytes:
    """The credentials of an `Authorization: Bearer <key>` value (the scheme is
    case-insensitive, RFC 7235); b"" for any other scheme, which matches no key."""
    scheme, _, token = value.partition(b" ")
    return token.lstrip(b" ") if scheme.lower() == b"bearer" else b""


def parse_scope(text: str) -> Scope:
    try:
        return Scope[text.strip().upper()]
    except KeyError:
        raise SurgeError(f"unknown API key scope {text.strip()!r}: use read, infer or admin") \
            from None


def read_key_file(path: Path) -> list[ApiKey]:
    """Keys from a file: one `KEY SCOPE` per line (scope read, infer or admin; admin when
    left out); blank lines, lines starting with # and the rest of a line from a ` #` are
    skipped. A key given twice is refused: which of its scopes held would be a guess."""
    # A FIFO (or a device) would block the event loop that re-reads it: regular files only.
    regular_file(path, "the API key file")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # a BOM is no part of a key
    except (OSError, UnicodeDecodeError) as exc:
        raise SurgeError(f"cannot read the API key file {path} ({exc})") from None
    keys: list[ApiKey] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(lines, 1):
        fields = _fields(line)
        if not fields:
            continue
        key = _key_of(fields, f"{path}:{number}")
        if key.key in first_line:
            raise SurgeError(f"{path}:{number}: this key is already on line "
                             f"{first_line[key.key]}; give each key once, with one scope")
        first_line[key.key] = number
        keys.append(key)
    if not keys:
        raise SurgeError(f"the API key file {path} holds no key")
    return keys


def _fields(line: str) -> list[str]:
    """A line's fields before its comment."""
    fields = line.split()
    for index, field in enumerate(fields):
        if field.startswith("#"):
            return fields[:index]
    return fields


def _key_of(fields: list[str], where: str) -> ApiKey:
    if len(fields) > 2:
        raise SurgeError(f"{where}: expected 'KEY [read|infer|admin]', got {len(fields)} fields")
    try:
        return ApiKey(fields[0], parse_scope(fields[1]) if len(fields) == 2 else Scope.ADMIN)
    except SurgeError as exc:
        raise SurgeError(f"{where}: {exc}") from None


class FollowedKeyFile:
    """A key file whose keys a ring holds beside fixed ones, read again when it changes.

    `reload_if_changed` compares the file's modification time, size and inode with the last
    read (a rename over it, as editors and Kubernetes secrets do, changes the inode); `reload`
    reads it whatever changed (SIGHUP). A file that cannot be used (removed, half written, a
    mistake on a line) leaves the keys in use and is logged: a typo must not lock every
    client out, nor let anyone in.
    """

    def __init__(self, path: Path, ring: KeyRing, fixed: Sequence[ApiKey] = ()) -> None:
        self.path, self.ring, self.fixed = path, ring, tuple(fixed)
        self._stamp = file_stamp(path)
        ring.replace([*self.fixed, *read_key_file(path)])  # SurgeError at start: no start

    def reload_if_changed(self) -> bool:
        """Read the file again if it changed on disk; True when its keys are now in use."""
        stamp = file_stamp(self.path)
        if stamp == self._stamp:
            return False
        return self.reload(stamp)

    def reload(self, stamp: tuple[int, ...] | None = None) -> bool:
        """Read the file again; on failure keep the keys in use and log why."""
        self._stamp = stamp if stamp is not None else file_stamp(self.path)
        try:
            keys = read_key_file(self.path)
        except SurgeError as exc:
            log.error("API keys not reloaded, the previous ones stay in use: %s", exc)
            return False
        self.ring.replace([*self.fixed, *keys])
        log.warning("API keys reloaded from %s (%d keys)", self.path, len(keys))
        return True


__all__ = ["ApiKey", "FollowedKeyFile", "ForbiddenError", "KeyRing", "Scope",
           "UnauthenticatedError", "parse_scope", "read_key_file"]
