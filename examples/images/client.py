"""Send photos as JPEG/PNG bytes to the `imagenet` pipeline with tritonclient; print the top 5.

    surge serve examples/images/repository &
    .venv-triton/bin/python examples/images/client.py photo.jpg other.png [--json out.json]

The server decodes, resizes and normalises the files and names the classes: the client sends the
files as they are, one BYTES row each, and reads labels BYTES [N, 5] and scores FP32 [N, 5].
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient


def classify(url: str, model: str, files: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """labels [N, 5] (str) and scores [N, 5] for N files, in one request."""
    client = httpclient.InferenceServerClient(url)
    image = httpclient.InferInput("image", [len(files)], "BYTES")
    image.set_data_from_numpy(np.array(files, dtype=object), binary_data=True)
    result = client.infer(model, [image])
    labels = np.vectorize(lambda b: b.decode())(result.as_numpy("labels"))
    return labels, result.as_numpy("scores")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", type=Path, nargs="+", help="JPEG or PNG files")
    parser.add_argument("--url", default="127.0.0.1:8000", help="server HTTP host:port")
    parser.add_argument("--model", default="imagenet")
    parser.add_argument("--batch", type=int, default=8, help="files per request")
    parser.add_argument("--json", type=Path, help="also save {file: [[label, score], ...]} here")
    args = parser.parse_args()

    # A few files per request: the pipeline takes at most its max_batch_size rows at once.
    files = [f.read_bytes() for f in args.files]
    chunks = [classify(args.url, args.model, files[i:i + args.batch])
              for i in range(0, len(files), args.batch)]
    labels = np.concatenate([c[0] for c in chunks])
    scores = np.concatenate([c[1] for c in chunks])
    answers = {}
    for path, names, probs in zip(args.files, labels, scores, strict=True):
        answers[path.name] = [[n, float(p)] for n, p in zip(names, probs, strict=True)]
        print(f"{path.name}: " + ", ".join(f"{n} {p:.2f}" for n, p in zip(names, probs, strict=True)))
    if args.json:
        args.json.write_text(json.dumps(answers, indent=1))


if __name__ == "__main__":
    main()
