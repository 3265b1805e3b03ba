"""Configs name one format each; a registry maps each config class to the function that makes
it, and the verbs (`quantize`, `prune`, ...) dispatch through it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from surge.errors import ConfigError
from surge.optimize.check import verify
from surge.optimize.source import ModelSource
from surge.optimize.variant import Tolerance, Variant


@dataclass(frozen=True)
class Artifact:
    """What a format's maker wrote: the file, its engine, and facts about the transformation."""

    path: Path
    engine: str
    details: dict[str, Any]


class OptimizeConfig:
    """Base of every format config. Subclasses are frozen dataclasses validated on creation."""

    verb: ClassVar[str] = ""
    format: ClassVar[str] = ""

    def variant_name(self) -> str:
        return self.format

    def parameters(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if not callable(v)}  # type: ignore[call-overload]


C = TypeVar("C", bound=OptimizeConfig)
Maker = Callable[[ModelSource, Any, Path], Artifact]
_MAKERS: dict[type[OptimizeConfig], Maker] = {}


def register(config_type: type[C]) -> Callable[[Callable[[ModelSource, C, Path], Artifact]],
                                                Callable[[ModelSource, C, Path], Artifact]]:
    """Decorator: `@register(Int8StaticConfig)` on the function that writes that format."""
    def decorate(maker: Callable[[ModelSource, C, Path], Artifact]) -> Callable[
            [ModelSource, C, Path], Artifact]:
        _MAKERS[config_type] = maker
        return maker
    return decorate


def registered() -> dict[type[OptimizeConfig], Maker]:
    return dict(_MAKERS)


def apply(source: ModelSource, config: OptimizeConfig, out_dir: Path,
          tolerance: Tolerance | None = None, name: str | None = None) -> Variant:
    """Make the variant `config` describes into `out_dir`, then check it against the original."""
    maker = _MAKERS.get(type(config))
    if maker is None:
        raise ConfigError(f"no maker registered for {type(config).__name__}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    artifact = maker(source, config, out_dir)
    check = verify(source, artifact.path, tolerance or Tolerance())
    return Variant(
        name=name or config.variant_name(), path=artifact.path, engine=artifact.engine,
        method=f"{config.verb}/{config.format}", parameters=config.parameters(), check=check,
        source=source.name, details=artifact.details, size_bytes=artifact.path.stat().st_size,
    )


def dispatch(verb: str, base: type[OptimizeConfig], source: ModelSource, config: OptimizeConfig,
             out_dir: Path, tolerance: Tolerance | None) -> Variant:
    """Shared body of the verbs: refuse a config that belongs to another verb."""
    if not isinstance(config, base):
        raise ConfigError(f"{verb}() takes a {base.__name__}, got {type(config).__name__}")
    return apply(source, config, out_dir, tolerance)
