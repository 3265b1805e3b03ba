"""The Python API: what each `surge` command calls, importable as `surge.serve`, `surge.tune`, ...

The CLI parses its options into the option objects below, calls one of these functions and
prints what it returns; scripts and notebooks call the same functions directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from surge.errors import SurgeError
from surge.kinds import is_integer, is_number

if TYPE_CHECKING:
    from rich.progress import Progress

    from surge.evaluate.harness import EvalReport
    from surge.optimize.pipeline import OptimizeOptions, Outcome
    from surge.server.process import Endpoints, ServeOptions
    from surge.tasks import Task
    from surge.train import LaunchOptions, TrainConfig
    from surge.tuning.tune import TuneOptions, TuningReport

STARTUP_TIMEOUT_S = 120.0


def serve(repo: Path | str, options: ServeOptions | None = None,
          on_started: Callable[[Endpoints], None] | None = None) -> None:
    """Serve every model of `repo` over V2 HTTP, gRPC and metrics until SIGTERM/SIGINT, then
    drain accepted requests and return (blocks; see `start_server` for the background).
    Refuses a repository with no model unless `options.production.model_control` is set, as
    `surge serve` does without --model-control."""
    from surge.server.process import ServeOptions
    from surge.server.process import serve as serve_until_signal
    from surge.server.serve_checks import check_has_models

    path = repository_path(repo)
    options = checked_options(options, ServeOptions, "ServeOptions(http_port=0)")
    if on_started is not None and not callable(on_started):  # called only once listening
        raise SurgeError(f"on_started {on_started!r}: give a function taking the Endpoints, "
                         "or None")
    if threading.current_thread() is not threading.main_thread():  # signal handlers: main's
        raise SurgeError("surge.serve waits for SIGTERM or Ctrl-C, which only the main thread "
                         "can catch: from another thread, use surge.start_server(...) and "
                         "its stop()")
    check_has_models(path, options)
    serve_until_signal(path, options, on_started)


def start_server(repo: Path | str, options: ServeOptions | None = None,
                 timeout_s: float = STARTUP_TIMEOUT_S) -> BackgroundServer:
    """Serve `repo` from a background thread of this process; returns once every model is
    ready. Use it as a context manager, or call `stop()`. Refuses a repository with no model
    unless `options.production.model_control` is set, as `surge serve` does."""
    server = BackgroundServer(repo, options)
    server.start(timeout_s)
    return server


def repository_path(repo: Any, what: str = "repository") -> Path:
    """`repo` as a Path: a str or a Path, nothing else (None would read as no folder)."""
    if not isinstance(repo, str | Path) or not str(repo).strip():
        raise SurgeError(f"{what} {repo!r}: give a path, as a str or a Path")
    return Path(repo)


def checked_options(options: Any, kind: type, example: str, *, required: bool = False) -> Any:
    """`options` when it is a `kind`; None gives `kind`'s defaults unless it is `required`."""
    if options is None and not required:
        return kind()
    if not isinstance(options, kind):
        raise SurgeError(f"options {options!r}: give a surge.{kind.__name__}, e.g. "
                         f"surge.{example}")
    return options


def model_name(model: Any) -> str:
    if not isinstance(model, str) or not model.strip():
        raise SurgeError(f"model {model!r}: give the name of a model of the repository")
    return model


def checked_progress(progress: Any) -> Progress | None:
    """`progress` when it is a rich Progress (or None): anything else failed mid-run."""
    from rich.progress import Progress

    if progress is not None and not isinstance(progress, Progress):
        raise SurgeError(f"progress {progress!r}: give a rich.progress.Progress, or None")
    return progress


def _dataset_spec(data: Any) -> str | Path:
    if not isinstance(data, str | Path):
        raise SurgeError(f"data {data!r}: give a dataset name such as 'fashion-mnist', or the "
                         "path of an .npz file or split folder")
    return data


def _task(task: Any) -> Task:
    """The task, resolved before the model and dataset load: a bad name fails at once."""
    from surge.tasks import Task, get_task

    if not isinstance(task, str | Task):
        raise SurgeError(f"task {task!r}: give a task name such as 'classification' (`surge "
                         "data list`), a 'package.module:Class' or a surge.tasks.Task")
    return get_task(task)


def _in_process_options(options: ServeOptions) -> ServeOptions:
    """What a server in this process can do: several front-end processes and a Ray cluster
    are `surge.serve`'s (they were ignored, serving one local front end instead)."""
    if options.frontends > 1:
        raise SurgeError(f"frontends {options.frontends}: a BackgroundServer serves from this "
                         "process; several front-end processes need surge.serve (or `surge "
                         "serve --frontends N`)")
    if options.ray_address is not None:
        raise SurgeError(f"ray_address {options.ray_address!r}: a BackgroundServer runs its "
                         "instances in this machine's worker processes; serving from a Ray "
                         "cluster needs surge.serve (or `surge serve --ray ADDRESS`)")
    return options


def _check_timeout(timeout_s: Any) -> float:
    if not is_number(timeout_s) or not 0 < timeout_s < float("inf"):
        raise SurgeError(f"timeout_s {timeout_s!r}: give the seconds to wait for the server "
                         f"to start, a positive number (default {STARTUP_TIMEOUT_S:g})")
    # past the lock's limit (292 years) a wait raised OverflowError: that long is as good
    return float(min(timeout_s, threading.TIMEOUT_MAX))


class BackgroundServer:
    """The server of `surge serve` on its own event loop in a daemon thread. No signal
    handlers: those belong to the main thread, and `stop()` drains instead. A server starts
    once; `stop()` may be called at any time, and again."""

    def __init__(self, repo: Path | str, options: ServeOptions | None = None) -> None:
        from surge.server.process import ServeOptions

        self.repo = repository_path(repo)
        self.options = _in_process_options(
            checked_options(options, ServeOptions, "ServeOptions(http_port=0)"))
        self._endpoints: Future[Endpoints] = Future()
        self._lock = threading.Lock()  # orders stop() against the loop's start
        self._stopping = False
        self._started = False  # set by the start() that claims it, under _lock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="surge-server", daemon=True)

    @property
    def endpoints(self) -> Endpoints:
        if self._stopping:
            raise SurgeError("the server is stopped: start a new one")
        if not self._endpoints.done():
            raise SurgeError("the server is not listening yet: call start() first")
        return self._endpoints.result()

    def start(self, timeout_s: float = STARTUP_TIMEOUT_S) -> Endpoints:
        """Start serving; on failure, timeout or KeyboardInterrupt it stops what it started."""
        from surge.server.process import configure_logging
        from surge.server.serve_checks import check_has_models

        timeout_s = _check_timeout(timeout_s)
        self._claim_start()
        try:
            check_has_models(self.repo, self.options)  # before any port is bound, as serve's
        except BaseException:
            with self._lock:
                self._started = False  # nothing ran: this server may be started again
            raise
        if self.options.log_level is not None:  # as surge.serve: the server's own log
            configure_logging(self.options.log_level)
        self._thread.start()
        try:
            return self._endpoints.result(timeout=timeout_s)
        except TimeoutError:
            self.stop()
            raise SurgeError(f"the server did not start within {timeout_s:g} s") from None
        except BaseException:
            self.stop()
            raise

    def _claim_start(self) -> None:
        """Mark this server started; a second start(), even from another thread at the same
        moment, is refused here rather than by Thread.start()'s RuntimeError."""
        with self._lock:
            if self._started:
                raise SurgeError("this server was started already: a BackgroundServer starts "
                                 "once (make a new one to serve again)")
            if self._stopping:
                raise SurgeError("this server was stopped before it started: make a new one "
                                 "to serve")
            self._started = True

    def stop(self) -> None:
        """Refuse new work, finish what was accepted (within the grace period), stop."""
        with self._lock:
            self._stopping = True
            loop, event = self._loop, self._stop
        if loop is not None and event is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed already
                loop.call_soon_threadsafe(event.set)
        if self._thread.ident is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reaches the caller of start(), not a dead thread
            if not self._endpoints.done():
                self._endpoints.set_exception(exc)
        if not self._endpoints.done():
            self._endpoints.set_exception(SurgeError("the server was stopped as it started"))

    async def _serve(self) -> None:
        from surge.engine import Engine
        from surge.repository import Repository
        from surge.server.process import SurgeServer, started_unless_stopped

        with self._lock:  # a stop() before this point is seen here, one after it sets _stop
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            if self._stopping:
                return
        models = list(self.options.models) if self.options.models else None
        engine = Engine(Repository(self.repo), models=models, residency=self.options.residency)
        server = SurgeServer(engine, self.options)
        try:
            endpoints = await started_unless_stopped(server, self._stop)
            if endpoints is None:  # stop() while models loaded: start() gave up waiting
                return
            self._endpoints.set_result(endpoints)
            await self._stop.wait()
        finally:
            await server.drain()


def tune(repo: Path | str, model: str, options: TuneOptions, progress: Progress | None = None,
         on_stage: Callable[[str], None] | None = None) -> TuningReport:
    """optimize (if the model has no variants) -> evaluate -> profile -> select -> write the
    chosen configuration into config.yaml; returns the report (also saved as JSON)."""
    from surge.tuning.tune import TuneOptions
    from surge.tuning.tune import tune as run_tune

    example = ("TuneOptions(data='fashion-mnist', task='classification', "
               "slo=surge.Slo(20.0, surge.Load(rate=100)))")
    options = checked_options(options, TuneOptions, example, required=True)
    if on_stage is not None and not callable(on_stage):
        raise SurgeError(f"on_stage {on_stage!r}: give a function taking the stage's name, "
                         "or None")
    return run_tune(repository_path(repo), model_name(model), options,
                    checked_progress(progress), on_stage)


def optimize(repo: Path | str, model: str, variants: str | Mapping[str, Any],
             options: OptimizeOptions | None = None) -> list[Outcome]:
    """Make each variant (`surge optimize` names like "int8-static,prune-50", or name ->
    optimize config), check it against the original, keep those within tolerance."""
    from surge.optimize import parse_variants
    from surge.optimize.pipeline import OptimizeOptions, optimize_model

    if not isinstance(variants, str | Mapping):
        raise SurgeError(f"variants {variants!r}: give names like 'int8-static,prune-50', or "
                         "a mapping of name -> optimize config")
    configs = parse_variants(variants) if isinstance(variants, str) else dict(variants)
    options = checked_options(options, OptimizeOptions, "OptimizeOptions()")
    return optimize_model(repository_path(repo), model_name(model), configs, options)


def train(recipe: Path | str | TrainConfig, overrides: Sequence[str] = (),
          options: LaunchOptions | None = None) -> None:
    """Train from a recipe (a YAML path with `key=value` overrides, or a parsed TrainConfig)
    in this process or under torchrun; raises SurgeError if the run fails."""
    from surge.train import LaunchOptions, TrainConfig, launch, load_train_config

    if not isinstance(overrides, Sequence) or isinstance(overrides, str) or not all(
            isinstance(item, str) for item in overrides):
        raise SurgeError(f"overrides {overrides!r}: give a list of 'key=value' strings, e.g. "
                         "['epochs=1']")
    options = checked_options(options, LaunchOptions, "LaunchOptions(nproc=2)")
    if isinstance(recipe, str | Path):
        recipe = load_train_config(repository_path(recipe, "recipe"), list(overrides))
    elif overrides:
        raise SurgeError("overrides apply to a recipe file, not to a parsed TrainConfig")
    elif not isinstance(recipe, TrainConfig):
        raise SurgeError(f"recipe {recipe!r}: give a recipe's YAML path or a TrainConfig")
    launch(recipe, options)


def evaluate(repo: Path | str, model: str, data: str | Path,
             task: str | Task = "classification", *, metric: str | None = None,
             samples: int | None = None, progress: Progress | None = None) -> EvalReport:
    """Score `model` (or `model@variant`) of `repo` on `data`: 'fashion-mnist', an .npz of
    inputs and labels, or a detection .npz with its COCO .json. `samples` keeps the first N."""
    from surge.evaluate.harness import evaluate as run_evaluate
    from surge.evaluate.harness import load_dataset
    from surge.repository import Repository

    if samples is not None and (not is_integer(samples) or samples < 1):
        raise SurgeError(f"samples {samples!r}: give a positive number of samples, or None "
                         "for all")
    name, spec, progress = model_name(model), _dataset_spec(data), checked_progress(progress)
    scored_by = _task(task)
    scored_by.check_metric(metric)
    loaded = Repository(repository_path(repo)).load(name)
    dataset = load_dataset(spec, loaded.signature.input_names[0])
    if samples is not None:
        dataset = dataset.subset(samples)
    return run_evaluate(loaded, dataset, scored_by, progress=progress, metric=metric)
