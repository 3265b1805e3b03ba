"""The Python API: what each `surge` command calls, importable as `surge.serve`, `surge.tune`, ...

The CLI parses its options into the option objects below, calls one of these functions and
prints what it returns; scripts and notebooks call the same functions directly.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from surge.errors import SurgeError

if TYPE_CHECKING:
    from rich.progress import Progress

    from surge.evaluate.harness import EvalReport
    from surge.optimize.pipeline import OptimizeOptions, Outcome
    from surge.server.process import Endpoints, ServeOptions
    from surge.train import LaunchOptions, TrainConfig
    from surge.tuning.tune import TuneOptions, TuningReport

STARTUP_TIMEOUT_S = 120.0


def serve(repo: Path | str, options: ServeOptions | None = None,
          on_started: Callable[[Endpoints], None] | None = None) -> None:
    """Serve every model of `repo` over V2 HTTP, gRPC and metrics until SIGTERM/SIGINT, then
    drain accepted requests and return (blocks; see `start_server` for the background)."""
    from surge.server.process import serve as serve_until_signal

    serve_until_signal(repo, options, on_started)


def start_server(repo: Path | str, options: ServeOptions | None = None,
                 timeout_s: float = STARTUP_TIMEOUT_S) -> BackgroundServer:
    """Serve `repo` from a background thread of this process; returns once every model is
    ready. Use it as a context manager, or call `stop()`."""
    server = BackgroundServer(repo, options)
    server.start(timeout_s)
    return server


class BackgroundServer:
    """The server of `surge serve` on its own event loop in a daemon thread. No signal
    handlers: those belong to the main thread, and `stop()` drains instead."""

    def __init__(self, repo: Path | str, options: ServeOptions | None = None) -> None:
        from surge.server.process import ServeOptions

        self.repo = Path(repo)
        self.options = options or ServeOptions()
        self._endpoints: Future[Endpoints] = Future()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="surge-server", daemon=True)

    @property
    def endpoints(self) -> Endpoints:
        return self._endpoints.result(timeout=0)

    def start(self, timeout_s: float = STARTUP_TIMEOUT_S) -> Endpoints:
        self._thread.start()
        try:
            return self._endpoints.result(timeout=timeout_s)
        except TimeoutError:
            self.stop()
            raise SurgeError(f"the server did not start within {timeout_s:g} s") from None

    def stop(self) -> None:
        """Refuse new work, finish what was accepted (within the grace period), stop."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread.ident is not None:  # started
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

    async def _serve(self) -> None:
        from surge.engine import Engine
        from surge.repository import Repository
        from surge.server.process import SurgeServer, started_unless_stopped

        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
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
    from surge.tuning.tune import tune as run_tune

    return run_tune(Path(repo), model, options, progress, on_stage)


def optimize(repo: Path | str, model: str, variants: str | Mapping[str, Any],
             options: OptimizeOptions | None = None) -> list[Outcome]:
    """Make each variant (`surge optimize` names like "int8-static,prune-50", or name ->
    optimize config), check it against the original, keep those within tolerance."""
    from surge.optimize import parse_variants
    from surge.optimize.pipeline import optimize_model

    configs = parse_variants(variants) if isinstance(variants, str) else dict(variants)
    return optimize_model(Path(repo), model, configs, options)


def train(recipe: Path | str | TrainConfig, overrides: Sequence[str] = (),
          options: LaunchOptions | None = None) -> None:
    """Train from a recipe (a YAML path with `key=value` overrides, or a parsed TrainConfig)
    in this process or under torchrun; raises SurgeError if the run fails."""
    from surge.train import LaunchOptions, launch, load_train_config

    if isinstance(recipe, str | Path):
        recipe = load_train_config(recipe, list(overrides))
    elif overrides:
        raise SurgeError("overrides apply to a recipe file, not to a parsed TrainConfig")
    launch(recipe, options or LaunchOptions())


def evaluate(repo: Path | str, model: str, data: str, task: str = "classification", *,
             metric: str | None = None, samples: int | None = None,
             progress: Progress | None = None) -> EvalReport:
    """Score `model` (or `model@variant`) of `repo` on `data`: 'fashion-mnist', an .npz of
    inputs and labels, or a detection .npz with its COCO .json. `samples` keeps the first N."""
    from surge.evaluate.harness import evaluate as run_evaluate
    from surge.evaluate.harness import load_dataset
    from surge.repository import Repository

    loaded = Repository(repo).load(model)
    dataset = load_dataset(data, loaded.signature.input_names[0])
    if samples is not None:
        dataset = dataset.subset(samples)
    return run_evaluate(loaded, dataset, task, progress=progress, metric=metric)
