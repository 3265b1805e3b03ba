"""Writes a small Caffe model in Caffe's own protobuf format; run by the `.venv-caffe` interpreter.

The schema is Caffe's `caffe.proto` as compiled in the caffe-onnx package (`proto.caffe_pb2`).
`caffe_build.py OUT` writes OUT/deploy.prototxt (text format), OUT/model.caffemodel (binary
NetParameter with the weights), OUT/inputs.npy and OUT/expected.npy: the network's outputs for
those inputs computed layer by layer in numpy, Caffe's definitions of each layer.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from google.protobuf import text_format
from proto import caffe_pb2

PROTOTXT = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 12 dim: 12 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc1" type: "InnerProduct" bottom: "pool1" top: "fc1" inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "fc1" top: "prob" }
"""


def blob(array: np.ndarray) -> caffe_pb2.BlobProto:
    proto = caffe_pb2.BlobProto()
    proto.shape.dim.extend(array.shape)
    proto.data.extend(array.ravel().tolist())
    return proto


def reference(x: np.ndarray, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray) -> np.ndarray:
    padded = np.pad(x[:, 0], ((0, 0), (1, 1), (1, 1)))
    conv = np.stack([sum(w1[o, 0, i, j] * padded[:, i:i + 12, j:j + 12] for i in range(3) for j in range(3))
                     + b1[o] for o in range(4)], axis=1)
    pooled = np.maximum(conv, 0).reshape(len(x), 4, 6, 2, 6, 2).max(axis=(3, 5))
    logits = pooled.reshape(len(x), -1) @ w2.T + b2
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    w1, b1 = rng.standard_normal((4, 1, 3, 3), np.float32), rng.standard_normal(4, np.float32)
    w2, b2 = rng.standard_normal((5, 144), np.float32) * 0.1, rng.standard_normal(5, np.float32)
    (out / "deploy.prototxt").write_text(PROTOTXT)
    weights = caffe_pb2.NetParameter()
    text_format.Merge(PROTOTXT, weights)
    for layer in weights.layer:
        layer.blobs.extend({"conv1": [blob(w1), blob(b1)], "fc1": [blob(w2), blob(b2)]}.get(layer.name, []))
    (out / "model.caffemodel").write_bytes(weights.SerializeToString())
    inputs = rng.random((3, 1, 12, 12), np.float32)
    np.save(out / "inputs.npy", inputs)
    np.save(out / "expected.npy", reference(inputs, w1, b1, w2, b2))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
