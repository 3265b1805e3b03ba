"""Optimize a repository model: build its source, make each requested variant, keep those that
pass the tolerance under `REPO/NAME/variants/<variant>/` (variant.yaml + model.<ext>)."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from surge.errors import ConfigError, ModelLoadError, SurgeError
from surge.optimize.finetune import fashion_finetune
from surge.optimize.mixed_precision import PrecisionConfig
from surge.optimize.quantize import Int8StaticConfig
from surge.optimize.registry import OptimizeConfig, apply
from surge.optimize.source import Inputs, ModelSource
from surge.optimize.variant import Tolerance, Variant
from surge.repository import Repository
from surge.repository.repository import VARIANT_FILE, VARIANTS_DIR
from surge.runtimes import Signature, example_inputs

CHECK_ROWS = 10_000  # the whole Fashion-MNIST test split; other models use fewer (see below)
CALIBRATION_ROWS = 512


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
    """Fine-tune epochs for pruned Fashion-MNIST models (0 = none); one epoch left prune-50
    1.1-1.2 accuracy points down, two brought it within 0.7."""
    exclude: tuple[str, ...] = ()
    """ONNX node names left in fp32 by quantization."""
    check_rows: int = CHECK_ROWS
    """Rows of the default check data (Fashion-MNIST test images) each variant is run on."""


def default_tolerance(task: str, has_labels: bool) -> Tolerance:
    if task == "classifier":
        return Tolerance(min_top1=0.9, max_accuracy_drop=1.0 if has_labels else None)
    if task == "embedding":
        return Tolerance(min_cosine=0.98)
    return Tolerance()


def _module_from_factory(repo: Repository, name: str) -> Any:
    from surge.runtimes.torch_runner import load_state_dict, resolve_factory

    config = repo.config(name)
    if config.resolved_engine() != "torch_factory" or not config.factory:
        raise ConfigError(f"--torch-model {name!r} is not a torch_factory model")
    module = resolve_factory(config.factory)(**config.factory_kwargs)
    module.load_state_dict(load_state_dict(repo.model_file(name)))
    return module.eval()


def _signature(repo: Repository, name: str) -> Signature:
    return repo.load(name).signature


def _is_fashion(signature: Signature) -> bool:
    first, out = signature.inputs[0], signature.outputs[0]
    return (len(signature.inputs) == 1 and first.datatype == "FP32"
            and tuple(first.shape[1:]) == (1, 28, 28) and tuple(out.shape[1:]) == (10,))


def _load_calibration(path: Path, signature: Signature) -> Inputs:
    if not path.is_file():
        raise ConfigError(f"calibration data {path} not found")
    if path.suffix == ".npz":
        with np.load(path) as archive:
            data = {k: archive[k] for k in archive.files}
    elif path.suffix == ".npy":
        if len(signature.inputs) != 1:
            raise ConfigError(f"{path}: a .npy holds one array; this model has inputs "
                              f"{signature.input_names}: give a .npz with one array per input")
        data = {signature.inputs[0].name: np.load(path, allow_pickle=False)}
    else:
        raise ConfigError(f"calibration data {path}: expected a .npy or .npz file")
    for spec in signature.inputs:
        if spec.name not in data:
            raise ConfigError(f"{path}: no array for input {spec.name!r}")
        array = data[spec.name]
        if not spec.matches_shape(array.shape):
            raise ConfigError(f"{path}: input {spec.name!r} expects {spec.describe()}, "
                              f"got {array.dtype} {list(array.shape)}")
    return data


def build_source(repo: Repository, name: str, options: OptimizeOptions, work_dir: Path) -> ModelSource:
    """The original model (module and/or ONNX), its check samples and calibration data."""
    config = repo.config(name)
    path = repo.model_file(name)
    signature = _signature(repo, name)
    module = onnx_path = None
    if config.resolved_engine() == "torch_factory":
        module = _module_from_factory(repo, name)
    elif path.suffix == ".onnx":
        onnx_path = path
        torch_model = options.torch_model or config.parameters.get("torch_model")
        module = _module_from_factory(repo, torch_model) if torch_model else None
    else:
        raise ModelLoadError(f"{path}: optimize starts from an ONNX or torch_factory model")
    calibration = (_load_calibration(options.calibration, signature)
                   if options.calibration else None)
    samples, labels, finetune = _defaults(signature, calibration, options)
    if calibration is None and _is_fashion(signature) and samples is not None:
        calibration = _fashion_calibration()
    task = config.parameters.get("task") or ("classifier" if config.labels else "other")
    if task not in ("classifier", "embedding", "other"):
        raise ConfigError(f"{name}: parameters.task {task!r} must be classifier, embedding or other")
    return ModelSource(
        name=name, input_names=signature.input_names, output_names=signature.output_names,
        samples=samples, module=module, onnx_path=onnx_path, task=task, labels=labels,  # type: ignore[arg-type]
        calibration=calibration, finetune=finetune, work_dir=work_dir,
    )


def _fashion_calibration() -> Inputs:
    from surge.data.fashion_mnist import load_fashion_mnist, to_model_input

    images, _ = load_fashion_mnist("train")
    order = np.random.default_rng(0).permutation(len(images))[:CALIBRATION_ROWS]
    return {"image": to_model_input(images[np.sort(order)])}


def _defaults(signature: Signature, calibration: Inputs | None,
              options: OptimizeOptions) -> tuple[Any, Any, Any]:
    """Check samples, their labels and the default fine-tune: Fashion-MNIST's test split for the
    Fashion-MNIST model, else calibration rows, else random inputs."""
    if _is_fashion(signature):
        try:
            from surge.data.fashion_mnist import load_fashion_mnist, to_model_input

            images, labels = load_fashion_mnist("test")
        except Exception:  # data not installed: fall through to the generic samples
            pass
        else:
            finetune = fashion_finetune(options.finetune_epochs) if options.finetune_epochs else None
            name = signature.inputs[0].name
            rows = options.check_rows
            return {name: to_model_input(images[:rows])}, labels[:rows], finetune
    if calibration is not None:
        return {k: v[:256] for k, v in calibration.items()}, None, None
    return example_inputs(signature, batch_size=64), None, None


def _check_requests(source: ModelSource, configs: dict[str, OptimizeConfig]) -> None:
    """Refuse up front what cannot be made, so nothing is half done."""
    for name, config in configs.items():
        if isinstance(config, Int8StaticConfig) and source.calibration is None:
            raise ConfigError(f"variant {name!r} needs calibration data: pass --calib DATA.npy")
        torch_only = config.verb in ("prune", "low_rank") or (
            isinstance(config, PrecisionConfig) and config.engine == "torch")
        if torch_only:
            source.require_module(f"variant {name!r}")


def optimize_model(repo_path: Path, name: str, configs: dict[str, OptimizeConfig],
                   options: OptimizeOptions | None = None) -> list[Outcome]:
    """Make, check and store each variant; failures are reported, not silently kept."""
    options = options or OptimizeOptions()
    repo = Repository(repo_path)
    variants_dir = repo.model_dir(name) / VARIANTS_DIR
    variants_dir.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=variants_dir, prefix=".work-") as tmp:
        source = build_source(repo, name, options, Path(tmp))
        tolerance = options.tolerance or default_tolerance(source.task, source.labels is not None)
        _check_requests(source, configs)
        return [_one(source, variant_name, _with_exclude(config, options.exclude), tolerance,
                     variants_dir, Path(tmp), options.keep_failed)
                for variant_name, config in configs.items()]


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
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        return Outcome(name, None, False, None, f"failed: {type(exc).__name__}: {first}")
    kept = variant.check.passed or keep_failed
    if not kept:
        return Outcome(name, variant, False, None)
    target = variants_dir / name
    if target.exists():
        shutil.rmtree(target)
    shutil.move(str(staging), target)
    stored = replace(variant, path=target / variant.path.name)
    info = stored.as_dict()
    info["tolerance"] = tolerance.describe()
    info["kept_despite_failing"] = not variant.check.passed
    (target / VARIANT_FILE).write_text(yaml.safe_dump(info, sort_keys=False))
    return Outcome(name, stored, True, target)
