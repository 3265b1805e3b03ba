"""Send one canvas to the detector with tritonclient and draw the boxes it returns onto a PNG.

    surge serve examples/repository &
    .venv-triton/bin/python examples/detection/client.py canvas.png --out boxes.png
    .venv-triton/bin/python examples/detection/client.py test/images.npy --index 3 --out boxes.png

    .venv-triton/bin/python examples/detection/client.py canvas.png --model detector-boxes

The input is a grayscale PNG or a .npy canvas (uint8 [128, 128], or [N, 128, 128] with --index).
`detector` takes the decoded canvas and answers boxes FP32 [1, K, 4] (x1, y1, x2, y2 pixels),
scores FP32 [1, K] and labels INT64 [1, K]; the client keeps the detections scoring at least the
model config's parameters.score_threshold (or --threshold). The pipeline `detector-boxes` takes
the PNG file itself (BYTES) and answers only the kept boxes, with their class names; a detector
whose config decodes in its workers (`preprocess:`) takes the PNG file and answers every box.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient
from PIL import Image, ImageDraw

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
COLORS = ("#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231",
          "#911eb4", "#46f0f0", "#f032e6", "#bcf60c", "#fabebe")


def read_canvas(path: Path, index: int) -> np.ndarray:
    """A uint8 [H, W] canvas from a PNG (converted to grayscale) or a .npy file."""
    if path.suffix == ".npy":
        array = np.load(path, allow_pickle=False, mmap_mode="r")
        array = array[index] if array.ndim == 3 else array
        return np.ascontiguousarray(array)
    return np.asarray(Image.open(path).convert("L"))


def detect(url: str, model: str, canvas: np.ndarray, as_png: bool = False
           ) -> tuple[np.ndarray, ...]:
    """boxes [K, 4], scores [K], labels [K] for one canvas, sent decoded or as a PNG file."""
    client = httpclient.InferenceServerClient(url)
    if as_png:
        image = httpclient.InferInput("image", [1], "BYTES")
        image.set_data_from_numpy(np.array([png_bytes(canvas)], dtype=object), binary_data=True)
    else:
        image = httpclient.InferInput("image", [1, *canvas.shape], "UINT8")
        image.set_data_from_numpy(canvas[None], binary_data=True)
    outputs = [httpclient.InferRequestedOutput(name, binary_data=True)
               for name in ("boxes", "scores", "labels")]
    result = client.infer(model, [image], outputs=outputs)
    return tuple(result.as_numpy(name)[0] for name in ("boxes", "scores", "labels"))


def png_bytes(canvas: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(canvas).save(buffer, "PNG")
    return buffer.getvalue()


def config_threshold(url: str, model: str) -> float:
    """The model config's parameters.score_threshold: the server says which scores count."""
    config = httpclient.InferenceServerClient(url).get_model_config(model)
    return float(config["parameters"]["score_threshold"]["string_value"])


def detect_kept(url: str, model: str, canvas: np.ndarray) -> tuple[np.ndarray, ...]:
    """The pipeline: PNG bytes in; the kept boxes [K, 4], scores [K], class names [K] out."""
    client = httpclient.InferenceServerClient(url)
    image = httpclient.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([png_bytes(canvas)], dtype=object), binary_data=True)
    result = client.infer(model, [image])
    count = int(result.as_numpy("count")[0])
    names = [n.decode() for n in result.as_numpy("labels")[0][:count]]
    labels = np.array([CLASSES.index(n) for n in names], np.int64)
    return result.as_numpy("boxes")[0][:count], result.as_numpy("scores")[0][:count], labels


def served_as(url: str, model: str) -> tuple[bool, bool]:
    """Whether the model takes PNG files (BYTES), and whether it answers only the kept boxes
    (the pipeline's `count` output) rather than every box with its score."""
    metadata = httpclient.InferenceServerClient(url).get_model_metadata(model)
    takes_files = metadata["inputs"][0]["datatype"] == "BYTES"
    return takes_files, any(output["name"] == "count" for output in metadata["outputs"])


def draw(canvas: np.ndarray, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
         zoom: int) -> Image.Image:
    """The canvas enlarged `zoom` times with one labelled rectangle per detection."""
    picture = Image.fromarray(canvas).convert("RGB").resize(
        (canvas.shape[1] * zoom, canvas.shape[0] * zoom), Image.Resampling.NEAREST)
    pen = ImageDraw.Draw(picture)
    for box, score, label in zip(boxes, scores, labels, strict=True):
        color = COLORS[int(label) % len(COLORS)]
        x1, y1, x2, y2 = (float(v) * zoom for v in box)
        pen.rectangle((x1, y1, x2, y2), outline=color, width=2)
        pen.text((x1 + 2, max(y1 - 11, 0)), f"{CLASSES[int(label)]} {score:.2f}", fill=color)
    return picture


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", type=Path, help="PNG or .npy canvas")
    parser.add_argument("--index", type=int, default=0, help="row of an [N, H, W] .npy file")
    parser.add_argument("--url", default="127.0.0.1:8000", help="server HTTP host:port")
    parser.add_argument("--model", default="detector")
    parser.add_argument("--threshold", type=float, default=None,
                        help="lowest score kept (default: the model config's score_threshold)")
    parser.add_argument("--out", type=Path, default=Path("detections.png"))
    parser.add_argument("--zoom", type=int, default=4, help="enlargement of the drawn PNG")
    args = parser.parse_args()

    canvas = read_canvas(args.image, args.index)
    takes_files, kept = served_as(args.url, args.model)
    if kept:
        boxes, scores, labels = detect_kept(args.url, args.model, canvas)
    else:
        boxes, scores, labels = detect(args.url, args.model, canvas, as_png=takes_files)
    threshold = args.threshold
    if threshold is None:  # a pipeline answers only the boxes at the config's threshold
        threshold = 0.0 if kept else config_threshold(args.url, args.model)
    keep = scores >= threshold
    for box, score, label in zip(boxes[keep], scores[keep], labels[keep], strict=True):
        print(f"{CLASSES[int(label)]:<12} {score:.3f}  box {np.round(box, 1).tolist()}")
    draw(canvas, boxes[keep], scores[keep], labels[keep], args.zoom).save(args.out)
    print(f"{int(keep.sum())} detection(s) drawn to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
