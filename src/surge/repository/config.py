"""The model config schema (`repo/<model>/config.yaml`). Unknown keys are rejected."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, Strict, ValidationError, field_validator, model_validator

from surge.configfile import (
    Bool,
    Float,
    Int,
    StrictConfig,
    describe_validation_error,
    read_yaml,
    write_text_atomically,
)
from surge.datatypes import V2_DATATYPES
from surge.errors import ConfigError, NotFoundError, SurgeError
from surge.repository.queueing import MAX_QUEUE_DELAY_MS as MAX_QUEUE_DELAY_MS
from surge.repository.queueing import MAX_TIMEOUT_MS as MAX_TIMEOUT_MS
from surge.repository.queueing import BatchingConfig, QueueConfig
from surge.repository.queueing import PriorityQueueConfig as PriorityQueueConfig
from surge.repository.sequencing import SequenceBatchingConfig, check_sequencing
from surge.repository.warmup import WarmupSamples
from surge.runtimes.base import TensorSpec
from surge.runtimes.values import ValueRange, range_problem, written_bound

CONFIG_FILE = "config.yaml"
SCHEMA_VERSION = 1
# The name of a model's own version files on a ladder, in `surge tune` and in responses
# (the variants `surge optimize` makes have their own names).
ORIGINAL = "original"
MAX_BATCH_SIZE = 65_536  # the largest batch a model may declare: transport buffers fit it
# Times in ms are finite (`.inf` is no deadline in disguise): an hour for a p99 (a request's
# deadline: queueing.MAX_TIMEOUT_MS).
MAX_SLO_MS = 3_600_000
MAX_DIM = 2**63 - 1  # an int64, as in model files; a larger dim cannot be written as JSON


class TensorConfig(StrictConfig):
    """An input or output declared or overridden in the config."""

    name: str = Field(description="Tensor name as the engine knows it.")
    datatype: str = Field(description="V2 datatype: FP32, INT64, BYTES, ...")
    shape: list[Annotated[Int, Field(le=MAX_DIM)]] = Field(
        description="Full shape including the batch dim for batched models; -1 = variable."
    )
    min: int | float | None = Field(None, description="inputs only: the least value a request may "
                              "send (inclusive; an integer for an integer input).")
    max: int | float | None = Field(None, description="inputs only: the greatest value a request "
                              "may send (inclusive; an integer for an integer input).")
    finite: Annotated[bool, Strict()] = Field(
        False, description="inputs only, float ones: refuse NaN and infinity.")

    @field_validator("min", "max", mode="before")
    @classmethod
    def _number(cls, bound: Any) -> Any:
        return written_bound(bound)

    @model_validator(mode="after")
    def _check(self) -> TensorConfig:
        if self.datatype not in V2_DATATYPES:
            raise ValueError(f"datatype {self.datatype!r} is not one of {', '.join(V2_DATATYPES)}")
        if any(d < -1 or d == 0 for d in self.shape):
            raise ValueError(f"shape {self.shape} may hold only positive sizes and -1")
        values = self.values()
        problem = range_problem(self.datatype, values) if values is not None else None
        if problem:
            raise ValueError(f"{self.name!r}: {problem}")
        return self

    def values(self) -> ValueRange | None:
        """The declared range of its values; None when it declares none."""
        if self.min is None and self.max is None and not self.finite:
            return None
        return ValueRange(self.min, self.max, self.finite)

    def spec(self) -> TensorSpec:
        return TensorSpec(self.name, self.datatype, tuple(self.shape), self.values())


DEFAULT_WORKER_GROUP = "default"


class WorkerConfig(StrictConfig):
    """A shared worker group: processes that each host several models (docs/many-models.md).

    `worker: shared` is `{group: default}`; `worker: dedicated` (or no `worker`) gives the model
    processes of its own, one per instance.
    """

    group: str = Field(DEFAULT_WORKER_GROUP, description="Models naming the same group share "
                       "its processes: each process loads every model of the group.")
    processes: Int = Field(1, ge=1, le=64, description="Worker processes of the group; every "
                           "model of the group must ask for the same number.")

    @field_validator("group")
    @classmethod
    def _plain_name(cls, group: str) -> str:
        return _plain(group, "worker group")


def _plain(name: str, kind: str) -> str:
    """`name` if it is a plain name (repository.check_name), else a ValueError saying why."""
    from surge.repository.repository import check_name

    try:
        return check_name(name, kind)
    except SurgeError as exc:
        raise ValueError(str(exc)) from None


def _check_unique(tensors: list[TensorConfig] | None, key: str) -> None:
    """Two overrides of one tensor would leave the served signature to whichever came last."""
    names = [t.name for t in tensors or []]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{key} names {repeated[0]!r} twice")


def _check_outputs(tensors: list[TensorConfig] | None) -> None:
    """A range says what a request may send: it is the inputs' alone."""
    for tensor in tensors or []:
        if tensor.values() is not None:
            raise ValueError(f"outputs: {tensor.name!r} declares min, max or finite, which "
                             "are for inputs")


def _worker_form(value: Any) -> Any:
    """`dedicated` -> None, `shared` -> the default group; a mapping is a group's own config."""
    if value is None or isinstance(value, dict | WorkerConfig):
        return value
    if value == "dedicated":
        return None
    if value == "shared":
        return {}
    raise ValueError("expected 'dedicated', 'shared' or a mapping {group: NAME, processes: N}")


class ClusterConfig(StrictConfig):
    """Instances on the compute nodes of a Ray cluster (`surge serve --ray ADDRESS`)."""

    instances: Int = Field(1, ge=1, le=1024, description="Ray actors started for this model; "
                           "also the floor when scaling down.")
    max_instances: Int | None = Field(
        None, ge=1, le=1024, description="Scale up to this many actors while the queue stays "
        "full (none: no scaling beyond `instances`).")
    cpus: Float = Field(1.0, ge=0, le=1024, description="CPUs one instance reserves on its node.")
    gpus: Float = Field(0.0, ge=0, le=64, description="GPUs one instance reserves on its node.")
    threads: Int = Field(0, ge=0, le=256, description="Intra-op threads per instance; 0 = its "
                         "CPUs (at least 1).")
    resources: dict[str, Annotated[Float, Field(ge=0, allow_inf_nan=False)]] = Field(
        default_factory=dict, description="Custom Ray resources one instance reserves "
        "(a node started with `--resources` offers them).")
    node_labels: dict[str, str] = Field(
        default_factory=dict, description="Ray label selector: instances only go to nodes whose "
        "labels match (`ray start --labels`), e.g. {pool: compute}.")
    start_timeout_s: Float = Field(
        120.0, gt=0, le=3600, description="Longest an instance may wait for a node and load its "
        "model before the model is marked not ready.")
    heartbeat_ms: Float = Field(
        500.0, ge=10, le=60_000, description="How often each instance is pinged.")
    heartbeat_misses: Int = Field(
        4, ge=1, le=100, description="Pings in a row without an answer that declare an instance "
        "lost (its node silent): it is replaced and its batches retried. The least silence "
        "allowed: an instance that has shown more jitter, or runs on a saturated front-end "
        "machine, gets more (up to 10 s; docs/scale-out.md).")
    scale_up_after_s: Float = Field(
        2.0, gt=0, le=3600, description="Every instance full this long adds one (up to "
        "max_instances).")
    scale_down_idle_s: Float = Field(
        30.0, gt=0, le=86_400, description="An instance idle this long is removed (down to "
        "instances).")

    @model_validator(mode="after")
    def _check(self) -> ClusterConfig:
        if self.max_instances is not None and self.max_instances < self.instances:
            raise ValueError(f"cluster.max_instances ({self.max_instances}) is below "
                             f"cluster.instances ({self.instances})")
        return self


class VersionPolicy(StrictConfig):
    """Which versions to serve: exactly one of `latest`, `specific` or `all`."""

    latest: Int | None = Field(None, ge=1, description="Serve the N highest versions.")
    specific: list[Int] | None = Field(None, description="Serve exactly these versions.")
    all: Bool = Field(False, description="Serve every version present.")

    @model_validator(mode="after")
    def _one_policy(self) -> VersionPolicy:
        chosen = [self.latest is not None, self.specific is not None, self.all]
        if sum(chosen) > 1:
            raise ValueError("version_policy takes exactly one of latest, specific, all")
        if self.specific is not None and (not self.specific or min(self.specific) < 1):
            raise ValueError("version_policy.specific must list positive version numbers")
        return self

    def select(self, available: list[int]) -> list[int]:
        """The versions to serve among `available`, ascending."""
        ordered = sorted(available)
        if self.all:
            return ordered
        if self.specific is not None:
            return [v for v in ordered if v in set(self.specific)]
        return ordered[-(self.latest or 1):]


class StepConfig(StrictConfig):
    """One step of a pipeline: a model of the repository or a processor over numpy arrays."""

    name: str = Field(description="Step name, unique in the pipeline; errors and metrics name it.")
    model: str | None = Field(None, description="A model of the repository, served with its "
                              "own batching and instances (its config's `variant` included).")
    processor: str | None = Field(None, description="A built-in processor (`image.decode`, "
                                  "`labels.topk`, `detection.boxes`, `text.tokenize`) or a "
                                  "trusted `package.module:function`.")
    inputs: dict[str, str] = Field(description="Step input name -> pipeline tensor it reads.")
    outputs: dict[str, str] = Field(description="Step output name -> pipeline tensor it writes.")
    params: dict[str, Any] = Field(default_factory=dict, description="Processor arguments.")
    params_from: str | None = Field(
        None, description="A model of the repository whose `labels` and `parameters` the "
        "processor also gets (its own `params` win); default: the pipeline's own.")

    @model_validator(mode="after")
    def _check(self) -> StepConfig:
        if (self.model is None) == (self.processor is None):
            raise ValueError(f"step {self.name!r} takes exactly one of model, processor")
        if self.model is not None and (self.params or self.params_from):
            raise ValueError(f"step {self.name!r}: params and params_from are for processors")
        if not self.inputs or not self.outputs:
            raise ValueError(f"step {self.name!r} needs inputs and outputs")
        return self


def served_version(name: str, served: Sequence[int], requested: int | None = None) -> int:
    """The version a request for `requested` gets among the `served` ones: the newest when none
    is named. The repository (what is on disk) and the engine (what is loaded) both answer
    requests by this rule."""
    if requested is None:
        if not served:
            raise NotFoundError(f"model {name!r} has no servable version")
        return max(served)
    if requested not in served:
        raise NotFoundError(
            f"model {name!r} has no served version {requested} (served: {sorted(served)})")
    return requested


class ModelConfig(StrictConfig):
    """Everything Surge needs to load and serve one model."""

    schema_version: Int = Field(SCHEMA_VERSION, description="Config format version.")
    name: str | None = Field(None, description="Model name; must equal its directory name.")
    kind: Literal["model", "pipeline"] = Field(
        "model", description="model: a file in a version directory; pipeline: `steps` over other "
        "models and processors, with the V2 signature its `inputs` and `outputs` declare.")
    steps: list[StepConfig] = Field(default_factory=list,
                                    description="pipeline only: its steps (a DAG by tensor name).")
    preprocess: list[StepConfig] = Field(
        default_factory=list, description="model only: processor steps its workers run on each "
        "batch before the engine (e.g. `image.decode` of JPEG/PNG bytes into its image input), "
        "in order; the served signature takes their inputs in place of the model inputs they "
        "write. A row a step refuses fails its own request (HTTP 400), not the batch.")
    engine: Literal["auto", "onnxruntime", "torch_export", "torch_factory", "keras", "tflite",
                    "openvino"] = Field(
        "auto", description="Engine; auto picks it from the model file's extension."
    )
    factory: str | None = Field(
        None, description="torch_factory only: trusted 'package.module:function' building the model."
    )
    factory_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments passed to the factory."
    )
    inputs: list[TensorConfig] | None = Field(None, description="Input signature overrides.")
    outputs: list[TensorConfig] | None = Field(None, description="Output signature overrides.")
    max_batch_size: Int = Field(
        32, ge=0, le=MAX_BATCH_SIZE,
        description="Largest batch the model runs; 0 = the model takes no batch dim."
    )
    batching: BatchingConfig = Field(default_factory=BatchingConfig, description="Dynamic batching.")
    instances: Int = Field(1, ge=1, le=64, description="Worker processes running this model.")
    threads: Int = Field(
        0, ge=0, le=256, description="Intra-op threads per instance; 0 = cores / instances."
    )
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N; for ONNX Runtime also "
                        "tensorrt[:N] and openvino (its execution providers, CPU as fallback); "
                        "for PyTorch any device torch names that the machine has; LiteRT: "
                        "auto or cpu.")
    spin_wait: Bool | Literal["run"] = Field(
        False, description="How engine threads wait for work. false: they sleep, leaving the "
        "cores they are not using to the front end and the other instances. run: ONNX Runtime's "
        "threads spin between operators while a batch computes and sleep between batches "
        "(lower latency on cores the server has to itself; far slower where other work takes "
        "the cores). true: they always spin (ONNX Runtime allow_spinning, OpenMP active wait).")
    hang_multiple: Float = Field(
        10.0, ge=1, le=1000, description="A batch still computing after this multiple of its "
        "predicted time (and at least hang_min_ms) marks its worker hung: the worker is killed "
        "and restarted (in-process: an ONNX Runtime run is interrupted; other engines cannot "
        "be), the batch is retried once on another instance when its deadline allows.")
    hang_min_ms: Float = Field(
        2000.0, ge=10, le=3_600_000, description="Least time a batch may compute before its "
        "worker can be taken as hung, so that short batches never trip on a scheduling hiccup.")
    load_timeout_s: Float = Field(
        600.0, gt=0, le=86_400, description="Longest the instances may take to load the model "
        "and run its warm-up samples: past it the load fails and their processes are killed.")
    queue: QueueConfig = Field(default_factory=QueueConfig, description="Queue limits, the "
                               "whole queue's and (`priorities`) each priority level's own.")
    placement: Literal["local", "cluster", "auto", "in-process"] = Field(
        "local", description="Where instances run: local worker processes, Ray actors on compute "
        "nodes (`cluster`, needs `surge serve --ray`), `auto`: the cluster when serving on one, "
        "or `in-process`: threads of the serving process itself (no hand-off to a worker: the "
        "lowest latency for small models; no crash isolation; a hung batch is stopped only "
        "on ONNX Runtime).")
    cluster: ClusterConfig = Field(default_factory=ClusterConfig,
                                   description="Instances on Ray compute nodes.")
    worker: WorkerConfig | None = Field(
        None, description="Processes the model runs in: none (or `dedicated`) = its own, one per "
        "instance; `shared` or {group: NAME, processes: N} = the processes of a worker group, "
        "each hosting every model of the group (small models then share one runtime).")
    load: Literal["eager", "on-demand"] | None = Field(
        None, description="eager: loaded when the server starts; on-demand: listed at start and "
        "loaded by its first request; default: `surge serve --load` (eager).")
    pinned: Bool = Field(False, description="Never unloaded to fit the memory budget "
                         "(`surge serve --memory-budget`).")
    version_policy: VersionPolicy = Field(
        default_factory=lambda: VersionPolicy(latest=1), description="Versions to serve."
    )
    variant: str | None = Field(
        None, description="Serve this variant from variants/<name>/ instead of the original."
    )
    slo_p99_ms: Float | None = Field(
        None, gt=0, le=MAX_SLO_MS,
        description="Latency objective (p99, ms). When set, batch times are probed "
        "on load (a batch of 1 and a full batch) and partial batches wait only while more "
        "requests are coming and the oldest stays within it, instead of max_queue_delay_ms.")
    ladder: list[str] = Field(
        default_factory=list, description="Accuracy ladder (needs slo_p99_ms and "
        "max_accuracy_drop): `original` and variant names, most accurate first, all loaded and "
        "warm. When the predicted p99 passes slo_p99_ms, a share of the traffic moves down to "
        "rungs within max_accuracy_drop of the first, before any request is shed.")
    max_accuracy_drop: Float | None = Field(
        None, ge=0, le=100, description="Ladder only: points (percent) of accuracy a rung may "
        "lose against the first rung and still take traffic under load.")
    ladder_accuracy: dict[str, Annotated[Float, Field(ge=0, le=100)]] = Field(
        default_factory=dict, description="Ladder only: the measured accuracy (percent) of each "
        "rung, as `surge tune` writes it; a rung not listed takes it from its variant.yaml.")
    response_cache: Bool = Field(
        False, description="Answer identical requests from the server's response cache "
        "(`surge serve --response-cache-bytes`) without running the model; kind model only, "
        "without a ladder.")
    model_warmup: WarmupSamples = Field(
        default_factory=list, description="Warm-up samples (Triton's model_warmup) each instance "
        "runs before the model is ready; a failing one fails the load (docs/serving-engine.md).")
    sequence_batching: SequenceBatchingConfig | None = Field(
        None, description="A stateful model's implicit state, carried from one request of a "
        "sequence to the next (Triton's sequence batcher; docs/serving-engine.md).")
    labels: list[str] | None = Field(None, min_length=1,
                                     description="Class names for classifier outputs.")
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="Free-form parameters for pre/post-processing."
    )

    @field_validator("variant")
    @classmethod
    def _plain_variant(cls, variant: str | None) -> str | None:
        return None if variant is None else _plain(variant, "variant")

    @field_validator("response_cache", mode="before")
    @classmethod
    def _cache_form(cls, value: Any) -> Any:
        """Triton's `{enable: true}` is `true` (any other mapping is refused as not a bool)."""
        return value["enable"] if isinstance(value, dict) and set(value) == {"enable"} else value

    @field_validator("worker", mode="before")
    @classmethod
    def _worker_shorthand(cls, value: Any) -> Any:
        return _worker_form(value)

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.kind == "pipeline" and not (self.steps and self.inputs and self.outputs):
            raise ValueError("kind pipeline needs steps, inputs and outputs")
        if self.kind == "model" and self.steps:
            raise ValueError("steps are for kind pipeline")
        if self.preprocess:
            self._check_preprocess()
        if self.engine == "torch_factory" and not self.factory:
            raise ValueError("engine torch_factory needs 'factory: package.module:function'")
        if self.factory and self.engine not in ("torch_factory", "auto"):
            raise ValueError(f"'factory' is only used by engine torch_factory, not {self.engine}")
        self._check_ladder()
        if self.response_cache and (self.ladder or self.kind != "model"):
            raise ValueError("response_cache is for kind model without a ladder (the answer "
                             "of a ladder or a pipeline can change without a reload of it)")
        self._check_batching()
        check_sequencing(self)
        _check_unique(self.inputs, "inputs")
        _check_unique(self.outputs, "outputs")
        _check_outputs(self.outputs)
        if self.worker is not None:
            self._check_shared()
        return self

    @field_validator("schema_version")
    @classmethod
    def _known_schema(cls, version: int) -> int:
        if version != SCHEMA_VERSION:  # a newer format's keys could mean something else
            raise ValueError(f"schema_version {version} is not supported (this Surge reads "
                             f"{SCHEMA_VERSION})")
        return version

    def _check_batching(self) -> None:
        sizes = self.batching.preferred_batch_sizes
        if sizes and self.max_batch_size == 0:
            raise ValueError("batching.preferred_batch_sizes needs max_batch_size above 0 "
                             "(0 = the model takes no batch dim)")
        for size in sizes:
            if size < 1 or size > self.max_batch_size:
                raise ValueError(
                    f"preferred batch size {size} must be between 1 and max_batch_size"
                    f" {self.max_batch_size}"
                )

    def _check_preprocess(self) -> None:
        if self.kind != "model":
            raise ValueError("preprocess is for kind model; a pipeline has processor steps")
        names = [step.name for step in self.preprocess]
        for step in self.preprocess:
            if step.processor is None or step.params_from is not None:
                raise ValueError(f"preprocess step {step.name!r} takes a processor (and its "
                                 "params), not a model or params_from")
            if names.count(step.name) > 1:
                raise ValueError(f"preprocess step name {step.name!r} is used twice")

    def _check_shared(self) -> None:
        """A shared group hosts plain models in local processes, one copy per process."""
        if self.kind == "pipeline":
            raise ValueError("worker: a pipeline has no worker; set it on its models")
        if self.placement != "local":
            raise ValueError(f"worker: a shared group runs local processes, not placement "
                             f"{self.placement!r}")
        if "instances" in self.model_fields_set:
            raise ValueError(f"instances ({self.instances}) is for dedicated workers: a model "
                             "of a shared group runs in each of the group's worker.processes")

    def _check_ladder(self) -> None:
        if not self.ladder:
            if self.ladder_accuracy:
                raise ValueError("ladder_accuracy is for a model with a ladder")
            return
        if len(self.ladder) < 2 or len(set(self.ladder)) != len(self.ladder):
            raise ValueError(f"ladder needs two or more different rungs, got {self.ladder}")
        for rung in self.ladder:
            _plain(rung, "ladder rung")
        if self.slo_p99_ms is None or self.max_accuracy_drop is None:
            raise ValueError("a ladder needs slo_p99_ms and max_accuracy_drop")
        if self.variant is not None or self.kind != "model":
            raise ValueError("a ladder replaces `variant` and is for kind model")
        unknown = sorted(set(self.ladder_accuracy) - set(self.ladder))
        if unknown:
            raise ValueError(f"ladder_accuracy names {unknown}, which are not on the ladder")

    def resolved_engine(self) -> str:
        return "torch_factory" if self.factory and self.engine == "auto" else self.engine

    def task(self) -> str | None:
        """`parameters.task`; else classification for a model with class labels; else none."""
        task = self.parameters.get("task")
        return str(task) if task else ("classification" if self.labels else None)


def parse_config(data: Any, source: str) -> ModelConfig:
    """Validate a config mapping; errors name the source file and the bad key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys, got {type(data).__name__}")
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_validation_error(exc)}") from None


def read_config(path: Path) -> ModelConfig:
    """Read and validate a config.yaml."""
    return parse_config(read_yaml(path), str(path))


def write_config(path: Path, config: ModelConfig) -> None:
    """Write a config, omitting fields left at their defaults."""
    data = config.model_dump(mode="json", exclude_defaults=True)
    data["schema_version"] = SCHEMA_VERSION
    write_text_atomically(path, yaml.safe_dump(data, sort_keys=False))
