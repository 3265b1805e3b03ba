"""Optimize a repository model: build its source, make each requested variant, keep those that
pass the tolerance under `REPO/NAME/variants/<variant>/` (variant.yaml + model.<ext>)."""

from __future__ import annotations

import contextlib
import errno
import math
import shutil
import signal
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from surge.datafiles import load_npy, load_npz
from surge.errors import ConfigError, InputError, ModelLoadError, SurgeError, first_line
from surge.kinds import is_integer, is_number
from surge.optimize.exporting import OnnxExportConfig
from surge.optimize.low_rank import LowRankBase
from surge.optimize.mixed_precision import PrecisionConfig
from surge.optimize.prune import PruneBase
from surge.optimize.quantize import Int8DynamicConfig, Int8StaticConfig
from surge.optimize.registry import OptimizeConfig, apply
from surge.optimize.source import Inputs, ModelSource
from surge.optimize.tables import TablesConfig
from surge.optimize.twin import factory_module, probe, twin_module
from surge.optimize.variant import Tolerance, Variant
from surge.repository import ModelConfig, Repository
from surge.repository.config import ORIGINAL
from surge.repository.repository import VARIANT_FILE, VARIANTS_DIR, check_name
from surge.runtimes import Signature, example_inputs
from surge.tasks import DataOptions, Split, get_dataset, get_task
from surge.tasks.tabular import unpack

CHECK_ROWS = 10_000  # rows of the model's dataset; all of a 10,000-image test split
CALIBRATION_ROWS = 512
SWAP_TRIES = 10


@dataclass(frozen=True)
class Outcome:
    """One requested variant: what was made and whether it was kept in the repository."""

    name: str
    variant: Variant | None
    kept: bool
    directory: Path | None
    error: str = ""


@dataclass(frozen=True)
class OptimizeOptions:
    """Choices of `surge optimize` beyond the variant list."""

    calibration: Path | None = None
    """A .npy (one-input models) or .npz (arrays by input name) of representative inputs."""
    tolerance: Tolerance | None = None
    """None = the default for the model's task (see `default_tolerance`)."""
    keep_failed: bool = False
    """Keep variants that miss the tolerance (their variant.yaml says so)."""
    torch_model: str | None = None
    """A torch_factory model with the same weights, for the PyTorch verbs on an ONNX model."""
    finetune_epochs: int = 2
    """Fine-tune epochs for pruned models whose config names a dataset with a training split
    (0 = none); on the example classifier one epoch left prune-50 1.1-1.2 accuracy points down,
    two brought it within 0.7."""
    exclude: tuple[str, ...] = ()
    """ONNX node names left in fp32 by quantization."""
    check_rows: int = CHECK_ROWS
    """Rows of the default check data (the evaluation split of the model's
    `parameters.dataset`) each variant is run on."""

    def __post_init__(self) -> None:
        """Checked where built, with the command line's words: `tolerance=-1` or
        `check_rows=0` failed only once the first variant was made, or were taken."""
        if isinstance(self.calibration, str):  # as a path everywhere it is read
            object.__setattr__(self, "calibration", Path(self.calibration))
        if isinstance(self.exclude, list):
            object.__setattr__(self, "exclude", tuple(self.exclude))
        _check_tolerance(self.tolerance)
        _check_choices(self)


# Tolerance fields as `--tolerance` names them, and those that are shares (at most 1)
_TOLERANCE_KEYS = {"max_abs": "max_abs", "mean_abs": "mean_abs", "min_top1": "top1",
                   "min_cosine": "cosine", "max_accuracy_drop": "accuracy_drop",
                   "max_ndcg_drop": "ndcg_drop", "max_auc_drop": "auc_drop"}
_SHARES = ("min_top1", "min_cosine")


def _check_tolerance(tolerance: object) -> None:
    if tolerance is None:
        return
    if not isinstance(tolerance, Tolerance):
        raise ConfigError(f"tolerance {tolerance!r}: give a Tolerance, e.g. "
                          "Tolerance(max_abs=0.1), or None for the task's default")
    for field, value in asdict(tolerance).items():
        part = f"{_TOLERANCE_KEYS[field]}={value}"
        if value is not None and (not is_number(value) or not 0 <= value < math.inf):
            raise ConfigError(f"tolerance {part!r}: {str(value)!r} is not a number >= 0")
        if field in _SHARES and value is not None and value > 1:
            raise ConfigError(f"tolerance {part!r}: {_TOLERANCE_KEYS[field]} is a share, "
                              "at most 1")


def _check_choices(options: OptimizeOptions) -> None:
    calibration, torch_model, exclude = options.calibration, options.torch_model, options.exclude
    if calibration is not None and not isinstance(calibration, Path):
        raise ConfigError(f"--calib {calibration!r}: give the path of a .npy or .npz file")
    if not isinstance(options.keep_failed, bool):
        raise ConfigError(f"--keep-failed {options.keep_failed!r}: give True or False")
    if torch_model is not None and (not isinstance(torch_model, str) or not torch_model.strip()):
        raise ConfigError(f"--torch-model {torch_model!r}: name a torch_factory model of the "
                          "repository, or leave it out")
    for option, value, least in (("--finetune-epochs", options.finetune_epochs, 0),
                                 ("--check-rows", options.check_rows, 1)):
        if not is_integer(value) or value < least:
            raise ConfigError(f"{option} {value!r}: give a whole number >= {least}")
    # a str would be taken letter by letter as node names
    if not isinstance(exclude, tuple) or not all(isinstance(n, str) for n in exclude):
        raise ConfigError(f"--exclude {exclude!r}: give a tuple of ONNX node names")


@dataclass(frozen=True)
class CheckData:
    """What the variants are checked on and made with when the command line gives nothing."""

    samples: Inputs
    labels: np.ndarray | None = None
    calibration: Inputs | None = None
    finetune: Any = None


def default_tolerance(task: str | None, has_labels: bool) -> Tolerance:
    return get_task(task).tolerance(has_labels) if task else Tolerance()


def _signature(repo: Repository, name: str) -> Signature:
    # the version files', which optimize starts from: the variant the config selects may be
    # the one this run is to make
    return repo.load(f"{name}@{ORIGINAL}").signature


def _load_calibration(path: Path, signature: Signature) -> Inputs:
    """The --calib arrays by input name, each checked against its input: datatype, shape, at
    least one row, finite values (NaN or inf would become the quantization scales)."""
    if path.suffix == ".npz":
        data = load_npz(path, "calibration data")
    elif path.suffix == ".npy":
        if len(signature.inputs) != 1:
            raise ConfigError(f"{path}: a .npy holds one array; this model has inputs "
                              f"{signature.input_names}: give a .npz with one array per input")
        data = {signature.inputs[0].name: load_npy(path, "calibration data")}
    else:
        raise ConfigError(f"calibration data {path}: expected a .npy or .npz file")
    for spec in signature.inputs:
        if spec.name not in data:
            raise ConfigError(f"{path}: no array for input {spec.name!r}")
        _check_calibration_array(path, signature, spec.name, data[spec.name])
    # the calibrator feeds every array, in batches cut at the same rows: another name, or
    # inputs of unequal rows, failed static int8 only once it ran
    extra = [n for n in data if n not in signature.input_names]
    if extra:
        raise ConfigError(f"{path}: array {extra[0]!r} is not an input of the model "
                          f"(inputs: {signature.input_names})")
    rows = {n: len(a) for n, a in data.items() if a.ndim and signature.batched}
    if len(set(rows.values())) > 1:
        raise ConfigError(f"{path}: the inputs have different row counts {rows}")
    return data


def _check_calibration_array(path: Path, signature: Signature, name: str,
                             array: np.ndarray) -> None:
    try:
        signature.check_input(name, array)
    except InputError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if array.ndim and not len(array):
        raise ConfigError(f"{path}: input {name!r} has no rows to calibrate with")
    if array.dtype.kind in "fc" and not np.isfinite(array).all():
        raise ConfigError(f"{path}: input {name!r} holds NaN or infinite values")


def build_source(repo: Repository, name: str, options: OptimizeOptions, work_dir: Path,
                 training: bool = True) -> ModelSource:
    """The original model (module and/or ONNX), its check samples and calibration data;
    `training`: whether a variant asks for the dataset's training split (static int8's
    calibration, a pruning's fine-tune): reading and tokenizing it costs seconds."""
    config = repo.config(name)
    signature = _signature(repo, name)  # first: it says what a pipeline or a bad model is
    path = repo.model_file(name)
    module = onnx_path = None
    twin = options.torch_model or config.parameters.get("torch_model")
    given_as = "--torch-model" if options.torch_model else f"{name}: parameters.torch_model"
    if config.resolved_engine() == "torch_factory":
        module, twin = factory_module(repo, name), None
    elif path.suffix == ".onnx":
        onnx_path = path
        module = twin_module(repo, str(twin), name, signature, given_as) if twin else None
    else:
        raise ModelLoadError(f"{path}: optimize starts from an ONNX or torch_factory model")
    calibration = (_load_calibration(options.calibration, signature)
                   if options.calibration else None)
    task = _checked_task(name, config)
    data = _check_data(signature, config.parameters.get("dataset"), task if training else None,
                       calibration, options)
    source = ModelSource(
        name=name, input_names=signature.input_names, output_names=signature.output_names,
        samples=data.samples, module=module, onnx_path=onnx_path, task=task, labels=data.labels,
        calibration=calibration or data.calibration, finetune=data.finetune, work_dir=work_dir,
    )
    if module is not None:
        probe(source, signature, f"{given_as} {twin!r}" if twin else
              f"the PyTorch module of {name!r}")
    return source


def _checked_task(name: str, config: ModelConfig) -> str | None:
    """The model's task (`ModelConfig.task`), checked to be a registered one."""
    task = config.task()
    if task is not None:
        try:
            get_task(str(task))
        except ConfigError as exc:
            raise ConfigError(f"{name}: parameters.task: {exc}") from None
    return task


def _check_data(signature: Signature, dataset: str | None, task: str | None,
                calibration: Inputs | None, options: OptimizeOptions) -> CheckData:
    """The evaluation split of the model's `parameters.dataset` (calibration and fine-tune from
    its training split), else the given calibration rows, else random inputs."""
    data = _dataset_check_data(signature, dataset, task, calibration, options) if dataset else None
    if data is not None:
        return data
    if calibration is not None:
        return CheckData({k: v[:256] for k, v in calibration.items()})
    return CheckData(example_inputs(signature, batch_size=64))


def _dataset_check_data(signature: Signature, dataset: str, task: str | None,
                        calibration: Inputs | None, options: OptimizeOptions) -> CheckData | None:
    input_name = signature.inputs[0].name
    reader = get_dataset(dataset)
    try:
        held_out = reader.evaluation(input_name, DataOptions()).subset(options.check_rows)
    except SurgeError:  # data not installed: fall through to the generic samples
        return None
    if any(n not in held_out.inputs for n in signature.input_names):
        return None
    train = _training_split(reader) if task and (
        calibration is None or options.finetune_epochs) else None
    if train is None or task is None:
        return CheckData(held_out.inputs, held_out.labels)
    kind = get_task(task)
    finetune = (kind.finetune(train, options.finetune_epochs)
                if options.finetune_epochs else None)
    return CheckData(held_out.inputs, held_out.labels,
                     _calibration_rows(kind, reader, train, input_name), finetune)


def _calibration_rows(kind: Any, reader: Any, train: Split, input_name: str) -> Inputs:
    """The task's calibration rows, split back into the served columns when the dataset's
    training split packs them into one tensor (ranking and tabular models): fed packed, static
    int8 calibration of a multi-input model fails on its missing inputs."""
    rows = kind.calibration(train, input_name, CALIBRATION_ROWS)
    columns = getattr(reader, "columns", ())
    if not columns:
        return dict(rows)
    packed = rows[input_name]
    return unpack(columns, packed.reshape(len(packed), -1))


def _training_split(reader: Any) -> Split | None:
    try:
        return reader.training(DataOptions())[0]
    except SurgeError:  # an evaluation-only dataset
        return None


def _check_requests(source: ModelSource, configs: dict[str, OptimizeConfig],
                    exclude: tuple[str, ...] = ()) -> None:
    """Refuse up front what cannot be made, so nothing is half done."""
    for name, config in configs.items():
        if isinstance(config, Int8StaticConfig) and source.calibration is None:
            raise ConfigError(f"variant {name!r} needs calibration data: pass --calib DATA.npy")
        torch_only = config.verb in ("prune", "low_rank") or (
            isinstance(config, PrecisionConfig) and config.engine == "torch")
        if torch_only:
            source.require_module(f"variant {name!r}")
    if exclude and any(hasattr(c, "exclude") for c in configs.values()):
        _check_exclude(source, exclude)


def _check_exclude(source: ModelSource, exclude: tuple[str, ...]) -> None:
    """ONNX Runtime skips a node name it does not find: a misspelt --exclude quantized the
    node it was meant to keep, and variant.yaml still listed it as excluded."""
    import onnx

    graph = onnx.load(str(source.ensure_onnx()), load_external_data=False).graph
    nodes = [n.name for n in graph.node]
    unknown = [n for n in exclude if n not in nodes]
    if unknown:
        shown = ", ".join(repr(n) for n in nodes[:8]) + (", ..." if len(nodes) > 8 else "")
        raise ConfigError(f"--exclude {unknown[0]!r}: no node of that name in the ONNX graph of "
                          f"{source.name!r} (nodes: {shown or 'none named'})")


# Variants that read neither calibration rows nor the task's fine-tune; any other (static int8,
# a pruning with `finetune: auto`, a plugin's own) is given the training split.
_NO_TRAINING = (Int8DynamicConfig, PrecisionConfig, LowRankBase, TablesConfig, OnnxExportConfig)


def _uses_training(configs: dict[str, OptimizeConfig]) -> bool:
    """Whether a variant reads the dataset's training split."""
    return any(not (isinstance(config, _NO_TRAINING) or
                    (isinstance(config, PruneBase) and getattr(config, "finetune", None) != "auto"))
               for config in configs.values())


def optimize_model(repo_path: Path, name: str, configs: dict[str, OptimizeConfig],
                   options: OptimizeOptions | None = None) -> list[Outcome]:
    """Make, check and store each variant; failures are reported, not silently kept."""
    options = options or OptimizeOptions()
    _check_names(configs)
    repo = Repository(repo_path)
    variants_dir = repo.model_dir(name) / VARIANTS_DIR
    created = not variants_dir.exists()
    variants_dir.mkdir(exist_ok=True)  # the work folder is in it: renames then move variants
    try:
        with tempfile.TemporaryDirectory(dir=variants_dir, prefix=".work-") as tmp:
            source = build_source(repo, name, options, Path(tmp), _uses_training(configs))
            tolerance = options.tolerance or default_tolerance(source.task,
                                                               source.labels is not None)
            _check_requests(source, configs, options.exclude)
            return [_one(source, variant_name, _with_exclude(config, options.exclude),
                         tolerance, variants_dir, Path(tmp), options.keep_failed)
                    for variant_name, config in configs.items()]
    finally:
        if created and not any(variants_dir.iterdir()):  # a refused request writes nothing
            with contextlib.suppress(OSError):  # another run's work folder just appeared
                variants_dir.rmdir()


def _check_names(configs: dict[str, OptimizeConfig]) -> None:
    """Each name is a folder under variants/ (API callers name them too: '../x' would be
    written outside the model), each config one the registry knows."""
    for name, config in configs.items():
        check_name(name, "variant")
        if not isinstance(config, OptimizeConfig):
            raise ConfigError(f"variant {name!r}: {config!r} is not an optimize config")


def _with_exclude(config: OptimizeConfig, exclude: tuple[str, ...]) -> OptimizeConfig:
    if exclude and hasattr(config, "exclude"):
        return replace(config, exclude=tuple(exclude))  # type: ignore[type-var]
    return config


def _one(source: ModelSource, name: str, config: OptimizeConfig, tolerance: Tolerance,
         variants_dir: Path, work: Path, keep_failed: bool) -> Outcome:
    staging = work / name
    try:
        variant = apply(source, config, staging, tolerance, name=name)
    except SurgeError:
        raise
    except Exception as exc:  # one variant's engine failure must not cost the others
        first = first_line(exc)
        return Outcome(name, None, False, None, f"failed: {type(exc).__name__}: {first}")
    kept = variant.check.passed or keep_failed
    if not kept:
        return Outcome(name, variant, False, None)
    stored = _store(staging, variant, tolerance, variants_dir / name)
    return Outcome(name, stored, True, stored.path.parent)


def _store(staging: Path, variant: Variant, tolerance: Tolerance, target: Path) -> Variant:
    """Move the staged variant, its variant.yaml written first, to `target` by renames (one
    file system), so that an interrupted run leaves the old variant or the new one, never a
    model file without its record."""
    stored = replace(variant, path=target / variant.path.name)
    info = stored.as_dict()
    info["tolerance"] = tolerance.describe()
    info["kept_despite_failing"] = not variant.check.passed
    (staging / VARIANT_FILE).write_text(yaml.safe_dump(info, sort_keys=False))
    _swap_in(staging, target)
    return stored


def _swap_in(staging: Path, target: Path) -> None:
    """Rename `staging` to `target`, first moving aside the variant there (deleted once the
    new one is in). Another optimize of the same model may store or move the same variant in
    between: the rename then finds a folder again, or the one to move aside is gone; either
    way the swap is retried, so the folder holds one run's variant whole (the last one's).
    Ctrl-C or SIGTERM waits for the renames: between them, the old variant is in the work
    folder that the stop removes, and the new one too."""
    asides = [staging.with_name(f"{staging.name}.replaced-{i}") for i in range(SWAP_TRIES)]
    try:
        with _stops_deferred():
            _rename_in(staging, target, asides)
    finally:
        for aside in asides:
            shutil.rmtree(aside, ignore_errors=True)


def _rename_in(staging: Path, target: Path, asides: list[Path]) -> None:
    for aside in asides:
        try:
            staging.rename(target)
            return
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        with contextlib.suppress(FileNotFoundError):  # another run moved it already
            target.rename(aside)
    raise SurgeError(f"{target}: other runs kept storing this variant; {staging} was not "
                     "moved in")


@contextlib.contextmanager
def _stops_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM held back in this block, delivered (their handlers run) after it."""
    stops = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
