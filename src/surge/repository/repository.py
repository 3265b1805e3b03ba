"""A model repository on disk: `repo/<model>/config.yaml` + `repo/<model>/<version>/model.<ext>`.

Variants made by the optimizer live in `repo/<model>/variants/<variant>/` with a `variant.yaml`
and a `model.<ext>`; they are served by name (`model@variant` or the config's `variant`);
`model@original` is the version files themselves, whatever the config selects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from surge.configfile import read_yaml
from surge.errors import (
    ConfigError,
    InvalidNameError,
    ModelLoadError,
    NotFoundError,
    ServingError,
    SurgeError,
    shown,
)
from surge.repository.config import (
    CONFIG_FILE,
    ORIGINAL,
    ModelConfig,
    TensorConfig,
    read_config,
    served_version,
)
from surge.runtimes import Runner, RunnerOptions, check_device, engine_loads, load_runner
from surge.runtimes.base import Signature, TensorSpec, WrappedRunner

# Matched with fullmatch: `$` would also accept a trailing newline.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
_VERSION = re.compile(r"[1-9][0-9]{0,8}")
MODEL_FILES = ("model.onnx", "model.pt2", "model.keras", "model.safetensors", "model.tflite", "model.xml")
VARIANTS_DIR = "variants"
VARIANT_FILE = "variant.yaml"


def check_name(name: str, kind: str = "model") -> str:
    """Allow only plain names: letters, digits, '_', '-', '.', no '..', no separators."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise InvalidNameError(
            f"invalid {kind} name {shown(name)}: use up to 128 letters, digits, '_', '-' and '.'"
            " (no '..', no '/')"
        )
    return name


def check_version(version: str | int) -> int:
    text = str(version)
    if not _VERSION.fullmatch(text):
        raise InvalidNameError(f"invalid version {shown(text)}: versions are positive integers")
    return int(text)


def split_model_ref(ref: str) -> tuple[str, str | None]:
    """`name` or `name@variant` -> (name, variant)."""
    name, sep, variant = ref.partition("@")
    check_name(name)
    if sep:
        check_name(variant, "variant")
        return name, variant
    return name, None


@dataclass(frozen=True)
class ModelEntry:
    """One model as `surge models` lists it."""

    name: str
    versions: tuple[int, ...]
    served: tuple[int, ...]
    variants: tuple[str, ...]
    state: str  # READY or UNAVAILABLE
    reason: str = ""
    broken_variants: tuple[tuple[str, str], ...] = ()  # (variant, why), not in `variants`


@dataclass
class LoadedModel:
    """A model resolved to one file and loaded into its engine."""

    name: str
    version: int
    variant: str | None
    path: Path
    config: ModelConfig
    runner: Runner

    @property
    def signature(self) -> Signature:
        return self.runner.signature


class RepositoryUnreadableError(ServingError):
    """The repository folder cannot be listed any more (moved, removed, unmounted): 503."""

    status = 503


class Repository:
    """Reads models from one directory; never resolves a path outside it."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise NotFoundError(f"model repository {root} is not a directory")

    # -- paths -------------------------------------------------------------------------------
    def _inside(self, path: Path) -> Path:
        try:
            resolved = path.resolve()
        except RuntimeError:  # Python 3.11 raises it for a symlink loop, not an OSError
            raise ModelLoadError(f"{path}: a symlink loop (it links to itself, through one "
                                 "link or more): remove the link or point it at a file") from None
        if self.root not in resolved.parents and resolved != self.root:
            raise InvalidNameError(f"{path} resolves outside the repository {self.root}")
        return resolved

    def _regular(self, path: Path) -> Path:
        """`path`, a regular file inside the repository that can be read: a directory raises
        IsADirectoryError and opening a FIFO waits for a writer forever."""
        resolved = self._inside(path)
        try:
            regular = resolved.is_file()
            if regular:
                with resolved.open("rb"):
                    pass
        except OSError as exc:
            raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None
        if not regular:
            raise ConfigError(f"{path}: not a regular file")
        return resolved

    def model_dir(self, name: str) -> Path:
        path = self._inside(self.root / check_name(name))
        if not path.is_dir():
            raise NotFoundError(f"model {name!r} is not in the repository")  # no server path
        return path

    def config_path(self, name: str) -> Path:
        return self.model_dir(name) / CONFIG_FILE

    def config(self, name: str) -> ModelConfig:
        path = self.config_path(name)
        exists = path.exists() or path.is_symlink()
        config = read_config(self._regular(path)) if exists else ModelConfig()
        if config.name is not None and config.name != name:
            raise ConfigError(f"{path}: name {config.name!r} does not match its directory {name!r}")
        return config

    def kind_of(self, name: str) -> str:
        """`model` or `pipeline`; a model whose config cannot be read counts as a model (loading
        it reports why)."""
        try:
            return self.config(name).kind
        except SurgeError:
            return "model"

    def _entries(self) -> list[Path]:
        """The repository folder's entries. One gone since the server started is an error
        naming no server path (each request listing the models raised an OSError: a 500)."""
        try:
            return list(self.root.iterdir())
        except OSError as exc:
            raise RepositoryUnreadableError(
                f"the model repository cannot be read ({exc.strerror or exc}): it was moved, "
                "removed or unmounted; the models loaded keep serving") from None

    def model_names(self) -> list[str]:
        return sorted(
            p.name for p in self._entries()
            if p.is_dir() and _NAME.fullmatch(p.name) and not p.name.startswith(".")
        )

    def not_model_names(self) -> list[str]:
        """The folders `model_names` leaves out that are not hidden: names no model may have."""
        return sorted(p.name for p in self._entries() if p.is_dir()
                      and not _NAME.fullmatch(p.name) and not p.name.startswith("."))

    def broken_links(self) -> list[str]:
        """Links in the repository whose target is gone: neither a model nor listed as one."""
        return sorted(p.name for p in self._entries()
                      if p.is_symlink() and not p.exists() and not p.name.startswith("."))

    def versions(self, name: str) -> list[int]:
        model_dir = self.model_dir(name)
        return sorted(
            int(p.name) for p in model_dir.iterdir() if p.is_dir() and _VERSION.fullmatch(p.name)
        )

    def variants(self, name: str) -> list[str]:
        variants_dir = self.model_dir(name) / VARIANTS_DIR
        if not variants_dir.is_dir():
            return []
        return sorted(p.name for p in variants_dir.iterdir() if (p / VARIANT_FILE).is_file())

    def served_versions(self, name: str, config: ModelConfig | None = None) -> list[int]:
        config = config or self.config(name)
        return config.version_policy.select(self.versions(name))

    def variant_dir(self, name: str, variant: str) -> Path:
        path = self._inside(self.model_dir(name) / VARIANTS_DIR / check_name(variant, "variant"))
        if not (path / VARIANT_FILE).is_file():
            known = ", ".join(self.variants(name)) or "none"
            raise NotFoundError(f"model {name!r} has no variant {variant!r} (variants: {known})")
        return path

    def variant_info(self, name: str, variant: str) -> dict[str, Any]:
        path = self._regular(self.variant_dir(name, variant) / VARIANT_FILE)
        data = read_yaml(path) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping")
        return data

    def _model_file(self, directory: Path, what: str) -> Path:
        found = [directory / f for f in MODEL_FILES if (directory / f).is_file()]
        if not found:
            from surge.convert import SOURCE_NAMES, converted_model

            # TensorFlow and Caffe models are served from their checked ONNX conversion.
            converted = converted_model(directory)
            if converted is not None:
                return self._inside(converted)
            raise ModelLoadError(f"{directory}: no model file for {what} (expected one of "
                                 f"{', '.join(MODEL_FILES + SOURCE_NAMES)})")
        # A model file is data from the repository: a symlink out of it is refused like a
        # directory that leaves it.
        return self._inside(found[0])

    def model_file(self, name: str, version: int | None = None, variant: str | None = None) -> Path:
        """The file that serves (name, version) or (name, variant)."""
        if variant is not None:
            return self._model_file(self.variant_dir(name, variant), f"variant {variant!r}")
        version = self.resolve_version(name, version)
        directory = self._inside(self.model_dir(name) / str(version))
        return self._model_file(directory, f"model {name!r} version {version}")

    def resolve_version(self, name: str, version: int | str | None = None) -> int:
        served = self.served_versions(name)
        return served_version(name, served, None if version is None else check_version(version))

    # -- loading -----------------------------------------------------------------------------
    def load(
        self,
        ref: str,
        version: int | str | None = None,
        options: RunnerOptions | None = None,
    ) -> LoadedModel:
        """Load `name` (the config's selected variant, if it names one), `name@variant`, or
        `name@original` (the version files, whatever variant the config selects)."""
        name, variant = split_model_ref(ref)
        config = self.config(name)
        if config.kind == "pipeline":  # it has no file of its own to load
            raise NotFoundError(f"model {name!r} is a pipeline: `surge serve` runs it; name one "
                                "of its steps' models to load, optimize or evaluate it alone")
        variant = variant or config.variant  # `variant: original` in a config: the version files
        variant = None if variant == ORIGINAL else variant
        resolved_version = 0 if variant else self.resolve_version(name, version)
        path = self.model_file(name, resolved_version or None, variant)
        options = options or RunnerOptions(intra_op_threads=config.threads, device=config.device,
                                           spin_wait=config.spin_wait)
        runner = build_runner(path, engine_config(config, variant, path), options)
        runner = apply_overrides(runner, config, path)
        check_labels(name, config, runner.signature, path)
        return LoadedModel(name, resolved_version, variant, path, config, runner)

    def entries(self) -> list[ModelEntry]:
        """Every model with its versions, variants and whether it can be served."""
        return [self._entry(name) for name in self.model_names()]

    def _entry(self, name: str) -> ModelEntry:
        versions: list[int] = []
        try:
            versions = self.versions(name)
            config = self.config(name)
            if config.kind == "pipeline":  # config only: its steps name the models it serves
                from surge.pipeline.graph import check_step_models
                from surge.pipeline.steps import check_config

                check_config(name, config, self.model_names(), self.config)
                check_step_models(name, config, self.kind_of)
                return ModelEntry(name, (), (1,), (), "READY")
            served = self.served_versions(name, config)
            variants = self.variants(name)
            if not served:
                raise ModelLoadError(self.no_version(name, config))
            for path, variant in self._served_files(name, config, served):
                check_loadable(path, engine_config(config, variant, path))
            for rung in set(config.ladder) - {ORIGINAL}:
                self.variant_info(name, rung)  # the ladder reads its rungs' accuracy there
            check_preprocess(config)
        except (ConfigError, ModelLoadError, NotFoundError, InvalidNameError) as exc:
            return ModelEntry(name, tuple(versions), (), (), "UNAVAILABLE", str(exc))
        broken = self.broken_variants(name)
        return ModelEntry(name, tuple(versions), tuple(served),
                          tuple(v for v in variants if v not in broken), "READY",
                          broken_variants=tuple(broken.items()))

    def broken_variants(self, name: str) -> dict[str, str]:
        """The variant folders `surge models` marks, each with why: a variant.yaml that is not
        a readable record (bad YAML, not a mapping, a directory, a symlink loop, a `check` of
        other types) or no model file. Listed as fine, they failed later: a load by name or
        `surge tune` (no model file), a ladder rung (its record)."""
        variants_dir = self.model_dir(name) / VARIANTS_DIR
        if not variants_dir.is_dir():
            return {}
        found = {}
        for folder in sorted(variants_dir.iterdir(), key=lambda p: p.name):
            record = folder / VARIANT_FILE
            if not (record.exists() or record.is_symlink()):
                continue  # not a variant (a folder `surge optimize` is still writing)
            try:
                check_name(folder.name, "variant")
                _check_record(self._regular(record), self.variant_info(name, folder.name))
                self.model_file(name, variant=folder.name)
            except SurgeError as exc:
                found[folder.name] = str(exc)
        return found

    def _served_files(self, name: str, config: ModelConfig, served: list[int]
                      ) -> list[tuple[Path, str | None]]:
        """The files a load of `name` reads (its served versions, its variant or ladder
        rungs), each with its variant; NotFoundError or ModelLoadError when one is missing."""
        files: list[tuple[Path, str | None]] = [(self.model_file(name, v), None) for v in served]
        named = [("variant", config.variant)] + [("ladder rung", rung) for rung in config.ladder]
        for key, variant in named:
            if variant in (None, ORIGINAL):
                continue
            try:
                files.append((self.model_file(name, variant=variant), variant))
            except NotFoundError as exc:  # the config names it: say where
                raise NotFoundError(f"{name}/{CONFIG_FILE}: {key} {variant!r}: {exc}") from None
        return files

    def no_version(self, name: str, config: ModelConfig, source: str | None = None) -> str:
        """Why no version is served: the policy and the folders, those ignored included (a
        version is a positive integer without leading zeros: `0`, `01` and `v1` are not).
        `source` says where the policy comes from (default: the model's config file)."""
        versions = self.versions(name)
        policy = config.version_policy.model_dump(exclude_defaults=True) or {"latest": 1}
        ignored = sorted(p.name for p in self.model_dir(name).iterdir() if p.is_dir()
                         and not _VERSION.fullmatch(p.name) and p.name != VARIANTS_DIR)
        found = f"version folders {versions}" if versions else "no version folder"
        if ignored:
            found += f" (not versions, ignored: {shown(ignored)})"
        where = source or f"{name}/{CONFIG_FILE}"
        return f"{where}: version_policy {policy} selects nothing: {found}"


def _check_record(path: Path, record: dict[str, Any]) -> None:
    """The fields of a variant.yaml that Surge reads hold what `surge optimize` writes."""
    check = record.get("check", {})
    if not isinstance(check, dict):
        raise ConfigError(f"{path}: check is {shown(check)}, not a mapping")
    for key in ("accuracy", "reference_accuracy", "passed"):
        value = check.get(key)
        fraction = not isinstance(value, bool) and isinstance(value, int | float) \
            and 0 <= value <= 1
        if value is not None and not (isinstance(value, bool) if key == "passed" else fraction):
            wanted = "true or false" if key == "passed" else "a fraction between 0 and 1"
            raise ConfigError(f"{path}: check.{key} is {shown(value)}, not {wanted}")


def engine_config(config: ModelConfig, variant: str | None, path: Path) -> ModelConfig:
    """The config `path` is loaded with. A variant's own file decides its engine (a torch_factory
    model's int8 variant is ONNX), unless the configured engine loads it too (`engine: openvino`
    runs ONNX variants)."""
    keep = config.engine != "auto" and engine_loads(config.engine, path)
    if variant and path.suffix != ".safetensors" and not keep:
        return config.model_copy(update={"engine": "auto", "factory": None})
    return config


def check_engine(path: Path, config: ModelConfig) -> str:
    """The engine that loads `path` under `config` (auto: its suffix decides, torch_factory for
    safetensors weights); ModelLoadError when the configured engine cannot load it."""
    engine = config.resolved_engine()
    if engine == "torch_factory" or path.suffix == ".safetensors":
        if not config.factory:
            raise ModelLoadError(f"{path}: safetensors weights need 'factory' in the model config")
        return "torch_factory"
    if engine != "auto" and not engine_loads(engine, path):
        raise ModelLoadError(f"{path}: engine {engine!r} cannot load a {path.suffix} file")
    return engine


def check_loadable(path: Path, config: ModelConfig) -> None:
    """What a load of `path` under `config` refuses that is known without loading the model:
    the engine for the file and the device for the engine (`surge models` lists it)."""
    check_device(check_engine(path, config), path, config.device)


def check_preprocess(config: ModelConfig) -> None:
    """The preprocess steps bound as a load binds them (processors, params, the tensors they pass
    each other), less what needs the model's inputs: a binder over a model without inputs
    refuses only what the real model's binder refuses too."""
    from surge.processors.in_worker import Binder

    binder = Binder(Signature((), ()))
    for step in config.preprocess:
        binder.bind(config, step)


def check_labels(name: str, config: ModelConfig, signature: Signature, path: Path,
                 source: str = CONFIG_FILE) -> None:
    """A classifier's `labels` name the classes of its first output, as `surge evaluate` and
    the optimizer read them (task classification, the default of a model with labels): a
    count that differs would name the wrong classes at request time. A variable class
    dimension cannot be checked. `source` says where the labels come from."""
    if config.labels is None or config.task() != "classification":
        return
    output = signature.outputs[0] if signature.outputs else None
    if output is None or not output.shape or output.shape[-1] < 0:
        return
    if output.shape[-1] != len(config.labels):
        raise ModelLoadError(
            f"model {name!r}: {source} gives {len(config.labels)} labels, but its output "
            f"{output.name!r} ({path.name}) has {output.shape[-1]} classes "
            f"(shape {list(output.shape)})")


def build_runner(path: Path, config: ModelConfig, options: RunnerOptions) -> Runner:
    check_loadable(path, config)  # what `surge models` checks, refused the same way
    if check_engine(path, config) == "torch_factory":
        from surge.runtimes.torch_runner import FactoryRunner

        assert config.factory is not None  # check_engine refuses a factory runner without one
        return FactoryRunner(
            config.factory, path, _specs(config.inputs), _specs(config.outputs),
            config.factory_kwargs, options,
        )
    engine = config.resolved_engine()
    return load_runner(path, options, None if engine == "auto" else engine)


def _specs(tensors: list[TensorConfig] | None) -> tuple[TensorSpec, ...]:
    return tuple(t.spec() for t in tensors or [])


def _merge(found: tuple[TensorSpec, ...], declared: list[TensorConfig] | None, kind: str,
           path: Path, batched: bool) -> tuple[TensorSpec, ...]:
    if not declared:
        return found
    by_name = {s.name: s for s in found}
    for tensor in declared:
        if tensor.name not in by_name:
            raise ModelLoadError(
                f"{path}: config declares {kind} {tensor.name!r} but the model has {list(by_name)}"
            )
        _check_override(by_name[tensor.name], tensor, kind, path)
        if batched and tensor.shape and tensor.shape[0] != -1:
            # requests of any other batch size, and the batches the scheduler forms, would fail
            raise ModelLoadError(
                f"{path}: config gives {kind} {tensor.name!r} shape {tensor.shape}, but its first "
                "dim is the batch dim of a batched model (max_batch_size above 0): write -1")
        by_name[tensor.name] = tensor.spec()
    return tuple(by_name[s.name] for s in found)


def _check_override(spec: TensorSpec, tensor: TensorConfig, kind: str, path: Path) -> None:
    """An override may name a variable size, not change what the model computes on: requests
    shaped or typed by a signature the model does not have would fail inside the engine."""
    if spec.datatype != tensor.datatype:
        raise ModelLoadError(f"{path}: config gives {kind} {tensor.name!r} datatype "
                             f"{tensor.datatype}, the model has {spec.datatype}")
    if not len(spec.shape):
        return
    pairs = zip(tensor.shape, spec.shape, strict=False)  # ranks compared first
    clash = len(tensor.shape) != len(spec.shape) or any(
        mine > 0 and theirs > 0 and mine != theirs for mine, theirs in pairs)
    if clash:
        raise ModelLoadError(
            f"{path}: config gives {kind} {tensor.name!r} shape {tensor.shape}, the model has "
            f"{list(spec.shape)}"
        )


def apply_overrides(runner: Runner, config: ModelConfig, path: Path) -> Runner:
    """Apply config signature overrides and the max batch size to the runner's signature."""
    found = runner.signature
    batched = found.batched and config.max_batch_size > 0
    inputs = _merge(found.inputs, config.inputs, "input", path, batched)
    outputs = _merge(found.outputs, config.outputs, "output", path, batched)
    signature = Signature(inputs, outputs, batched=batched,
                          max_batch_size=config.max_batch_size if batched else 0,
                          platform=found.platform)
    if signature == found:
        return runner
    return WrappedRunner(runner, signature)  # names kept, shapes and max batch set
