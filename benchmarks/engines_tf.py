"""TensorFlow side of benchmarks/engines.py: the same network in Keras, its files, its speed.

Run by the TensorFlow interpreter (`.venv-tf/bin/python`), never imported by Surge or by the
serving venv. Imports only the standard library, numpy, TensorFlow and tf_keras.

    engines_tf.py --arch resnet|fashion --weights W.npz --samples S.npz --out DIR --threads N

W.npz holds the torch module's state dict (numpy arrays under the torch names), so TensorFlow
computes the same function as the ONNX files the other engines run. The Keras model takes the
same NCHW `image` and turns it to NHWC itself (TensorFlow's CPU convolutions are NHWC only).
S.npz holds `image` (the rows every engine's parity is measured on) and `calibration` (the
representative data for TFLite's int8 converter: the same rows `surge optimize` calibrates on).

Writes DIR/model.savedmodel (serving_default: image -> logits), DIR/fp32.tflite, DIR/int8.tflite
(full-integer: int8 weights, activations, input and output) and DIR/reference.npy (TensorFlow's
own logits on `image`), then prints one JSON line with their paths. Then, for each line
`{"batch": B, "seconds": S}` on stdin, prints `{"items_per_s": R}`: the Keras model in a
`tf.function` on CPU, numpy in and out like the other engines' runners. EOF ends it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tf2onnx and the TFLite converter take TF-Keras models

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402
from tf_keras import layers  # noqa: E402

BN_EPSILON = 1e-5  # torch's BatchNorm2d default (Keras defaults to 1e-3)
Weights = dict[str, np.ndarray]


def conv_kernel(w: Weights, prefix: str) -> list[np.ndarray]:
    return [w[f"{prefix}.weight"].transpose(2, 3, 1, 0)]  # torch [out, in, kh, kw] -> [kh, kw, in, out]


def bn_weights(w: Weights, prefix: str) -> list[np.ndarray]:
    return [w[f"{prefix}.{n}"] for n in ("weight", "bias", "running_mean", "running_var")]


def dense_weights(w: Weights, prefix: str, nhwc: tuple[int, ...] | None = None) -> list[np.ndarray]:
    """Kernel [in, out]; after a Flatten of an NHWC map its rows are reordered, since torch
    flattened (C, H, W) and Keras flattens (H, W, C)."""
    kernel = w[f"{prefix}.weight"]  # [out, in]
    if nhwc is not None:
        height, width, channels = nhwc
        kernel = kernel.reshape(-1, channels, height, width).transpose(0, 2, 3, 1).reshape(len(kernel), -1)
    return [kernel.T, w[f"{prefix}.bias"]]


class Builder:
    """Builds Keras layers and remembers which torch module's weights each one takes."""

    def __init__(self) -> None:
        self.loaders: list[tuple[Any, Callable[[Weights], list[np.ndarray]]]] = []

    def conv(self, h: Any, prefix: str, filters: int, kernel: int, stride: int = 1, pad: int = 0) -> Any:
        # torch pads both sides alike; TF's "same" puts the odd pixel of padding on the far side
        # when striding, so strided convolutions get explicit zero padding and "valid"
        if stride == 1 and pad == kernel // 2:
            layer = layers.Conv2D(filters, kernel, padding="same", use_bias=False)
        else:
            h = layers.ZeroPadding2D(pad)(h) if pad else h
            layer = layers.Conv2D(filters, kernel, strides=stride, padding="valid", use_bias=False)
        self.loaders.append((layer, lambda w: conv_kernel(w, prefix)))
        return layer(h)

    def bn(self, h: Any, prefix: str) -> Any:
        layer = layers.BatchNormalization(epsilon=BN_EPSILON)
        self.loaders.append((layer, lambda w: bn_weights(w, prefix)))
        return layer(h)

    def dense(self, h: Any, prefix: str, units: int, name: str | None = None,
              activation: str | None = None) -> Any:
        nhwc = None
        if len(h.shape) == 4:  # a feature map: flatten it here, as torch's nn.Flatten did
            nhwc = tuple(int(d) for d in h.shape[1:])
            h = layers.Flatten()(h)
        layer = layers.Dense(units, activation=activation, name=name)
        self.loaders.append((layer, lambda w: dense_weights(w, prefix, nhwc)))
        return layer(h)

    def load(self, weights: Weights) -> None:
        for layer, take in self.loaders:
            layer.set_weights(take(weights))


def nhwc_input(shape: tuple[int, ...]) -> tuple[Any, Any]:
    image = keras.Input(shape, name="image")  # NCHW, as the ONNX files take it
    return image, layers.Permute((2, 3, 1))(image)


def fashion(b: Builder, shape: tuple[int, ...], mean: float, std: float, width: int = 32,
            hidden: int = 128, classes: int = 10) -> Any:
    """surge_examples.fashion.model.FashionCNN: (conv-bn-relu x2, max-pool) x2, two Linear."""
    image, h = nhwc_input(shape)
    h = layers.Rescaling(1 / std, offset=-mean / std)(h)
    for stage, filters in enumerate((width, 2 * width)):
        for block in range(2):  # torch's `features`: conv, bn, relu, conv, bn, relu, pool per stage
            index = 7 * stage + 3 * block
            h = b.bn(b.conv(h, f"features.{index}", filters, 3, pad=1), f"features.{index + 1}")
            h = layers.ReLU()(h)
        h = layers.MaxPooling2D(2)(h)
    h = b.dense(h, "classifier.1", hidden, activation="relu")
    return keras.Model(image, b.dense(h, "classifier.4", classes, name="logits"))


def basic_block(b: Builder, h: Any, prefix: str, filters: int, stride: int) -> Any:
    identity = h
    if stride != 1 or int(h.shape[-1]) != filters:
        identity = b.bn(b.conv(h, f"{prefix}.downsample.0", filters, 1, stride), f"{prefix}.downsample.1")
    out = layers.ReLU()(b.bn(b.conv(h, f"{prefix}.conv1", filters, 3, stride, pad=1), f"{prefix}.bn1"))
    out = b.bn(b.conv(out, f"{prefix}.conv2", filters, 3, pad=1), f"{prefix}.bn2")
    return layers.ReLU()(layers.Add()([out, identity]))


def resnet(b: Builder, shape: tuple[int, ...], width: int = 64, classes: int = 1000) -> Any:
    """surge.zoo.resnet.ResNet18: 7x7/2 stem, 3x3/2 max-pool, four stages of two blocks."""
    image, h = nhwc_input(shape)
    h = layers.ReLU()(b.bn(b.conv(h, "stem.0", width, 7, stride=2, pad=3), "stem.1"))
    # zero padding equals torch's -inf padding here: the input is a ReLU's, never negative
    h = layers.MaxPooling2D(3, strides=2)(layers.ZeroPadding2D(1)(h))
    for stage, filters in enumerate((width, 2 * width, 4 * width, 8 * width)):
        h = basic_block(b, h, f"layers.{2 * stage}", filters, 1 if stage == 0 else 2)
        h = basic_block(b, h, f"layers.{2 * stage + 1}", filters, 1)
    h = layers.GlobalAveragePooling2D()(h)
    return keras.Model(image, b.dense(h, "fc", classes, name="logits"))


def build(arch: str, weights: Weights, shape: tuple[int, ...], mean: float, std: float) -> Any:
    builder = Builder()
    model = resnet(builder, shape) if arch == "resnet" else fashion(builder, shape, mean, std)
    builder.load(weights)
    return model


def serving_function(model: Any, shape: tuple[int, ...]) -> Any:
    @tf.function(input_signature=[tf.TensorSpec([None, *shape], tf.float32, name="image")])
    def serve(image: Any) -> dict[str, Any]:
        return {"logits": model(image, training=False)}

    return serve


def tflite_files(saved: Path, calibration: np.ndarray, out: Path) -> dict[str, Path]:
    """fp32, and full-integer int8 (TensorFlow's int8 path: weights, activations, input and
    output all int8, calibrated on `calibration`), both from the SavedModel's signature."""
    def representative() -> Iterator[list[np.ndarray]]:
        for row in calibration:
            yield [row[None]]

    files = {"fp32": out / "fp32.tflite", "int8": out / "int8.tflite"}
    files["fp32"].write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(saved)).convert())
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    files["int8"].write_bytes(converter.convert())
    return files


def items_per_second(serve: Any, shape: tuple[int, ...], batch: int, seconds: float) -> float:
    """As surge.tuning.engines.items_per_second: one warm-up call, then calls for `seconds`."""
    x = np.random.default_rng(0).random((batch, *shape), dtype=np.float32)
    serve(x)["logits"].numpy()
    calls, start = 0, time.perf_counter()
    while True:
        serve(x)["logits"].numpy()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls * batch / elapsed


def answer(serve: Any, shape: tuple[int, ...], requests: TextIO,
           reply: Callable[[dict[str, Any]], None]) -> None:
    for line in filter(str.strip, requests):
        request = json.loads(line)
        rate = items_per_second(serve, shape, int(request["batch"]), float(request["seconds"]))
        reply({"items_per_s": rate})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", choices=("resnet", "fashion"), required=True)
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--samples", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: TensorFlow's default)")
    parser.add_argument("--mean", type=float, default=0.0, help="fashion: input normalization")
    parser.add_argument("--std", type=float, default=1.0)
    args = parser.parse_args()
    # the JSON lines go to the real stdout; anything TensorFlow prints goes to stderr
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)

    def reply(message: dict[str, Any]) -> None:
        replies.write(json.dumps(message) + "\n")
        replies.flush()

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)  # as the other engines' runners: one op at a time
    with np.load(args.weights) as w, np.load(args.samples) as s:
        weights, image, calibration = dict(w), s["image"], s["calibration"]
    shape = tuple(image.shape[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    model = build(args.arch, weights, shape, args.mean, args.std)
    serve = serving_function(model, shape)
    np.save(args.out / "reference.npy", serve(image)["logits"].numpy())
    saved = args.out / "model.savedmodel"
    tf.saved_model.save(model, str(saved), signatures={"serving_default": serve})
    files = tflite_files(saved, calibration, args.out)
    reply({"savedmodel": str(saved), "reference": str(args.out / "reference.npy"),
           **{f"tflite_{k}": str(v) for k, v in files.items()}})
    answer(serve, shape, sys.stdin, reply)


if __name__ == "__main__":
    main()
