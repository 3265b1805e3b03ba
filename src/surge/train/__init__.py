"""Training recipes: DDP, pipeline and FSDP2 parallelism with mixed precision, via torchrun."""

from surge.train.config import TrainConfig, load_train_config, parse_train_config
from surge.train.launcher import LaunchOptions, launch, validate

__all__ = [
    "LaunchOptions", "TrainConfig", "launch", "load_train_config", "parse_train_config", "validate",
]
