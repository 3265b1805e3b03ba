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
whether its mapping is still the registered one. A front end's thread lets go of its mappings
of regions unregistered through another within SWEEP_EVERY_S, off the request path.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import math
import mmap
import os
import stat
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

from surge.errors import shown
from surge.protocol.shared_memory import (
    Region,
    RegionExistsError,
    RegionNotFoundError,
    RemoteClientError,
    SharedMemoryError,
    byte_count,
)
from surge.server.frontends import SHARED_MEMORY_DIR_ENV
from surge.server.peers import client_uid, is_local
from surge.workers.transport import SEGMENT_PREFIX

SHM_ROOT = Path("/dev/shm")  # where Linux keeps POSIX shared-memory objects (shm_open)
MAX_NAME_CHARS = 256
# Each region is one mapping, and a process has vm.max_map_count of them (65,530 by default)
# for everything it maps: past this many registrations the server would run out of its own.
MAX_REGIONS = 4096
# How often, at most, a front end checks its mappings of regions registered through another
# (`SharedMemoryRegistry._sweep`): a stat per mapping, 20 ms for 4,096 of them; its sweeper
# thread looks that often at the directory (one stat), and sweeps when the directory changed.
SWEEP_EVERY_S = 1.0
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
    start = byte_count("shared memory offset", offset)
    size = byte_count("shared memory byte_size", byte_size)
    if size == 0:
        raise SharedMemoryError("shared memory byte_size must be above 0")
    return start, size


def check_local_client(peer: str) -> None:
    """Refuse a registration from a client that is not on this machine: it cannot share memory
    with the server, and a registration maps any object of the server's user that it names
    (and lets inference write into it). `peer`: an ASGI client host, or a gRPC peer
    (`ipv4:127.0.0.1:5000`, `ipv6:[::1]:5000`, `unix:/path`)."""
    if not is_local(peer):
        raise RemoteClientError(f"shared memory can be registered only by a client on this "
                                f"machine; this request came from {shown(peer)}")


class ForeignObjectError(SharedMemoryError):
    """A registration of an object another user owns (HTTP 403, gRPC PERMISSION_DENIED)."""

    status = 403
    grpc_status = "PERMISSION_DENIED"


def check_owner(key: str, owner: int, client: int | None) -> None:
    """Map only an object of the registering client's user (any object for root, who can read
    them all anyway; the server's own user's when the client's is unknown): a server running
    as root must not become every local user's way into the others' memory."""
    allowed = os.geteuid() if client is None else client
    if client != 0 and owner != allowed:
        who = "the server's user" if client is None else "the registering client's user"
        raise ForeignObjectError(f"shared memory key {key!r} belongs to uid {owner}, not to "
                                 f"{who} (uid {allowed}): register objects your user created")


def map_region(name: str, key: str, offset: int, byte_size: int,
               client: int | None = None, check_client: bool = False) -> tuple[Region, int]:
    """Map `byte_size` bytes from `offset` of object `key`, read-write and shared; with the
    object's inode number. With `check_client`, only an object of user `client` (see
    `check_owner`)."""
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
        if check_client:
            check_owner(key, info.st_uid, client)
        if offset + byte_size > info.st_size:
            raise SharedMemoryError(
                f"shared memory region {name!r}: offset {offset} + byte_size {byte_size} = "
                f"{offset + byte_size} is past the end of {key!r} ({info.st_size} bytes)")
        buffer = _mapped(fd, offset, byte_size)
    except OSError as exc:
        raise SharedMemoryError(f"cannot map shared memory region {name!r} of {key!r} "
                                f"({exc.strerror})") from None
    finally:
        os.close(fd)
    return Region(name, key, offset, byte_size, buffer), info.st_ino


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_int64)
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_MAP_FAILED = ctypes.c_void_p(-1).value


def _mapped(fd: int, offset: int, byte_size: int) -> memoryview:
    """`byte_size` bytes from `offset` of `fd`, mapped shared; unmapped when the last view of
    them goes. Not Python's mmap, which keeps a duplicate of the descriptor as long as the
    mapping lives: one per region, until registrations use up the process's open files and
    the server can accept no connection."""
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    length = offset + byte_size - start
    address = _libc.mmap(None, length, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED,
                         fd, start)
    if address is None or address == _MAP_FAILED:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    pages = (ctypes.c_char * length).from_address(address)
    weakref.finalize(pages, _libc.munmap, address, length)
    return memoryview(pages).cast("B")[offset - start:]


@dataclass(frozen=True, slots=True)
class _Held:
    """A region this front end mapped: `stamp` of its record in the shared directory ((0, 0)
    without one), `inode` of its object."""

    region: Region
    stamp: tuple[int, int]
    inode: int


def _check_not_shrunk(held: _Held) -> None:
    """Refuse a region whose object the client has since shrunk below it: touching the mapping
    past the object's end would stop the process (SIGBUS). One stat per request; an object
    removed, or replaced under its name, keeps what was mapped and is not checked. (An object
    shrunk while a request uses the region is not caught: see docs/protocol.md.)"""
    region = held.region
    try:
        info = os.stat(os.fspath(SHM_ROOT) + region.key)  # the key starts with its "/"
    except OSError:
        return
    end = region.offset + region.byte_size
    if info.st_ino == held.inode and info.st_size < end:
        raise SharedMemoryError(
            f"shared memory key {region.key!r} is now {info.st_size} bytes, shorter than region "
            f"{region.name!r} (offset {region.offset} + byte_size {region.byte_size} = {end}): "
            "unregister the region and register it again")


class SharedMemoryRegistry:
    """The regions registered with this server, by name; with `directory`, shared with the
    other front ends of the server. A region is unmapped when nothing holds it any more: the
    registry's reference goes on unregister, a request's when it is answered."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory
        self._regions: dict[str, _Held] = {}
        self._lock = threading.Lock()
        self._swept = -math.inf  # time.monotonic() of the last sweep
        self._sweeper: threading.Thread | None = None  # started by the first mapping
        self._closed = threading.Event()

    def register(self, name: object, key: object, offset: object, byte_size: object,
                 peer: str | None = None) -> None:
        """Register a region; from a client at `peer`, only of an object its user owns."""
        name, key = check_region_name(name), check_key(key)
        offset, byte_size = check_extent(offset, byte_size)
        with self._lock:
            self._sweep()
            if self._known(name):
                raise RegionExistsError(f"shared memory region {name!r} is already registered")
            if self._count() >= MAX_REGIONS:
                raise SharedMemoryError(f"{MAX_REGIONS} shared memory regions are registered, "
                                        "the most this server keeps: unregister some first")
            region, inode = map_region(name, key, offset, byte_size,
                                       client_uid(peer) if peer else None, peer is not None)
            stamp = self._publish(region, inode) if self.directory is not None else (0, 0)
            self._regions[name] = _Held(region, stamp, inode)
            if self.directory is not None:
                self._start_sweeper()

    def unregister(self, name: str = "") -> None:
        """Forget region `name` (every region when empty); an unknown name is no error."""
        with self._lock:
            names = [name] if name else [*self._regions,
                                         *(record[0] for record in self._published())]
            for each in names:
                self._regions.pop(each, None)
                if self.directory is not None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self._record(each))
            self._sweep()

    def get(self, name: str) -> Region:
        """The region `name`, as registered now (RegionNotFoundError when it is not), for a
        request to read or write."""
        held = self._held(name)
        _check_not_shrunk(held)
        return held.region

    def _held(self, name: str) -> _Held:
        known = self._regions.get(name)
        if self.directory is None:
            if known is None:
                raise _not_found(name)
            return known
        stamp = self._stamp(name)
        if stamp is None:
            self._regions.pop(name, None)
            raise _not_found(name)
        if known is not None and known.stamp == stamp:
            return known
        self._regions.pop(name, None)  # a mapping of what was registered before, if any
        stored, key, offset, byte_size, registered = self._read(name)
        region, inode = map_region(stored, key, offset, byte_size)
        if inode != registered:
            raise SharedMemoryError(
                f"shared memory key {region.key!r} is no longer the object region {name!r} "
                "was registered with (it was removed and made again): unregister the region "
                "and register it again")
        held = _Held(region, stamp, inode)
        self._sweep()
        self._regions[name] = held
        self._start_sweeper()
        return held

    def close(self) -> None:
        """Stop the sweeper thread (at the drain)."""
        self._closed.set()
        if self._sweeper is not None:
            self._sweeper.join()

    def status(self, name: str = "") -> list[dict[str, object]]:
        """Triton's status entries: of region `name`, or of every region when empty."""
        if self.directory is None:
            if name:
                return [self._held(name).region.status()]
            return [held.region.status() for held in self._regions.values()]
        self._sweep()
        # from the records, not mappings: one front end's status maps nothing
        records = [self._read(name)] if name else sorted(self._published())
        return [dict(zip(("name", "key", "offset", "byte_size"), record[:4], strict=True))
                for record in records]

    # -- the shared directory -------------------------------------------------------------
    def _known(self, name: str) -> bool:
        if self.directory is None:
            return name in self._regions
        return self._stamp(name) is not None

    def _record(self, name: str) -> Path:
        assert self.directory is not None
        return self.directory / (hashlib.sha256(name.encode()).hexdigest() + ".json")

    def _publish(self, region: Region, inode: int) -> tuple[int, int]:
        """Write the region's file, all at once (a link of a complete file), unless another
        front end registered the name first. With the object's inode: a front end mapping
        the region later maps that object only, not one made since under the same key (of
        another user, perhaps: the registration checked the owner of this one)."""
        record = self._record(region.name)
        partial = record.with_name(f"{record.name}.{os.getpid()}.partial")
        partial.write_text(json.dumps([region.name, region.key, region.offset,
                                       region.byte_size, inode]))
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

    def _read(self, name: str) -> tuple[str, str, int, int, int]:
        """A region's record: name, key, offset, byte size and the object's inode."""
        try:
            stored, key, offset, byte_size, inode = json.loads(self._record(name).read_text())
        except FileNotFoundError:
            raise _not_found(name) from None
        return stored, key, offset, byte_size, inode

    def _published(self) -> list[tuple[str, str, int, int, int]]:
        """Every region's record, each read once: one unregistered meanwhile is left out."""
        if self.directory is None:
            return []
        records = []
        for path in self.directory.glob("*.json"):
            with contextlib.suppress(FileNotFoundError):
                stored, key, offset, byte_size, inode = json.loads(path.read_text())
                records.append((stored, key, offset, byte_size, inode))
        return records

    def _count(self) -> int:
        if self.directory is None:
            return len(self._regions)
        return sum(entry.endswith(".json") for entry in os.listdir(self.directory))

    def _start_sweeper(self) -> None:
        """A thread letting go of this front end's mappings of regions unregistered through
        another, which would otherwise stay mapped (the object's memory with them, even once
        the client removed it) until this front end's next shared-memory call. It holds the
        registry weakly: a registry dropped without `close` ends it too."""
        if self._sweeper is not None or self._closed.is_set():
            return
        self._sweeper = threading.Thread(target=_sweep_while_open, daemon=True,
                                         args=(weakref.ref(self), self._closed),
                                         name="surge-shm-sweeper")
        self._sweeper.start()

    def _sweep_changed(self, seen: tuple[int, bool]) -> tuple[int, bool]:
        """Sweep when the directory changed (a record linked or removed) since the look that
        saw `seen` (its modification time, and whether that look found it unchanged); the
        look after a change sweeps once more, for a change within the same clock tick as
        the modification time it read. Returns what this look saw."""
        assert self.directory is not None
        try:
            mtime = os.stat(self.directory).st_mtime_ns
        except OSError:  # removed: the server is stopping
            return seen
        if mtime != seen[0] or not seen[1]:
            with self._lock:
                self._swept = -math.inf  # now, whenever the last sweep was
                self._sweep()
        return mtime, mtime == seen[0]

    def _sweep(self) -> None:
        """Let go of the mappings of regions unregistered, or registered anew, through another
        front end: nothing else would while no request here names them again, and each holds
        its object's memory even once the client removed the object."""
        now = time.monotonic()
        if self.directory is None or now - self._swept < SWEEP_EVERY_S:
            return
        self._swept = now
        for name, held in list(self._regions.items()):
            # The same mapping only: a request may have mapped the name's new record meanwhile.
            if self._stamp(name) != held.stamp and self._regions.get(name) is held:
                self._regions.pop(name, None)


def _sweep_while_open(registry: weakref.ref[SharedMemoryRegistry],
                      closed: threading.Event) -> None:
    """The sweeper thread: every SWEEP_EVERY_S, a sweep when the directory changed."""
    seen = (-1, False)
    while not closed.wait(SWEEP_EVERY_S):
        alive = registry()
        if alive is None:
            return
        seen = alive._sweep_changed(seen)
        del alive  # not kept alive between looks


def _not_found(name: str) -> RegionNotFoundError:
    return RegionNotFoundError(f"Unable to find system shared memory region: {name!r}")


def registry_for(mode: str) -> SharedMemoryRegistry | None:
    """The registry of a server run with `--shared-memory MODE` (None: off), shared through
    the supervisor's directory when there is one."""
    if mode == "none":
        return None
    directory = os.environ.get(SHARED_MEMORY_DIR_ENV)
    return SharedMemoryRegistry(Path(directory) if directory else None)


__all__ = ["MODES", "ForeignObjectError", "SharedMemoryRegistry", "check_key",
           "check_local_client", "map_region", "registry_for"]
