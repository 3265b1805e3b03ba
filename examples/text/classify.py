"""Classify texts with a served text-classification pipeline (text in, labels out) over
tritonclient: no tokenizer and no label table on the client.

    surge train recipes/text-bag.yaml --nproc 2          # writes reuters-bag and reuters-bag-text
    surge serve out/text-repository &
    .venv-triton/bin/python examples/text/classify.py "oil prices rose as opec cut output"
    .venv-triton/bin/python examples/text/classify.py --model reuters-minilm-text --json TEXT...

Each text goes as one row of `text` BYTES [N, 1] (UTF-8); the pipeline answers `labels` BYTES
[N, k] and `scores` FP32 [N, k], best first.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import tritonclient.http as httpclient
from text_args import check_texts


def classify(url: str, model: str, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(labels [N, k] as str, scores [N, k])."""
    client = httpclient.InferenceServerClient(url)
    rows = np.array([[t.encode("utf-8")] for t in texts], dtype=object)
    text = httpclient.InferInput("text", list(rows.shape), "BYTES")
    text.set_data_from_numpy(rows, binary_data=True)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=True) for n in ("labels", "scores")]
    result = client.infer(model, [text], outputs=outputs)
    labels = np.vectorize(lambda b: b.decode("utf-8"))(result.as_numpy("labels"))
    return labels, result.as_numpy("scores")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("texts", nargs="+")
    parser.add_argument("--url", default="127.0.0.1:8000", help="the server's HTTP host:port")
    parser.add_argument("--model", default="reuters-bag-text")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    check_texts(parser, args.texts)
    labels, scores = classify(args.url, args.model, args.texts)
    if args.json:
        print(json.dumps({"labels": labels.tolist(), "scores": scores.tolist()}))
        return
    for text, names, values in zip(args.texts, labels, scores, strict=True):
        ranked = ", ".join(f"{n} {v:.2f}" for n, v in zip(names, values, strict=True))
        print(f"{ranked}  <-  {text[:70]}")


if __name__ == "__main__":
    main()
