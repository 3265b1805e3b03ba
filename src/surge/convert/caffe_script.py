"""Caffe `deploy.prototxt` + `.caffemodel` -> ONNX with the `caffe-onnx` converter.

Run by the Caffe interpreter (`.venv-caffe/bin/python caffe_script.py ...`), never imported by
Surge: caffe-onnx needs protobuf < 4 (its generated `caffe_pb2` predates protobuf 4) and installs
top-level modules named `src` and `proto`, so it cannot share the serving venv.
Exit status 3 with one line on stderr when a file cannot be read or converted.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from pathlib import Path


def fail(message: str) -> None:
    print(message, file=sys.stderr)
    sys.exit(3)


def _read(prototxt: Path, caffemodel: Path) -> tuple[object, object]:
    from google.protobuf import text_format
    from proto import caffe_upsample_pb2 as caffe_pb2

    net = caffe_pb2.NetParameter()
    try:
        text_format.Merge(prototxt.read_text(), net)
    except (text_format.ParseError, UnicodeDecodeError) as exc:
        fail(f"{prototxt}: not a Caffe network definition ({str(exc).splitlines()[0]})")
    weights = caffe_pb2.NetParameter()
    try:
        weights.ParseFromString(caffemodel.read_bytes())
    except Exception as exc:  # protobuf's DecodeError, or a truncated message
        fail(f"{caffemodel}: not a Caffe weights file ({exc})")
    if not any(layer.blobs for layer in weights.layer):
        fail(f"{caffemodel}: holds no layer weights")
    return net, weights


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prototxt", type=Path, required=True)
    parser.add_argument("--caffemodel", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    import onnx
    from src.caffe2onnx import Caffe2Onnx

    net, weights = _read(args.prototxt, args.caffemodel)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the converter narrates every layer
            model = Caffe2Onnx(net, weights, args.prototxt.parent.name or "caffe").createOnnxModel()
        onnx.checker.check_model(model)
    except Exception as exc:
        fail(f"{args.caffemodel}: caffe-onnx cannot convert it ({type(exc).__name__}: {exc})")
    onnx.save(model, str(args.output))


if __name__ == "__main__":
    main()
