"""Trusted code named by the operator in a config or on the command line:
'package.module:name' -> the object (a factory, processor, task, dataset, decoder).

One home for the spelling rule and for the one-line errors a wrong name gets.
"""

from __future__ import annotations

import importlib
from typing import Any

from surge.errors import ConfigError, SurgeError


def import_object(spec: str, what: str, error: type[SurgeError] = ConfigError,
                  callable_only: bool = False) -> Any:
    """The attribute `spec` names; `error` with a one-line message naming `what` and `spec`
    when it does not look like 'package.module:name', cannot be imported or is missing (or,
    with `callable_only`, is not callable)."""
    module_name, sep, attr = str(spec).partition(":")
    if not sep or not module_name or not attr:
        raise error(f"{what} {spec!r} must look like 'package.module:name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise error(f"{what} {spec!r}: cannot import {module_name!r} ({exc})") from None
    found = getattr(module, attr, None)
    if found is None:
        raise error(f"{what} {spec!r}: {module_name!r} has no {attr!r}")
    if callable_only and not callable(found):
        raise error(f"{what} {spec!r}: {attr!r} in {module_name!r} is not callable")
    return found
