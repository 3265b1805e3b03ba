"""Real photos for the ImageNet classifiers: the images scikit-image ships in its wheel (no
download), more views of each made by flipping and cropping, and torchvision's preprocessing.

No ImageNet labels can be installed from a package registry, so the photos carry no ground truth:
the datasets made from them (`surge_examples.images.data`) are labelled with the fp32 PyTorch
model's own top-1 class, and a variant's "accuracy" on them is its top-1 agreement with fp32.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The colour and grayscale photos of skimage.data that ship in its wheel.
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle", "immunohistochemistry",
          "hubble_deep_field", "retina", "colorwheel", "camera", "clock", "moon", "brick",
          "grass", "gravel", "coins", "page", "text")
# Views of a photo as (left, top, width, height) fractions of it; each also mirrored.
EVALUATION_VIEWS = ((0.0, 0.0, 1.0, 1.0), (0.0, 0.0, 0.75, 0.75), (0.25, 0.0, 0.75, 0.75),
                    (0.0, 0.25, 0.75, 0.75), (0.25, 0.25, 0.75, 0.75))
# Calibration views (int8-static) are other crops of the same photos, not the evaluated ones.
CALIBRATION_VIEWS = ((0.1, 0.1, 0.8, 0.8), (0.0, 0.2, 0.6, 0.6), (0.4, 0.0, 0.6, 0.6),
                     (0.2, 0.4, 0.6, 0.6))


def photos() -> dict[str, np.ndarray]:
    """name -> uint8 RGB [H, W, 3] (grayscale scans repeated over the three channels)."""
    import skimage.data

    found = {}
    for name in PHOTOS:
        image = getattr(skimage.data, name)()
        image = image[0] if isinstance(image, tuple) else image
        found[name] = np.stack([image] * 3, axis=-1) if image.ndim == 2 else image[..., :3]
    return found


def views(rgb: np.ndarray, boxes: Sequence[tuple[float, float, float, float]]) -> list[np.ndarray]:
    """Each box of the photo, then each mirrored left to right."""
    height, width = rgb.shape[:2]
    crops = []
    for left, top, w, h in boxes:
        x, y = round(left * width), round(top * height)
        crops.append(np.ascontiguousarray(rgb[y:y + round(h * height), x:x + round(w * width)]))
    return crops + [np.ascontiguousarray(c[:, ::-1]) for c in crops]


def all_views(boxes: Sequence[tuple[float, float, float, float]]) -> list[np.ndarray]:
    return [view for rgb in photos().values() for view in views(rgb, boxes)]


def framework_input(rgb: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """torchvision's ImageNet preprocessing in Pillow and numpy (antialiased bilinear resize of
    the shorter side to 256, center crop 224, scale to [0, 1], mean/std): FP32 [3, 224, 224]."""
    image = Image.fromarray(rgb)
    scale = 256 / min(image.size)
    image = image.resize((max(224, round(image.width * scale)),
                          max(224, round(image.height * scale))), Image.Resampling.BILINEAR)
    left, top = (image.width - 224) // 2, (image.height - 224) // 2
    image = image.crop((left, top, left + 224, top + 224))
    pixels = (np.asarray(image, np.float32) / 255 - np.asarray(mean, np.float32)) / \
        np.asarray(std, np.float32)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    import simplejpeg

    return bytes(simplejpeg.encode_jpeg(np.ascontiguousarray(rgb), quality=quality))
