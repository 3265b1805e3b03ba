"""Surge: serve, optimize, evaluate and train deep-learning models under high concurrency.

The Python API is what the `surge` commands call:

    import surge

    model = surge.Repository("examples/repository").load("fashion")
    report = surge.evaluate("examples/repository", "fashion", "fashion-mnist")
    with surge.start_server("examples/repository", surge.ServeOptions(http_port=0)) as server:
        ...

Every name is imported on first use, so `import surge` stays cheap (no torch, no ONNX Runtime).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from surge.errors import SurgeError

__version__ = "0.1.0"

# name -> the module that defines it
_LAZY: dict[str, str] = {
    "serve": "surge.api",
    "start_server": "surge.api",
    "tune": "surge.api",
    "BackgroundServer": "surge.api",
    "Repository": "surge.repository",
    "ServeOptions": "surge.server.process",
    "Endpoints": "surge.server.process",
    "TuneOptions": "surge.tuning.tune",
    "TuningReport": "surge.tuning.tune",
    "AccuracyBudget": "surge.tuning.space",
    "Effort": "surge.tuning.space",
    "Load": "surge.tuning.space",
    "SearchSpace": "surge.tuning.space",
    "Slo": "surge.tuning.space",
    "OptimizeOptions": "surge.optimize.pipeline",
    "LaunchOptions": "surge.train.launcher",
}
# API functions named like a subpackage (surge.evaluate, surge.optimize, surge.train)
_VERBS = ("evaluate", "optimize", "train")

__all__ = [
    "AccuracyBudget", "BackgroundServer", "Effort", "Endpoints", "LaunchOptions", "Load",
    "OptimizeOptions", "Repository", "SearchSpace", "ServeOptions", "Slo", "SurgeError",
    "TuneOptions", "TuningReport", "__version__", "evaluate", "optimize", "serve",
    "start_server", "train", "tune",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'surge' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Verb:
    """`surge.train(...)` calls the API function `surge.api.train`, while `surge.train.config`
    is still the subpackage: the name serves both."""

    def __init__(self, name: str) -> None:
        self.__name__ = self.__qualname__ = name
        self.__module__ = "surge"

    def _function(self) -> Any:
        return getattr(importlib.import_module("surge.api"), self.__name__)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._function()(*args, **kwargs)

    @property
    def __doc__(self) -> str | None:  # type: ignore[override]
        return self._function().__doc__

    @property
    def __signature__(self) -> Any:  # what help() and IDEs show: the API function's
        import inspect

        return inspect.signature(self._function())

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        package = importlib.import_module(f"surge.{self.__name__}")
        if hasattr(package, attr):
            return getattr(package, attr)
        return importlib.import_module(f"{package.__name__}.{attr}")

    def __repr__(self) -> str:
        return f"<surge.{self.__name__}: the API function, and the subpackage's names>"


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        # importing a subpackage binds it on its parent; here the API verb keeps that name
        if name in _VERBS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


if TYPE_CHECKING:
    from surge.api import (
        BackgroundServer,
        evaluate,
        optimize,
        serve,
        start_server,
        train,
        tune,
    )
    from surge.optimize.pipeline import OptimizeOptions
    from surge.repository import Repository
    from surge.server.process import Endpoints, ServeOptions
    from surge.train.launcher import LaunchOptions
    from surge.tuning.space import AccuracyBudget, Effort, Load, SearchSpace, Slo
    from surge.tuning.tune import TuneOptions, TuningReport
else:
    evaluate, optimize, train = (_Verb(name) for name in _VERBS)
    sys.modules[__name__].__class__ = _Package
