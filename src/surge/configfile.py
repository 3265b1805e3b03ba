"""Reading YAML config files and turning validation errors into one line naming the bad key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from surge.errors import ConfigError


def describe_validation_error(error: ValidationError) -> str:
    """The first problem of a pydantic error as `unknown key 'a.b'`, `missing key 'x'` or
    `a.b: <message> (got <value>)`."""
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "config"
    if first["type"] == "extra_forbidden":
        return f"unknown key {where!r}"
    if first["type"] == "missing":
        return f"missing key {where!r}"
    return f"{where}: {first['msg']} (got {first.get('input')!r})"


def read_yaml(path: Path) -> Any:
    """Parse a YAML file; a missing file or bad YAML is a ConfigError naming the file."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
