"""The training recipe config: one YAML file, `key=value` overrides, unknown keys rejected."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from surge.configfile import (
    Bool,
    Float,
    Int,
    StrictConfig,
    describe_validation_error,
    parse_yaml,
    read_yaml,
)
from surge.errors import ConfigError


class RecipeSection(StrictConfig):
    """Base of the recipe's sections: strict, and numbers must be finite (an `inf` learning rate
    or weight decay passes `> 0` but trains nothing)."""

    model_config = ConfigDict(allow_inf_nan=False)


def _named_directory(value: str | None) -> str | None:
    # An empty value would mean the current directory: almost certainly a mistyped override.
    if value is not None and not value.strip():
        raise ValueError("must name a directory, not be empty")
    return value


class ModelSpec(RecipeSection):
    """What to train: a trusted builder and the tensors it takes and returns."""

    builder: str = Field(description="A registered model (see `surge data list`) or a trusted "
                         "'package.module:factory' returning an nn.Module.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Arguments of the builder.")
    input_name: str = Field("input", description="Input tensor name in the exported model.")
    output_name: str = Field("output", description="Output tensor name in the exported model.")
    input_shape: list[int] = Field(description="One sample's input shape, without the batch dim.")
    channels_last: Bool = Field(
        False, description="Train with 4-D weights (and so activations) channels-last, the "
        "layout oneDNN and cuDNN convolutions run fastest in; with parallelism none or ddp "
        "(FSDP2 and pipeline stages need the default layout and keep it).")

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        from surge.tasks import resolve_builder

        module, sep, attr = resolve_builder(self.builder).partition(":")
        if not sep or not module or not attr:
            raise ValueError(f"builder {self.builder!r} is not a registered model; a builder "
                             "must look like 'package.module:factory'")
        if not self.input_shape or min(self.input_shape) < 1:
            raise ValueError(f"input_shape {self.input_shape} must list positive sizes")
        return self


class DataConfig(RecipeSection):
    """The dataset: a registered one (see `surge data list`) or a trusted
    'package.module:function' returning a `surge.tasks.Dataset`."""

    dataset: str = Field(description="Dataset name, e.g. synthetic, or 'package.module:function'.")
    root: str | None = Field(None, description="Dataset directory (default: the reader's own).")
    flip: Bool = Field(True, description="Random horizontal flips while training (images only).")
    train_size: Int | None = Field(
        None, ge=1, description="Use only this many training samples (synthetic: generate them)."
    )
    test_size: Int | None = Field(
        None, ge=1, description="Use only this many test samples (synthetic: generate them)."
    )
    classes: Int = Field(10, ge=2, description="Generated datasets only: number of classes.")


class OptimizerConfig(RecipeSection):
    """The optimizer; its parameters stay fp32 whatever the precision (master weights)."""

    name: Literal["adamw", "sgd"] = Field("adamw", description="adamw or sgd.")
    lr: Float = Field(3e-3, gt=0, description="Peak learning rate.")
    weight_decay: Float = Field(1e-4, ge=0, description="Decoupled (adamw) or L2 (sgd) decay.")
    momentum: Float = Field(0.9, ge=0, lt=1, description="sgd only: momentum.")


class ScheduleConfig(RecipeSection):
    """Learning-rate schedule, stepped once per optimizer step."""

    name: Literal["onecycle", "cosine", "constant"] = Field("onecycle", description="Shape.")
    warmup_fraction: Float = Field(
        0.3, gt=0, lt=1, description="onecycle only: fraction of steps spent warming up."
    )


class PipelineConfig(RecipeSection):
    """Pipeline parallelism: one stage per process."""

    schedule: Literal["gpipe", "1f1b"] = Field("1f1b", description="gpipe or 1f1b.")
    microbatches: Int = Field(4, ge=1, description="Micro-batches per (global) batch.")
    split_points: list[str] = Field(
        default_factory=list,
        description="Module names each stage after the first begins at; empty = balance the "
                    "stages by parameter count.",
    )

    @field_validator("split_points", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        # Children of nn.Sequential are named "0", "1", ...; YAML reads a bare 3 as an int.
        return [str(v) if isinstance(v, int) else v for v in value] if isinstance(value, list) \
            else value


class CheckpointConfig(RecipeSection):
    """Where and how often to checkpoint (weights, optimizer, schedule and sampler state)."""

    dir: str = Field("runs/train/checkpoints", description="Checkpoint directory.")
    interval: Int = Field(1, ge=1, description="Save every N epochs (and always at the end).")

    _dir = field_validator("dir")(_named_directory)


class ExportConfig(RecipeSection):
    """Where the best model goes once training ends."""

    repo: str | None = Field(None, description="Surge model repository; None = do not export.")
    name: str = Field("model", description="Model name in the repository.")
    version: Int | None = Field(None, ge=1, description="Version to write (default: next).")
    overwrite: Bool = Field(
        False, description="Replace `version` if it already holds files; without it a recipe "
        "whose version exists is refused before training.")
    formats: list[Literal["onnx", "pt2"]] = Field(
        default_factory=lambda: ["onnx", "pt2"],  # type: ignore[arg-type]
        min_length=1,  # the export is checked by loading one of them
        description="Files written into the version.",
    )
    torch_name: str | None = Field(
        None, description="Also write the weights (safetensors) as this torch_factory model; "
        "the task decides what is served (e.g. the network with its box decoding)."
    )
    labels: list[str] | None = Field(None, min_length=1,
                                     description="Class names for the model config.")
    max_batch_size: Int = Field(64, ge=1, description="max_batch_size of a new model config.")

    _repo = field_validator("repo")(_named_directory)


class TrainConfig(RecipeSection):
    """A training recipe: setup -> train -> validate -> checkpoint -> export."""

    task: str = Field(
        "classification",
        description="A registered task (see `surge data list`: its loss, validation metric and "
                    "export) or a 'package.module:Class' subclassing surge.tasks.Task.",
    )
    model: ModelSpec = Field(description="The model to train.")
    data: DataConfig = Field(description="The dataset.")
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig, description="Optimizer.")
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig, description="LR schedule.")
    epochs: Int = Field(5, ge=1, description="Passes over the training set.")
    batch_size: Int = Field(128, ge=1, description="Global batch size (all processes together).")
    label_smoothing: Float = Field(0.0, ge=0, lt=1, description="Cross-entropy label smoothing.")
    parallelism: Literal["none", "ddp", "pipeline", "fsdp"] = Field(
        "ddp", description="ddp, pipeline, fsdp, or none (one process)."
    )
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig, description="Pipeline.")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="fp32, bf16 (CPU or CUDA) or fp16 (CUDA, with a GradScaler)."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = CUDA if present.")
    threads: Int = Field(0, ge=0, description=(
        "Torch threads per process; 0 = OMP_NUM_THREADS where set, else cores / processes."))
    seed: Int = Field(0, description="Seed for weights, data order and augmentation.")
    log_dir: str = Field("runs/train", description="metrics.jsonl and loss.png go here.")
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig, description="Saves.")
    export: ExportConfig = Field(default_factory=ExportConfig, description="Export at the end.")

    _log_dir = field_validator("log_dir")(_named_directory)

    @field_validator("task")
    @classmethod
    def _known_task(cls, value: str) -> str:
        from surge.tasks import get_task

        try:
            get_task(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return value


def apply_override(data: dict[str, Any], item: str) -> None:
    """Set `a.b.c=value` in a nested mapping; the value is parsed as YAML (1e-3, true, [1, 2])."""
    key, sep, text = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} must look like key=value (dotted keys allowed)")
    try:
        value = parse_yaml(text) if text else ""
    except ConfigError as exc:
        raise ConfigError(f"override {item!r}: {exc}") from None
    *parents, leaf = key.split(".")
    node = data
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node = child
    node[leaf] = value


def parse_train_config(data: Any, source: str, overrides: list[str] | None = None) -> TrainConfig:
    """Validate a mapping plus overrides; errors name the source and the bad key."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys, got {type(data).__name__}")
    for item in overrides or []:
        apply_override(data, item)
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_validation_error(exc)}") from None


def load_train_config(path: Path | str, overrides: list[str] | None = None) -> TrainConfig:
    """Read a recipe YAML and apply `key=value` overrides."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory; CONFIG must be a recipe YAML file")
    try:
        data = read_yaml(path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the recipe ({exc.strerror or exc})") from None
    return parse_train_config(data, str(path), overrides)


def dump_train_config(config: TrainConfig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    return path
