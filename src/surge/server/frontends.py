"""Several front-end processes on one machine sharing its ports (`surge serve --frontends N`).

One Python front end tops out near one core. With `--frontends N` a supervisor process
starts N complete servers (`surge.server.process.serve`) that listen on the same HTTP, gRPC
and metrics ports with SO_REUSEPORT, so the kernel spreads connections among them; each front
end schedules its own share of the work on its own instances (measured against one front end
in docs/performance.md, "Front-end cost per request"). The supervisor itself serves nothing:
it reserves the ports, starts the front ends, restarts one that dies, and on SIGTERM/SIGINT
drains them all and waits for them.

Metrics aggregate across front ends: every front end writes its Prometheus samples into one
multiprocess directory (prometheus_client's multiprocess mode), and whichever answers a scrape
exports the sum (gauges: the sum or the maximum over live front ends, see
surge/engine/metrics.py). `/v2/models/NAME/stats` answers with the answering front end's own
share, as each of several Triton servers behind a balancer would; Triton's nv_* names, made
from those statistics, are written into the same directory by every front end once a second
(surge/engine/triton_metrics.py), so that they too are the whole server's.

Load and unload requests (explicit model control) reach one front end, which does the change
and records it in a directory the supervisor makes; every other front end follows it, and a
front end restarted after a crash does every recorded change before it listens
(surge/server/model_control.py). Shared-memory registrations are shared through a directory
too (surge/server/shared_memory.py), and so are the log settings of the logging extension
(surge/server/log_settings.py), which the supervisor's own log follows as well, and the
trace settings of the trace extension (surge/server/trace_settings.py).

This module imports only the standard library at the top: a front end's process must set the
multiprocess directory before prometheus_client is imported.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from surge.errors import SurgeError
from surge.platform import available_cores
from surge.server.sockets import reserve_all
from surge.tempdirs import owned_dir, remove_orphaned

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from surge.server.log_settings import LogSettings
    from surge.server.process import Endpoints, ServeOptions

log = logging.getLogger(__name__)

METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client reads it when imported
# The shared-memory registrations every front end sees (surge/server/shared_memory.py).
SHARED_MEMORY_DIR_ENV = "SURGE_SHARED_MEMORY_DIR"
# The loads and unloads every front end follows (surge/server/model_control.py).
CONTROL_DIR_ENV = "SURGE_MODEL_CONTROL_DIR"
CONTROL_DONE = "done"  # its folder of each front end's notes of what it followed
STARTUP_TIMEOUT_S = 600.0  # a front end loads every model before it reports started
RESTART_BACKOFF_S = (0.5, 30.0)  # first and longest wait before restarting a dead front end
STABLE_AFTER_S = 60.0  # a front end that lived this long restarts without waiting again
MAX_FRONTENDS_PER_CORE = 4  # past this the front ends only take turns on the cores
SHM_ROOT = Path("/dev/shm")  # where a front end's workers' tensor segments lie
# The supervisor's directories in the temp dir, named `<prefix><its pid>-<random>`.
DIR_PREFIXES = ("surge-metrics-", "surge-shm-registry-", "surge-model-control-")


def frontend_count(value: str | int) -> int:
    """`--frontends`: a positive number, or `auto` for one per core this process may use
    (an int: the option's default, passed through the same check)."""
    text = str(value).strip()
    if text.lower() == "auto":
        return available_cores()
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise SurgeError(f"--frontends {value!r}: use a positive number of front-end "
                         "processes or 'auto' (one per core)")
    most = MAX_FRONTENDS_PER_CORE * available_cores()
    if count > most:
        raise SurgeError(f"--frontends {count}: at most {most} here ({MAX_FRONTENDS_PER_CORE} "
                         f"per core; 'auto' gives one per core)")
    return count


def restart_delay(failures: int) -> float:
    """Seconds before restarting a front end that died `failures` times in a row young (0: it
    had served a while, restart at once): 0.5 s doubling to 30 s, so a front end that cannot
    start does not spin the machine."""
    if failures <= 0:
        return 0.0
    first, longest = RESTART_BACKOFF_S
    return float(min(longest, first * 2 ** (failures - 1)))


@dataclass(frozen=True)
class _Started:
    """What a front end sends the supervisor once it listens."""

    pid: int
    endpoints: Endpoints


def _stop_with_parent(supervisor: int) -> None:
    """Ask Linux for SIGTERM (a drain) when the supervisor dies, even by SIGKILL."""
    if sys.platform != "linux":
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    # Compared with the supervisor's pid, not 1: in a container the supervisor is often pid 1.
    if os.getppid() != supervisor:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _frontend_main(payload: bytes, directories: tuple[str, str, str], report: Any,
                   supervisor: int) -> None:
    """A front end's process: the multiprocess metrics directory, the shared-memory
    registrations' and the model control's first, then the server."""
    (os.environ[METRICS_DIR_ENV], os.environ[SHARED_MEMORY_DIR_ENV],
     os.environ[CONTROL_DIR_ENV]) = directories
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the server takes it (a reload)
    _stop_with_parent(supervisor)
    from surge.server.process import serve

    repo, options = pickle.loads(payload)
    try:
        serve(repo, options, lambda endpoints: report.send(_Started(os.getpid(), endpoints)))
    except SurgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


class Supervisor:
    """Starts `count` front ends on shared ports, keeps them running, stops them together."""

    def __init__(self, repo: Path | str, options: ServeOptions, count: int) -> None:
        self.repo, self.count = repo, count
        self._sockets = reserve_all(options.host, (options.http_port, options.grpc_port,
                                                   options.metrics_port), reuse_port=True)
        http, grpc, metrics = (sock.getsockname()[1] for sock in self._sockets)
        self.options = replace(options, http_port=http, grpc_port=grpc, metrics_port=metrics,
                               reuse_port=True, frontends=1)
        try:
            self._payload = pickle.dumps((repo, self.options))
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            for sock in self._sockets:
                sock.close()
            raise SurgeError(f"these serve options cannot be handed to front-end processes "
                             f"({exc}); serve them with one front end") from None
        remove_orphaned(DIR_PREFIXES)  # those of supervisors killed outright
        self._directories = tuple(owned_dir(p) for p in DIR_PREFIXES)
        self._metrics_dir = self._directories[0]
        self._context = multiprocessing.get_context("spawn")
        self._processes: list[BaseProcess | None] = [None] * count
        self._started_at = [0.0] * count
        self._failures = [0] * count
        self._stop = False
        self._logs: LogSettings | None = None  # followed once every front end has started

    def run(self, on_started: Callable[[Endpoints], None] | None = None) -> None:
        """Serve until SIGTERM/SIGINT, then stop every front end and return."""
        previous = {sig: signal.signal(sig, self._request_stop)
                    for sig in (signal.SIGTERM, signal.SIGINT)}
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._forward_reload)
        try:
            # Started together (each loads its models at once), announced once all listen.
            pipes = [self._spawn(index) for index in range(self.count)]
            endpoints = [self._await_started(index, pipe) for index, pipe in enumerate(pipes)]
            if on_started is not None and endpoints[-1] is not None:
                on_started(endpoints[-1])
            self._logs = self._log_settings()
            while not self._stop:
                self._watch(timeout=0.5)
                self._follow_logs()
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.close()

    def _log_settings(self) -> LogSettings:
        from surge.server.log_settings import LogSettings

        settings = LogSettings(self._directories[2])
        settings.note()  # a change is answered once the supervisor follows it too
        return settings

    def _follow_logs(self) -> None:
        """Its own lines follow a change made on a front end; the change waits for this, so
        it is done while a front end restarts too (else every change waited 10 s meanwhile)."""
        if self._logs is None:
            return
        try:
            self._logs.follow()
        except OSError as exc:  # the directory's disk: tried again with the next change
            log.warning("log settings not followed: %s", exc)

    def close(self) -> None:
        """Release the reserved ports and the directories (after the front ends)."""
        for sock in self._sockets:
            sock.close()
        for directory in self._directories:
            shutil.rmtree(directory, ignore_errors=True)

    def _request_stop(self, _signum: int, _frame: Any) -> None:
        self._stop = True  # only a flag: the loop notices within half a second

    def _forward_reload(self, _signum: int, _frame: Any) -> None:
        """SIGHUP: each front end re-reads the certificate and the key file."""
        for process in self._processes:
            if process is not None and process.pid is not None and process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGHUP)

    def _start(self, index: int) -> Endpoints | None:
        """Start front end `index` and wait until it listens (None: stopped meanwhile)."""
        return self._await_started(index, self._spawn(index))

    def _spawn(self, index: int) -> Any:
        """Start front end `index`; returns the end of the pipe it reports on."""
        receive, send = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_frontend_main,
            args=(self._payload, self._directories, send, os.getpid()),
            name=f"surge-frontend-{index}", daemon=False)
        process.start()
        send.close()
        self._processes[index] = process
        self._started_at[index] = time.monotonic()
        return receive

    def _await_started(self, index: int, receive: Any) -> Endpoints | None:
        try:
            return self._receive_started(index, receive)
        finally:
            receive.close()

    def _receive_started(self, index: int, receive: Any) -> Endpoints | None:
        process = self._processes[index]
        assert process is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not self._stop and time.monotonic() < deadline:
            ready = multiprocessing.connection.wait([receive, process.sentinel], timeout=0.5)
            self._follow_logs()
            if receive in ready:
                with contextlib.suppress(EOFError):
                    started: _Started = receive.recv()
                    log.info("front end %d (pid %d) serving", index, started.pid)
                    return started.endpoints
            if process.sentinel in ready:
                process.join()
                raise SurgeError(f"front end {index} exited with {process.exitcode} before it "
                                 "listened (its error is above)")
        if self._stop:
            return None
        raise SurgeError(f"front end {index} did not listen within {STARTUP_TIMEOUT_S:.0f} s")

    def _watch(self, timeout: float) -> None:
        """Wait for a front end to exit; restart it (after a backoff when it died young)."""
        live: dict[Any, int] = {p.sentinel: i for i, p in enumerate(self._processes)
                                if p is not None}
        for sentinel in multiprocessing.connection.wait(list(live), timeout=timeout):
            if self._stop:
                return
            self._replace(live[sentinel])

    def _replace(self, index: int) -> None:
        process = self._processes[index]
        assert process is not None
        process.join()
        self._mark_dead(process.pid)
        remove_segments_of(process.pid)
        # Its notes of the loads it followed: the others wait for it no longer (its pid may
        # be reused); its replacement does every load and unload before it listens.
        Path(self._directories[2], CONTROL_DONE, f"{process.pid}.json").unlink(missing_ok=True)
        if self._logs is not None:
            self._logs.forget(process.pid)  # and of the log settings it followed
        lived = time.monotonic() - self._started_at[index]
        self._failures[index] = 0 if lived >= STABLE_AFTER_S else self._failures[index] + 1
        wait = restart_delay(self._failures[index])
        log.warning("front end %d (pid %s) exited with %s after %.1f s; restarting in %.1f s",
                    index, process.pid, process.exitcode, lived, wait)
        deadline = time.monotonic() + wait
        while not self._stop and time.monotonic() < deadline:
            time.sleep(0.1)
            self._follow_logs()
        if self._stop:
            return
        try:
            self._start(index)
        except SurgeError as exc:  # tried again, with a longer wait, when its exit is seen
            log.error("front end %d did not restart: %s", index, exc)

    def _mark_dead(self, pid: int | None) -> None:
        """Drop a dead front end's live gauges (its counters keep counting toward the sums)."""
        if pid is None:
            return
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, self._metrics_dir)

    def _stop_all(self) -> None:
        """SIGTERM every front end (each drains), wait for them, kill what outlives the grace."""
        processes = [p for p in self._processes if p is not None and p.is_alive()]
        log.info("stopping %d front ends (grace %.0f s)", len(processes), self.options.grace_s)
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)  # type: ignore[arg-type]
        deadline = time.monotonic() + self.options.grace_s + 15.0
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("front end pid %s outlived the grace period: killed", process.pid)
                process.kill()
                process.join()


def remove_segments_of(pid: int | None) -> list[str]:
    """Remove the tensor segments a dead front end left in shared memory (killed, it could
    not): each holds its memory until removed, and the resource tracker that would remove them
    is the supervisor's, which does so only when the supervisor stops, so every SIGKILL of a
    front end kept its workers' segments for the server's life. Returns their names."""
    if pid is None:
        return []
    from multiprocessing import resource_tracker

    from surge.workers.transport import segment_prefix

    prefix, removed = segment_prefix(pid), []
    for path in SHM_ROOT.glob(f"{prefix}*"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            # The tracker registered it when the front end made it: forget it there, or it
            # tries the removal again at the supervisor's exit and warns.
            resource_tracker.unregister(f"/{path.name}", "shared_memory")
            removed.append(path.name)
    if removed:
        log.info("removed %d shared-memory segments of front end pid %d", len(removed), pid)
    return removed


def serve_frontends(repo: Path | str, options: ServeOptions,
                    on_started: Callable[[Endpoints], None] | None = None) -> None:
    """Serve `repo` from `options.frontends` processes sharing the ports, until a signal."""
    from surge.repository import Repository

    Repository(repo)  # a missing repository: one error here rather than one per front end
    Supervisor(repo, options, options.frontends).run(on_started)


__all__ = ["Supervisor", "frontend_count", "remove_segments_of", "restart_delay",
           "serve_frontends"]
