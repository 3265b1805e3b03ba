"""Model repository: configs, versions, variants, safe names."""

from surge.repository.config import ModelConfig, read_config, served_version, write_config
from surge.repository.repository import (
    LoadedModel,
    ModelEntry,
    Repository,
    check_name,
    check_version,
    split_model_ref,
)

__all__ = [
    "LoadedModel",
    "ModelConfig",
    "ModelEntry",
    "Repository",
    "check_name",
    "check_version",
    "read_config",
    "served_version",
    "split_model_ref",
    "write_config",
]
