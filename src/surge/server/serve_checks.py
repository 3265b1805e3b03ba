"""The checks of `ServeOptions`, run as it is made: `surge serve` and the Python API
(`surge.serve`, `surge.start_server`) refuse the same values with the same message, before
any port is bound or any model loads."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from surge.errors import SurgeError
from surge.kinds import is_integer, is_number

if TYPE_CHECKING:
    from surge.repository import Repository
    from surge.server.process import ServeOptions

# ConnectionLimits' timeouts and the `surge serve` options that set them
LIMIT_OPTIONS = {"idle_timeout_s": "--idle-timeout", "header_timeout_s": "--header-timeout",
                 "body_timeout_s": "--body-timeout"}


def check_port(option: str, port: Any) -> None:
    if not is_integer(port) or not 0 <= port <= 65535:
        raise SurgeError(f"{option} {port!r}: use a port number from 0 to 65535 (0: any free "
                         "port)")


def check_grace(grace_s: Any) -> None:
    if not is_number(grace_s) or not 0 <= grace_s < math.inf:
        raise SurgeError(f"--grace {grace_s!r}: give the seconds a drain waits, a finite "
                         "number >= 0")


def check_models(models: Any) -> tuple[str, ...] | None:
    """The names to serve as a tuple (a list is taken too); a bare string would be read as its
    letters, and an empty selection would serve every model."""
    if models is None:
        return None
    if isinstance(models, str) or not isinstance(models, tuple | list):
        raise SurgeError(f"--models {models!r}: give the model names as a tuple, e.g. "
                         "('a', 'b')")
    if not models:
        raise SurgeError(f"--models {models!r} names no model (None serves them all)")
    for name in models:
        if not isinstance(name, str) or not name.strip():
            raise SurgeError(f"--models {models!r}: {name!r} is not a model name")
    return tuple(models)


def check_limits(limits: Any) -> None:
    from surge.server.limits import ConnectionLimits

    if not isinstance(limits, ConnectionLimits):
        raise SurgeError(f"limits {limits!r}: give a surge.server.limits.ConnectionLimits")
    for name, option in LIMIT_OPTIONS.items():
        value = getattr(limits, name)
        if not is_number(value) or not value > 0:  # NaN too
            raise SurgeError(f"{option} {value!r}: give a positive number of seconds")


def check_kinds(options: ServeOptions) -> None:
    """The option objects and plain values that must have their own type."""
    from surge.engine.ondemand import ResidencyOptions
    from surge.server.production import ProductionOptions

    for name, kind in (("residency", ResidencyOptions), ("production", ProductionOptions)):
        value = getattr(options, name)
        if not isinstance(value, kind):
            raise SurgeError(f"{name} {value!r}: give a {kind.__module__}.{kind.__name__}")
    if not isinstance(options.host, str):
        raise SurgeError(f"--host {options.host!r}: give the address to bind as a string")
    if options.api_key is not None and not isinstance(options.api_key, str):
        raise SurgeError(f"--api-key {options.api_key!r}: give the key as a string")
    ray = options.ray_address
    if ray is not None and (not isinstance(ray, str) or not ray.strip()):
        raise SurgeError(f"--ray {ray!r}: give the cluster's host:port, or 'auto'")
    if not isinstance(options.reuse_port, bool):
        raise SurgeError(f"--reuse-port {options.reuse_port!r}: give True or False")


def check_sizes(options: ServeOptions) -> None:
    """The body limit and the number of front ends (the latter by `--frontends`' own check)."""
    from surge.server.frontends import frontend_count

    size = options.max_body_bytes
    if not is_integer(size) or size < 1:
        raise SurgeError(f"max_body_bytes {size!r}: give the largest request body as a "
                         "positive number of bytes (--max-body-mb: MiB)")
    if not is_integer(options.frontends):
        raise SurgeError(f"--frontends {options.frontends!r}: give a positive number of "
                         "front-end processes")
    frontend_count(options.frontends)


def check_serve_options(options: ServeOptions) -> tuple[str, ...] | None:
    """Every value `options` holds, checked; returns the models to serve as a tuple."""
    check_kinds(options)
    for kind in ("http", "grpc", "metrics"):
        check_port(f"--{kind}-port", getattr(options, f"{kind}_port"))
    check_grace(options.grace_s)
    check_sizes(options)
    check_limits(options.limits)
    return check_models(options.models)


NO_MODEL = ("no model to serve: a model is a folder NAME/ holding a config.yaml, or a version "
            "folder such as NAME/1/ with its model file (to start without models and add them "
            "while serving, give --model-control poll or explicit)")


def check_has_models(repo: Path, options: ServeOptions) -> list[str] | None:
    """Refuse, before any port is bound, a repository with no model: `surge serve` and the
    Python API alike; returns the models found (None: not checked). Not when a model-control
    mode was chosen (`ProductionOptions.model_control` set; `surge serve --model-control` or
    `--poll-interval`): models may then be added while serving, as in Triton's explicit mode.
    A missing repository is the server's to report."""
    if options.production.model_control is not None or not repo.is_dir():
        return None
    return model_names(repo)


def model_names(repo: Path) -> list[str]:
    """The folders of `repo` laid out as models; SurgeError when there is none."""
    from surge.repository import Repository

    repository = Repository(repo)
    names = [name for name in repository.model_names() if _is_model(repository, name)]
    if not names:
        raise SurgeError(f"{repo}: {NO_MODEL}")
    return names


def _is_model(repository: Repository, name: str) -> bool:
    """Whether folder `name` is laid out as a model (its load says what else it lacks)."""
    from surge.repository.config import CONFIG_FILE
    from surge.repository.repository import VARIANTS_DIR

    folder = repository.root / name
    if (folder / CONFIG_FILE).is_file() or (folder / VARIANTS_DIR).is_dir():
        return True
    try:
        return bool(repository.versions(name))
    except SurgeError:  # e.g. a link out of the repository: refused when it loads
        return True
