"""The parameters of a repository load request (HTTP body, gRPC `parameters`), as Triton has them.

`{"parameters": {"config": "<JSON object>"}}` loads the model with those configuration fields
instead of its `config.yaml`'s; the JSON may also be given as an object. Triton's
`file:<path>` parameters (model files sent in the request) are refused: the server loads only
what is in its repository. An unload request may carry Triton's
`{"parameters": {"unload_dependents": <bool>}}` (a model's dependents are not unloaded with it:
a pipeline keeps its steps loaded itself); anything else is refused, as for a load.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import orjson

from surge.errors import InputError, shown


def load_parameters(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The config override a load request carries, or None (load as configured on disk)."""
    return config_override(_parameters(body, "load", "{'parameters': {'config': ...}}"))


def check_unload(body: Mapping[str, Any]) -> None:
    """Refuse an unload request with fields or parameters Triton's does not have."""
    check_unload_parameters(_parameters(
        body, "unload", "{'parameters': {'unload_dependents': true|false}}"))


def check_unload_parameters(parameters: Mapping[str, Any]) -> None:
    for key, value in parameters.items():
        if key != "unload_dependents":
            raise InputError(f"unknown unload parameter {shown(key)}; expected "
                             "'unload_dependents'")
        if not isinstance(value, bool):
            raise InputError(f"unload parameter 'unload_dependents' must be true or false, "
                             f"got {shown(value)}")


def _parameters(body: Mapping[str, Any], action: str, expected: str) -> Mapping[str, Any]:
    """The `parameters` of a load or unload request's body, which may hold nothing else."""
    unknown = set(body) - {"parameters"}
    if unknown:
        raise InputError(f"unknown field {sorted(unknown)[0]!r} in the {action} request; "
                         f"expected {expected}")
    # Only a missing or null `parameters` means none: 0, "" or [] are mistakes, not defaults.
    parameters = body.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, Mapping):
        raise InputError(f"{action} 'parameters' must be an object, got {shown(parameters)}")
    return parameters


def config_override(parameters: Mapping[str, Any]) -> dict[str, Any] | None:
    """The `config` parameter as a dict; any other parameter is refused by name."""
    for key in parameters:
        if key.startswith("file:"):
            raise InputError(f"load parameter {shown(key)}: sending model files is not "
                             "supported; put them in the repository")
        if key != "config":
            raise InputError(f"unknown load parameter {shown(key)}; expected 'config'")
    config = parameters.get("config")
    if config is None:
        return None
    if isinstance(config, str | bytes):
        try:
            # orjson keeps a repeated key's last value: the text is read again to refuse one,
            # as config.yaml's are (an override is small).
            text = config
            config = orjson.loads(text)
            json.loads(text, object_pairs_hook=_no_repeated_config_key)
        except (ValueError, RecursionError) as exc:  # orjson's errors are ValueErrors
            raise InputError(f"load parameter 'config' is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise InputError(f"load parameter 'config' must be a JSON object, got {shown(config)}")
    return config


def _no_repeated_config_key(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    try:
        return no_repeated_key(pairs)
    except InputError as exc:
        raise InputError(f"load parameter 'config': {exc}") from None


def no_repeated_key(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """The object of `pairs`; InputError naming a key given twice (at any nesting level)."""
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise InputError(f"key {shown(key)} is given twice")
        seen[key] = value
    return seen


__all__ = ["check_unload", "check_unload_parameters", "config_override", "load_parameters",
           "no_repeated_key"]


# How a JSON value that is no object is named in a refusal.
_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}


def control_body(body: bytes) -> dict[str, Any]:
    """A control request's JSON body (index, load, unload, log settings): {} when empty. A key
    given twice is refused, as in config.yaml: orjson keeps the last value, so the (small)
    body is read again to find one."""
    if not body.strip():
        return {}
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InputError(f"request body is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise InputError(f"request body must be a JSON object, got "
                         f"{_JSON_TYPES.get(type(value), type(value).__name__)}")
    if not refuse_repeated_keys(body):
        raise InputError("request body nests its arrays and objects too deeply")
    return value


def refuse_repeated_keys(body: bytes, advice: str = "") -> bool:
    """InputError naming a key `body` gives twice in one object (orjson keeps the last value
    without a word; Python's parser, run here, sees each pair). False when the body nests
    deeper than Python's frames allow (orjson reads up to 1,024 levels): not checked."""
    try:
        json.loads(body, object_pairs_hook=no_repeated_key)
    except InputError as exc:
        raise InputError(f"request body: {exc}{advice}") from None
    except RecursionError:
        return False
    return True
