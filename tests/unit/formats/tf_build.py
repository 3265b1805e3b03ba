"""Writes small real models with TensorFlow's own tools; run by the `.venv-tf` interpreter.

`tf_build.py OUT` writes OUT/model.savedmodel/, OUT/model.h5, OUT/model.tflite,
OUT/model_int8.tflite, OUT/lambda.h5, OUT/inputs.npy and OUT/expected.npz (TensorFlow's and
LiteRT's own outputs for inputs.npy: `tf`, `tflite`, `tflite_int8`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402


def build() -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.layers.Input((8, 8, 3), name="image"),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(5, name="logits"),
    ])


def tflite(model: keras.Model, int8: bool) -> bytes:
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if int8:
        rng = np.random.default_rng(1)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([rng.random((1, 8, 8, 3), np.float32)]
                                                    for _ in range(32))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return bytes(converter.convert())


def tflite_outputs(path: Path, inputs: np.ndarray) -> np.ndarray:
    interpreter = tf.lite.Interpreter(model_path=str(path))
    runner = interpreter.get_signature_runner()
    detail = runner.get_input_details()["image"]
    scale, zero = detail["quantization"]
    feed = inputs if not scale else np.clip(np.round(inputs / scale) + zero, -128, 127).astype(np.int8)
    rows = [runner(image=feed[i:i + 1])["logits"] for i in range(len(feed))]
    out = np.concatenate(rows)
    detail = runner.get_output_details()["logits"]
    scale, zero = detail["quantization"]
    return out if not scale else (out.astype(np.float32) - zero) * scale


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model = build()
    tf.saved_model.save(model, str(out / "model.savedmodel"))
    model.save(out / "model.h5")
    (out / "model.tflite").write_bytes(tflite(model, int8=False))
    (out / "model_int8.tflite").write_bytes(tflite(model, int8=True))
    lam = keras.Sequential([keras.layers.Input((4,)), keras.layers.Lambda(lambda x: x * 2)])
    lam.save(out / "lambda.h5")
    inputs = np.random.default_rng(2).random((3, 8, 8, 3), np.float32)
    np.save(out / "inputs.npy", inputs)
    np.savez(out / "expected.npz", tf=model(inputs, training=False).numpy(),
             tflite=tflite_outputs(out / "model.tflite", inputs),
             tflite_int8=tflite_outputs(out / "model_int8.tflite", inputs))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
