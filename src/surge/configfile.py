"""Config files: the strict base every config schema derives from, reading YAML, and turning
validation errors into one line naming the bad key."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Strict, ValidationError

from surge.errors import ConfigError, clipped, shown

# A config is a few kilobytes (1,000 class labels are about 20 KB). These bounds keep a hostile
# one from stalling the process that reads it (256 KiB of YAML takes about 1 s to parse and
# validate on a busy core) or from expanding aliases into a "billion laughs".
MAX_CONFIG_BYTES = 256 * 1024
MAX_CONFIG_DEPTH = 64


# A config's numbers and switches are taken as written: `epochs: true` is not 1, `enabled: 'no'`
# not false, `instances: 2.5` not 2 (pydantic's lax mode would coerce each).
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]  # an int is still a float
Bool = Annotated[bool, Strict()]


class StrictConfig(BaseModel):
    """Base of every config schema (model configs, training recipes).

    Unknown keys are rejected rather than ignored: a misspelt key (`batchign:`) would otherwise
    silently leave its default in force. Configs are frozen: a loaded config is a fact about a
    file, changed only by writing the file (or by `model_copy(update=...)` for a new value).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)


def describe_validation_error(error: ValidationError) -> str:
    """The first problem of a pydantic error (missing keys last) as `unknown key 'a.b'`,
    `missing key 'x'` or `a.b: <message> (got <value>)`."""
    # a key given wrong (misspelt, mistyped) before one left out: a file that says `epoch: 3`
    # lacks `epochs` only because of the misspelling
    first = min(error.errors(), key=lambda e: e["type"] == "missing")
    where = ".".join(str(p) for p in first["loc"]) or "config"
    if first["type"] == "extra_forbidden":
        return f"unknown key {shown(where)}"
    if first["type"] == "missing":
        return f"missing key {shown(where)}"
    if not first["loc"]:  # a check of the whole config: its input is the whole config
        return f"{clipped(where)}: {clipped(first['msg'])}"
    return f"{clipped(where)}: {clipped(first['msg'])} (got {shown(first.get('input'))})"


def read_yaml(path: Path) -> Any:
    """Parse a YAML file of plain data; a missing, oversized or bad file (aliases included) is a
    ConfigError naming the file."""
    try:
        if not stat.S_ISREG(Path(path).stat().st_mode):  # a FIFO would block the read forever
            raise ConfigError(f"{path}: not a regular file")
        with Path(path).open("rb") as file:
            text = file.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than the {MAX_CONFIG_BYTES} bytes a config may have")
    try:
        return parse_yaml(text)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def parse_yaml(text: str | bytes) -> Any:
    """Plain YAML data (safe tags only) without aliases: an alias shares a node, and a few shared
    nodes nested in each other validate and print as an exponentially large value."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_tree(node)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML ({clipped(str(exc).splitlines()[0])})") from None
    finally:
        loader.dispose()


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """The safe loader, reading `1e-3` and `5E+1` as numbers as YAML 1.2 and JSON do (PyYAML's
    YAML 1.1 wants a dot, `1.0e-3`, and gave a string: `lr: 1e-3` was refused as no number)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def _check_tree(root: yaml.Node) -> None:
    """Refuse aliases (a node reached twice) and nesting deeper than MAX_CONFIG_DEPTH."""
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if id(node) in seen:
            raise ConfigError("YAML aliases (*name) are not allowed in a config; write the value out")
        seen.add(id(node))
        if depth > MAX_CONFIG_DEPTH:
            raise ConfigError(f"nested deeper than {MAX_CONFIG_DEPTH} levels")
        _check_tag(node)
        if isinstance(node, yaml.SequenceNode):
            stack.extend((child, depth + 1) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            _check_unique_keys(node)
            stack.extend((part, depth + 1) for pair in node.value for part in pair)


# The types of plain data (JSON's): a timestamp, binary, set or ordered map would load as a
# Python object that validates as free-form data (`parameters`) and then fails to serialize
# (the model's config endpoint, a written config).
_PLAIN_TAGS = frozenset(f"tag:yaml.org,2002:{kind}" for kind in
                        ("str", "int", "float", "bool", "null", "seq", "map"))


def _check_tag(node: yaml.Node) -> None:
    """Refuse a node whose type is not plain data, and merge keys (`<<`): those give keys
    twice over (a key written out and the same one merged in) with the loader keeping one."""
    if node.tag in _PLAIN_TAGS:
        return
    line = node.start_mark.line + 1
    if node.tag == "tag:yaml.org,2002:merge":
        raise ConfigError(f"YAML merge keys (<<, line {line}) are not allowed in a config; "
                          "write the keys out")
    kind = clipped(str(node.tag).rpartition(":")[2])
    plain = "not plain data (a string, number, boolean, list or mapping)"
    if isinstance(node, yaml.ScalarNode):
        raise ConfigError(f"value {shown(node.value)} (line {line}) is a YAML {kind}, {plain}; "
                          "quote it for a string")
    raise ConfigError(f"a YAML {kind} (line {line}) is {plain}")


def _check_unique_keys(node: yaml.MappingNode) -> None:
    """Refuse a key given twice in one mapping: YAML loaders keep the last silently, so the
    file would say two things and the server act on one."""
    seen: set[str] = set()
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode):
            continue
        if key.value in seen:
            raise ConfigError(f"key {shown(key.value)} is given twice in one mapping "
                              f"(line {key.start_mark.line + 1}); give it once")
        seen.add(key.value)


def write_text_atomically(path: Path, text: str) -> None:
    """Write `path` whole or not at all: a reader (a server polling its repository, the next
    command) never sees it half-written, and a stop mid-write leaves the previous file."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        partial.write_text(text)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
