"""The serving core: one scheduler and worker pool per served model version, behind a typed seam."""

from surge.engine.engine import Engine, ModelHandle, ModelStats, ServedModel

__all__ = ["Engine", "ModelHandle", "ModelStats", "ServedModel"]
