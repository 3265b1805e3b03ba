"""System shared-memory regions that clients register by name (Triton's shared-memory
extension, `docs/protocol.md`).

A client creates a POSIX shared-memory object (`shm_open("/key")`), registers a region of it
(name, key, offset, byte size), then names the region in an input's or output's parameters
instead of sending the tensor's bytes. The server maps the object once, at registration.

With several front ends (`surge serve --frontends N`) a client's register may reach one front
end and its inference another: each registration is then also a small file in a directory the
supervisor makes (`SHARED_MEMORY_DIR_ENV`), which every front end reads, mapping the object itself
the first time a request names the region. A file is written once and never changed (a new
registration under the same name is a new file), so one `stat` per use tells a front end
whether its mapping is still the registered one.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import mmap
import os
import stat
import threading
from pathlib import Path

from surge.errors import shown
from surge.protocol.shared_memory import (
    Region,
    RegionExistsError,
    RegionNotFoundError,
    RemoteClientError,
    SharedMemoryError,
)
from surge.server.frontends import SHARED_MEMORY_DIR_ENV
from surge.workers.transport import SEGMENT_PREFIX

SHM_ROOT = Path("/dev/shm")  # where Linux keeps POSIX shared-memory objects (shm_open)
MAX_NAME_CHARS = 256
MODES = ("system", "none")


def check_region_name(name: object) -> str:
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS:
        raise SharedMemoryError(f"a shared memory region needs a name of 1 to {MAX_NAME_CHARS} "
                                f"characters, got {shown(name)}")
    return name


def check_key(key: object) -> str:
    """A POSIX shared-memory object's name: one leading '/' and no other, so that it cannot
    name a path outside the shared-memory filesystem, nor one of the server's own segments."""
    if (not isinstance(key, str) or len(key) < 2 or len(key) > 255 or key[0] != "/"
            or "/" in key[1:] or "\0" in key or key in ("/.", "/..")):
        raise SharedMemoryError(f"shared memory key must be '/name' (one leading '/', no other "
                                f"'/', not '..'), got {shown(key)}")
    if key[1:].startswith(SEGMENT_PREFIX + "-"):  # other requests' tensors are in those
        raise SharedMemoryError(f"shared memory key {shown(key)} names memory of the server's "
                                f"own workers ('/{SEGMENT_PREFIX}-...'): use another name")
    return key


def check_extent(offset: object, byte_size: object) -> tuple[int, int]:
    """A registration's offset and byte size: non-negative integers, the size above zero."""
    start, size = _whole("offset", offset), _whole("byte_size", byte_size)
    if size == 0:
        raise SharedMemoryError("shared memory byte_size must be above 0")
    return start, size


def _whole(label: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SharedMemoryError(f"shared memory {label} must be a non-negative integer, got "
                                f"{shown(value)}")
    return value


def check_local_client(peer: str) -> None:
    """Refuse a registration from a client that is not on this machine: it cannot share memory
    with the server, and a registration maps any object of the server's user that it names
    (and lets inference write into it). `peer`: an ASGI client host, or a gRPC peer
    (`ipv4:127.0.0.1:5000`, `ipv6:[::1]:5000`, `unix:/path`)."""
    if not _is_local(peer):
        raise RemoteClientError(f"shared memory can be registered only by a client on this "
                                f"machine; this request came from {shown(peer)}")


def _is_local(peer: str) -> bool:
    family, _, rest = peer.partition(":")
    if family in ("unix", "unix-abstract"):
        return True
    # a gRPC peer loses its port; an ASGI client's host stands alone
    host = rest.rsplit(":", 1)[0] if family in ("ipv4", "ipv6") else peer
    host = host.replace("%5B", "[").replace("%5D", "]").strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback  # an IPv4 client of a dual-stack socket
    return address.is_loopback


def map_region(name: str, key: str, offset: int, byte_size: int) -> Region:
    """Map `byte_size` bytes from `offset` of object `key`, read-write and shared."""
    try:
        fd = os.open(SHM_ROOT / key[1:], os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SharedMemoryError(f"shared memory key {key!r} does not exist: create the "
                                "object (shm_open) before registering it") from None
    except OSError as exc:
        raise SharedMemoryError(f"cannot open shared memory key {key!r} "
                                f"({exc.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SharedMemoryError(f"shared memory key {key!r} is not a shared memory object")
        if offset + byte_size > info.st_size:
            raise SharedMemoryError(
                f"shared memory region {name!r}: offset {offset} + byte_size {byte_size} = "
                f"{offset + byte_size} is past the end of {key!r} ({info.st_size} bytes)")
        mapping = mmap.mmap(fd, offset + byte_size)
    finally:
        os.close(fd)
    return Region(name, key, offset, byte_size, memoryview(mapping)[offset:])


class SharedMemoryRegistry:
    """The regions registered with this server, by name; with `directory`, shared with the
    other front ends of the server. A region is unmapped when nothing holds it any more: the
    registry's reference goes on unregister, a request's when it is answered."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory
        self._regions: dict[str, tuple[Region, tuple[int, int]]] = {}
        self._lock = threading.Lock()

    def register(self, name: object, key: object, offset: object, byte_size: object) -> None:
        name, key = check_region_name(name), check_key(key)
        offset, byte_size = check_extent(offset, byte_size)
        with self._lock:
            if self._known(name):
                raise RegionExistsError(f"shared memory region {name!r} is already registered")
            region = map_region(name, key, offset, byte_size)
            stamp = self._publish(region) if self.directory is not None else (0, 0)
            self._regions[name] = (region, stamp)

    def unregister(self, name: str = "") -> None:
        """Forget region `name` (every region when empty); an unknown name is no error."""
        with self._lock:
            names = [name] if name else [*self._regions, *self._published()]
            for each in names:
                self._regions.pop(each, None)
                if self.directory is not None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self._record(each))

    def get(self, name: str) -> Region:
        """The region `name`, as registered now (RegionNotFoundError when it is not)."""
        known = self._regions.get(name)
        if self.directory is None:
            if known is None:
                raise _not_found(name)
            return known[0]
        stamp = self._stamp(name)
        if stamp is None:
            self._regions.pop(name, None)
            raise _not_found(name)
        if known is not None and known[1] == stamp:
            return known[0]
        region = map_region(*self._read(name))
        self._regions[name] = (region, stamp)
        return region

    def status(self, name: str = "") -> list[dict[str, object]]:
        """Triton's status entries: of region `name`, or of every region when empty."""
        if name:
            region = self.get(name)
            return [region.status()]
        if self.directory is None:
            return [region.status() for region, _ in self._regions.values()]
        return [dict(zip(("name", "key", "offset", "byte_size"), self._read(each), strict=True))
                for each in sorted(self._published())]

    # -- the shared directory -------------------------------------------------------------
    def _known(self, name: str) -> bool:
        if self.directory is None:
            return name in self._regions
        return self._stamp(name) is not None

    def _record(self, name: str) -> Path:
        assert self.directory is not None
        return self.directory / (hashlib.sha256(name.encode()).hexdigest() + ".json")

    def _publish(self, region: Region) -> tuple[int, int]:
        """Write the region's file, all at once (a link of a complete file), unless another
        front end registered the name first."""
        record = self._record(region.name)
        partial = record.with_name(f"{record.name}.{os.getpid()}.partial")
        partial.write_text(json.dumps([region.name, region.key, region.offset,
                                       region.byte_size]))
        try:
            os.link(partial, record)
        except FileExistsError:
            raise RegionExistsError(f"shared memory region {region.name!r} is already "
                                    "registered") from None
        finally:
            partial.unlink()
        stamp = self._stamp(region.name)
        assert stamp is not None
        return stamp

    def _stamp(self, name: str) -> tuple[int, int] | None:
        try:
            info = os.stat(self._record(name))
        except FileNotFoundError:
            return None
        return info.st_ino, info.st_ctime_ns

    def _read(self, name: str) -> tuple[str, str, int, int]:
        try:
            stored, key, offset, byte_size = json.loads(self._record(name).read_text())
        except FileNotFoundError:
            raise _not_found(name) from None
        return stored, key, offset, byte_size

    def _published(self) -> list[str]:
        if self.directory is None:
            return []
        names = []
        for path in self.directory.glob("*.json"):
            with contextlib.suppress(FileNotFoundError):
                names.append(json.loads(path.read_text())[0])
        return names


def _not_found(name: str) -> RegionNotFoundError:
    return RegionNotFoundError(f"Unable to find system shared memory region: {name!r}")


def registry_for(mode: str) -> SharedMemoryRegistry | None:
    """The registry of a server run with `--shared-memory MODE` (None: off), shared through
    the supervisor's directory when there is one."""
    if mode == "none":
        return None
    directory = os.environ.get(SHARED_MEMORY_DIR_ENV)
    return SharedMemoryRegistry(Path(directory) if directory else None)


__all__ = ["MODES", "SharedMemoryRegistry", "check_key", "check_local_client", "map_region",
           "registry_for"]
