"""`surge train`: validate the recipe, then run it here (one process) or under torchrun.

Everything that can be checked before a process starts is checked here, so a bad config costs
one line of error instead of N crashed workers.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from surge.errors import ConfigError, SurgeError, first_line, shown
from surge.kinds import is_integer, is_number
from surge.platform import available_cores
from surge.repository.repository import check_name
from surge.tasks import get_task
from surge.train.checkpoint import check_epochs, latest_checkpoint, read_trainer
from surge.train.config import TrainConfig, dump_train_config
from surge.train.distributed import pick_device
from surge.train.parallel import build_model, resolve_split
from surge.train.precision import check_precision
from surge.train.runlock import run_lock
from surge.train.supervision import DIVERGED_ENV, DIVERGED_FILE, JOIN_TIMED_OUT, read_diverged

RESOLVED_CONFIG = "config.yaml"


@dataclass(frozen=True)
class LaunchOptions:
    """How many processes on how many machines, and how to recover from failures. Checked
    when built (one line naming the value); `validate` checks that the --rdzv host resolves."""

    nproc: int = 1
    nnodes: int = 1
    node_rank: int | None = None
    rdzv: str | None = None
    max_restarts: int = 0
    resume: bool = False
    join_timeout_s: float = 600.0  # torchrun's own default for the c10d rendezvous

    def __post_init__(self) -> None:
        _check_types(self)
        if self.nproc < 1 or self.nnodes < 1:
            raise ConfigError(f"--nproc {self.nproc} and --nnodes {self.nnodes} must be >= 1")
        if self.max_restarts < 0:
            raise ConfigError(f"--max-restarts {self.max_restarts} must be >= 0")
        if self.nnodes > 1 and not self.rdzv:
            raise ConfigError("--nnodes > 1 needs --rdzv host:port (the rendezvous endpoint)")
        if self.node_rank is not None and not 0 <= self.node_rank < self.nnodes:
            raise ConfigError(f"--node-rank {self.node_rank} must be in [0, {self.nnodes})")
        if self.rdzv is not None:
            _host_port(self.rdzv)  # its form only: resolving the host is `validate`'s

    @property
    def world_size(self) -> int:
        return self.nproc * self.nnodes

    @property
    def in_process(self) -> bool:
        """One process and nothing to restart: no torchrun needed."""
        return self.world_size == 1 and self.max_restarts == 0


def _check_types(options: LaunchOptions) -> None:
    """Values of the right kind (`True` would read as 1, 2.0 as a count), and a timeout that
    ends (torchrun would take NaN or inf for no timeout, or fail with a traceback)."""
    counts = {"--nproc": options.nproc, "--nnodes": options.nnodes,
              "--max-restarts": options.max_restarts}
    if options.node_rank is not None:
        counts["--node-rank"] = options.node_rank
    for option, value in counts.items():
        if not is_integer(value):
            raise ConfigError(f"{option} {value!r}: give a whole number (an int)")
    timeout = options.join_timeout_s
    if not is_number(timeout) or not 0 < timeout < math.inf:
        shown_value = f"{timeout:g}" if is_number(timeout) else repr(timeout)
        raise ConfigError(f"--join-timeout {shown_value}: give the seconds every machine has to "
                          "join the rendezvous, a positive number")
    if options.rdzv is not None and not isinstance(options.rdzv, str):
        raise ConfigError(f"--rdzv {options.rdzv!r}: give host:port as a str")
    if not isinstance(options.resume, bool):
        raise ConfigError(f"resume {options.resume!r}: give True or False")


def _check_options(options: LaunchOptions) -> None:
    """What is too slow to check when the options are built: a network lookup."""
    if options.rdzv:
        _check_resolves(*_host_port(options.rdzv))


def _check_resolves(host: str, port: int) -> None:
    """torchrun retries a rendezvous host that does not resolve for many minutes."""
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise ConfigError(f"--rdzv {host}:{port}: the host {host!r} does not resolve "
                          f"({reason})") from None


def _warn_oversubscribed(device: torch.device, nproc: int, cores: int) -> None:
    """More CPU processes than cores trains, but each step waits for the slowest process."""
    if device.type == "cpu" and nproc > cores:
        print(f"warning: --nproc {nproc} on {cores} available core(s): the processes share "
              f"cores and train slower than --nproc {cores} would", file=sys.stderr)


def _check_gpus_per_process(device: torch.device, nproc: int, gpus: int) -> None:
    """NCCL allows one rank per GPU: --nproc on a CUDA machine may not exceed its GPUs."""
    if device.type == "cuda" and nproc > gpus:
        raise ConfigError(
            f"--nproc {nproc}: this machine has {gpus} CUDA device(s) and each process needs its "
            f"own; pass --nproc {gpus} or device=cpu")


def _host_port(endpoint: str) -> tuple[str, int]:
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--rdzv {endpoint!r} must look like host:port")
    return host, int(port)


def _check_batch(config: TrainConfig, world: int) -> None:
    mode, batch = config.parallelism, config.batch_size
    if mode == "none" and world > 1:
        raise ConfigError(f"parallelism none runs one process, but {world} were asked for; "
                          "use parallelism=ddp, fsdp or pipeline")
    if mode in ("ddp", "fsdp"):
        if world > batch:
            raise ConfigError(f"{world} processes but batch_size {batch}: each process needs at "
                              "least one sample of the global batch")
        if batch % world:
            raise ConfigError(f"batch_size {batch} does not split evenly over {world} processes")
    if mode == "pipeline":
        micro = config.pipeline.microbatches
        if micro > batch or batch % micro:
            raise ConfigError(f"batch_size {batch} does not split into pipeline.microbatches "
                              f"{micro} equal micro-batches")
        if config.pipeline.schedule == "1f1b" and micro < world:
            raise ConfigError(f"pipeline.schedule 1f1b needs pipeline.microbatches >= the "
                              f"{world} stages (got {micro})")


def _check_data(config: TrainConfig) -> None:
    """The dataset is known and its files are there (each reader says what it needs)."""
    from surge.train.data import data_options, dataset_of

    dataset_of(config.data).check(data_options(config.data, config.model.input_shape, config.seed))


def _check_directory(key: str, value: str) -> None:
    """`value` is a directory or can become one: no part of it that exists is a file, and no
    link on the way leads back to itself (Python 3.11 resolves such a loop with a
    RuntimeError: a traceback where the run's folders are compared and locked)."""
    path = Path(value)
    try:
        path.resolve()
    except RuntimeError:
        raise ConfigError(f"{key} {shown(value)}: a symlink loop (a link that leads back to "
                          "itself): remove the link or give another folder") from None
    for part in (path, *path.parents):
        if part.exists():
            if not part.is_dir():
                where = "" if part == path else f" ({part} is a file)"
                raise ConfigError(f"{key} {shown(value)}: not a directory{where}")
            return


def _check_paths(config: TrainConfig, options: LaunchOptions) -> None:
    """Where the run writes can hold directories, --resume has a checkpoint to resume from,
    and the export replaces no model unless asked to."""
    from surge.train.publish import check_target

    _check_directory("log_dir", config.log_dir)
    _check_directory("checkpoint.dir", config.checkpoint.dir)
    if options.resume:
        _check_resumable(config)
    if config.export.repo is not None:
        _check_directory("export.repo", config.export.repo)
        _check_outside_repo(config, Path(config.export.repo).resolve())
        check_name(config.export.name)
        if config.export.torch_name:
            check_name(config.export.torch_name)
        check_target(config)


def _check_outside_repo(config: TrainConfig, repo: Path) -> None:
    """The run's folders are not in the model repository it exports to: there its epochs
    were listed as models (or a version folder without a model file), and `surge serve`
    refused or skipped them."""
    for key, value in (("checkpoint.dir", config.checkpoint.dir), ("log_dir", config.log_dir)):
        folder = Path(value).resolve()
        if folder == repo or repo in folder.parents:
            raise ConfigError(f"{key} {shown(value)} lies in export.repo "
                              f"{shown(config.export.repo)}, which would list the run's files "
                              "as models: give the run a folder outside the repository")


def _check_resumable(config: TrainConfig) -> None:
    """--resume has a checkpoint to resume from, of no more epochs than the recipe's (the
    ranks would each refuse it, inside torchrun's failure report)."""
    checkpoint = latest_checkpoint(Path(config.checkpoint.dir))
    if checkpoint is None:
        raise ConfigError(f"--resume: no checkpoint in checkpoint.dir "
                          f"{shown(config.checkpoint.dir)} (no latest.json there); drop --resume "
                          "to start a new run")
    check_epochs(checkpoint, read_trainer(checkpoint / "trainer.json"), config.epochs)


def validate(config: TrainConfig, options: LaunchOptions) -> None:
    """Raise ConfigError (one line) for anything that would make the workers fail at start."""
    _check_options(options)
    world = options.world_size
    _check_batch(config, world)
    device = pick_device(config.device, 0)
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda: no CUDA device is visible")
    _check_gpus_per_process(device, options.nproc, torch.cuda.device_count())
    _warn_oversubscribed(device, options.nproc, available_cores())
    check_precision(config.precision, device)
    if config.parallelism == "pipeline" and config.precision == "fp16":
        raise ConfigError("precision fp16 is not supported with parallelism pipeline; use bf16")
    get_task(config.task).trained_metric()
    _check_data(config)
    _check_paths(config, options)
    model = _built_model(config)
    if config.parallelism == "pipeline":
        resolve_split(model, config.pipeline, world)
    if not options.in_process:  # in process, the recipe checks it before its first step
        _check_model_fits(model, config)


def _check_model_fits(model: torch.nn.Module, config: TrainConfig) -> None:
    """The recipe's check that the model takes its data, made once here: in the ranks it
    failed in every one, inside torchrun's failure report."""
    from surge.train.data import check_model_fits, load_dataset

    train, test = load_dataset(config.data, config.model.input_shape, config.seed)
    check_model_fits(model, config, train, test)


def _built_model(config: TrainConfig) -> torch.nn.Module:
    """The recipe's model, built once here: a builder that refuses its `model.kwargs` (an
    unknown name, a negative width) is a recipe error, not a traceback in every rank."""
    try:
        return build_model(config.model, config.seed)
    except SurgeError as exc:
        raise ConfigError(f"model.builder: {exc}") from None
    except Exception as exc:  # the builder is the recipe's own code: any refusal is its own
        reason = first_line(exc)
        raise ConfigError(f"model.builder {config.model.builder!r} with model.kwargs "
                          f"{shown(config.model.kwargs)}: {type(exc).__name__}: {reason}"
                          ) from None


def torchrun_command(config_path: Path, options: LaunchOptions) -> list[str]:
    """The line that starts this machine's workers: torchrun, through `surge.train.agent`."""
    command = [sys.executable, "-m", "surge.train.agent",
               f"--nproc-per-node={options.nproc}", f"--max-restarts={options.max_restarts}"]
    # torchrun takes whole seconds; rounded up, so that 0.5 stays a timeout.
    seconds = math.ceil(options.join_timeout_s)
    if options.rdzv is None:
        command.append("--standalone")
    elif options.node_rank is not None:
        # Static rendezvous: fixed node ranks, node 0 hosts the store at host:port; its
        # `timeout` bounds the wait for the other nodes (and the store's operations).
        host, port = _host_port(options.rdzv)
        command += [f"--nnodes={options.nnodes}", f"--node-rank={options.node_rank}",
                    f"--master-addr={host}", f"--master-port={port}",
                    f"--rdzv-conf=timeout={seconds}"]
    else:
        # Dynamic (c10d) rendezvous: node ranks are assigned as machines join.
        command += [f"--nnodes={options.nnodes}", "--rdzv-backend=c10d",
                    f"--rdzv-endpoint={options.rdzv}", "--rdzv-id=surge-train",
                    f"--rdzv-conf=join_timeout={seconds}"]
    command += ["-m", "surge.train.rank", str(config_path)]
    return [*command, "--resume"] if options.resume else command


def launch(config: TrainConfig, options: LaunchOptions) -> None:
    """Validate, then train here or under torchrun; raise SurgeError if the run fails."""
    validate(config, options)
    # Machines of one run share its folders; on one machine a second run there is refused.
    with run_lock(config) if options.nnodes == 1 else contextlib.nullcontext():
        _run(config, options)


def _run(config: TrainConfig, options: LaunchOptions) -> None:
    if options.in_process:
        from surge.train.recipe import run

        run(config, resume=options.resume)
        return
    # The workers read the resolved config, so overrides need no second parse.
    path = dump_train_config(config, Path(config.log_dir) / RESOLVED_CONFIG)
    marker = Path(config.log_dir) / DIVERGED_FILE
    marker.unlink(missing_ok=True)  # an earlier run's: it must not stop this one
    code = run_torchrun(torchrun_command(path, options), marker)
    if code != 0:
        raise _failure(code, options, marker)


def _failure(code: int, options: LaunchOptions, marker: Path) -> SurgeError:
    """Why torchrun failed, in one line."""
    diverged = read_diverged(marker)
    if diverged is not None:
        from surge.train.recipe import DivergedError

        rank, message = diverged
        restarts = (f" (not restarted: with --max-restarts {options.max_restarts} it would only "
                    "diverge again)" if options.max_restarts else "")
        return DivergedError(f"training diverged on rank {rank}{restarts}: {message}")
    if code == JOIN_TIMED_OUT:
        timeout, seconds = options.join_timeout_s, math.ceil(options.join_timeout_s)
        return SurgeError(
            f"--join-timeout {timeout:g}: not all {options.nnodes} machines joined the rendezvous "
            f"at {options.rdzv} within {seconds} s; start `surge train` with the same --nnodes "
            "and --rdzv on each of them, or give them a longer --join-timeout")
    return SurgeError(f"training failed: torchrun exited with status {code} "
                      "(the failing rank's error is above)")


TORCHRUN_STOP_S = 60.0  # time torchrun gets to stop its ranks before it is killed
DIVERGED_POLL_S = 0.2  # how often the divergence marker is looked for


def run_torchrun(command: list[str], diverged: Path | None = None) -> int:
    """torchrun's exit status. When this process is stopped (Ctrl-C, or SIGTERM through
    `exit_on_sigterm`), torchrun is sent SIGTERM and waited for: it stops its ranks, which
    would otherwise keep training, orphaned, and export when done. So is torchrun when a rank
    writes the file `diverged` (torchrun would restart the workers, to diverge again)."""
    env = None if diverged is None else {**os.environ, DIVERGED_ENV: str(diverged)}
    process = subprocess.Popen(command, env=env)
    try:
        while True:
            try:
                return process.wait(timeout=DIVERGED_POLL_S)
            except subprocess.TimeoutExpired:
                if diverged is not None and diverged.exists():
                    _stop(process)
                    return process.returncode
    except BaseException:
        _stop(process)
        raise


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=TORCHRUN_STOP_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
