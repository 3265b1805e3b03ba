"""Measure a candidate for real: stage a one-model repository with the candidate's config, run
`surge serve` on it as a subprocess, and drive it with the built-in load generator.

Staging (hard links, not copies) keeps the user's config.yaml untouched until the selection is
final, and lets several configurations of one model be measured one after the other.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from surge.errors import ConfigError, SurgeError
from surge.repository.config import CONFIG_FILE, read_config, write_config
from surge.repository.repository import VARIANTS_DIR
from surge.server.process import read_endpoints
from surge.tempdirs import owned_tempdir
from surge.tuning.apply import apply_candidate
from surge.tuning.predict import Measurement
from surge.tuning.space import ORIGINAL, Candidate, Load

TUNING_DIR = "tuning"


def check_tuning_folder(model_dir: Path, files: tuple[str, ...]) -> None:
    """Refuse, before any work, a `tuning/` folder (or a file in it) that the report could not
    be written to: a file where the folder goes, a folder where a file goes, no permission."""
    folder = model_dir / TUNING_DIR
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} is a file, not a folder: the tuning report goes there; "
                          "move it away")
    for name in files:
        path = folder / name
        if path.is_dir():
            raise ConfigError(f"{path} is a folder, not a file: the tuning report writes it; "
                              "move it away")
        target = path if path.exists() else folder if folder.exists() else model_dir
        if not os.access(target, os.W_OK):
            raise ConfigError(f"cannot write {path} ({target} is not writable)")


class ServingTrialError(SurgeError):
    """The server for a candidate configuration did not start or the load run failed."""


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links not allowed
        shutil.copy2(src, dst)


def stage_model(model_dir: Path, candidate: Candidate, slo_p99_ms: float | None,
                stage_root: Path) -> Path:
    """A repository under `stage_root` holding only this model, configured as `candidate`."""
    target = stage_root / model_dir.name
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for entry in model_dir.iterdir():
        if entry.is_dir() and entry.name.isdigit():  # version directories
            shutil.copytree(entry, target / entry.name, copy_function=_link_or_copy)
    if candidate.variant != ORIGINAL:
        shutil.copytree(model_dir / VARIANTS_DIR / candidate.variant,
                        target / VARIANTS_DIR / candidate.variant, copy_function=_link_or_copy)
    config = read_config(model_dir / CONFIG_FILE)
    write_config(target / CONFIG_FILE, apply_candidate(config, candidate, slo_p99_ms))
    return stage_root


def stage_as_is(model_dir: Path, stage_root: Path) -> None:
    """`model_dir` under `stage_root` with its own config: a pipeline (its config.yaml alone)
    or another model of the pipeline a trial serves (versions, variants, config)."""
    target = stage_root / model_dir.name
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for entry in model_dir.iterdir():
        if entry.is_dir() and (entry.name.isdigit() or entry.name == VARIANTS_DIR):
            shutil.copytree(entry, target / entry.name, copy_function=_link_or_copy)
    shutil.copy2(model_dir / CONFIG_FILE, target / CONFIG_FILE)


def stage_pipeline(repo_root: Path, pipeline: str, tuned: str, stage_root: Path) -> None:
    """The pipeline and its models other than `tuned` (staged with its candidate's config)."""
    from surge.tuning.target import pipeline_models

    for name in [pipeline, *pipeline_models(repo_root, pipeline)]:
        if name != tuned:
            stage_as_is(repo_root / name, stage_root)


@dataclass
class RunningServer:
    url: str
    process: subprocess.Popen[bytes]
    startup_s: float


def _wait_ready(process: subprocess.Popen[bytes], endpoints: Path, model: str, timeout_s: float,
                log: Path) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise ServingTrialError(f"surge serve exited with {process.returncode}: "
                                    f"{' | '.join(tail) or 'no output'}")
        bound = read_endpoints(endpoints)
        url = bound.http if bound else None
        with contextlib.suppress(httpx.HTTPError):
            if url and httpx.get(f"{url}/v2/models/{model}/ready", timeout=1.0).status_code == 200:
                return url
        time.sleep(0.1)
    raise ServingTrialError(f"surge serve did not get {model!r} ready within {timeout_s:.0f} s")


@contextlib.contextmanager
def serving(repo: Path, model: str, timeout_s: float = 120.0) -> Iterator[RunningServer]:
    """`surge serve repo --models model` on loopback ports the system chooses (0, read back
    from its endpoints file: no port chosen here can be taken before the server binds it)
    until the block ends."""
    endpoints = repo / f"serve-{model}.endpoints.json"
    command = [sys.executable, "-c", "import sys; from surge.cli import main; main(sys.argv[1:])",
               "serve", str(repo), "--models", model, "--http-port", "0", "--grpc-port", "0",
               "--metrics-port", "0", "--endpoints-file", str(endpoints), "--grace", "2"]
    log = repo / f"serve-{model}.log"
    started = time.monotonic()
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    try:
        url = _wait_ready(process, endpoints, model, timeout_s, log)
        yield RunningServer(url, process, time.monotonic() - started)
    finally:
        _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the server drains), SIGKILL after 15 s; a second Ctrl-C or SIGTERM while it
    drains kills it at once rather than leaving it serving, orphaned, from a removed stage."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            _kill(process)
        except BaseException:  # KeyboardInterrupt or SystemExit: the tune still ends
            _kill(process)
            raise


def _kill(process: subprocess.Popen[bytes]) -> None:
    process.kill()
    process.wait()


def _payload_dataset(model_dir: Path) -> str | None:
    """The dataset the model's config names (`parameters.dataset`): requests carry its rows,
    so a served measurement computes on real inputs rather than random ones."""
    dataset = read_config(model_dir / CONFIG_FILE).parameters.get("dataset")
    return str(dataset) if dataset else None


@dataclass(frozen=True)
class ServedResult:
    """One real measurement and what it cost."""

    measurement: Measurement
    startup_s: float
    bench: dict[str, Any]


def measure_served(
    model_dir: Path, candidate: Candidate, load: Load, duration_s: float,
    slo_p99_ms: float | None = None, protocol: str = "http", warmup_s: float = 1.0,
    rung: str = "measured", pipeline: str | None = None,
) -> ServedResult:
    """Serve `candidate` and measure throughput and latency under `load` with `surge bench`;
    with `pipeline`, the model is one of its steps and the pipeline is served and loaded (with
    the rows of the pipeline's own `parameters.dataset`)."""
    from surge.bench import run_bench
    from surge.bench.loadgen import NoAnswerError

    served = pipeline or model_dir.name
    with owned_tempdir("surge-tune-") as tmp:
        stage = stage_model(model_dir, candidate, slo_p99_ms, Path(tmp))
        if pipeline is not None:
            stage_pipeline(model_dir.parent, pipeline, model_dir.name, stage)
        with serving(stage, served) as server:
            try:
                report = run_bench(server.url, served, load.concurrency or 1, duration_s,
                                   protocol, rate=load.rate, warmup_s=warmup_s,
                                   batch_size=load.rows,
                                   dataset=_payload_dataset(model_dir.parent / served))
            except NoAnswerError as exc:  # this configuration hung: it loses, the tune goes on
                raise ServingTrialError(str(exc)) from None
    run = report.runs[0]
    errors = sum(run.errors.values())
    measurement = Measurement(run.throughput, run.p99_ms, rung=rung, errors=errors,
                              p50_ms=run.p50_ms, p90_ms=run.p90_ms)
    return ServedResult(measurement, server.startup_s, report.to_dict())
