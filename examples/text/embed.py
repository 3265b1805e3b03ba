"""Embed sentences with the served `minilm-text` pipeline over tritonclient (HTTP or gRPC): UTF-8
text in, all-MiniLM-L6-v2's normalised 384-d vector out, as sentence-transformers computes it.

    .venv/bin/python scripts/import_minilm.py
    surge serve out/text-repository &
    .venv-triton/bin/python examples/text/embed.py "a sentence" "another one"
    .venv-triton/bin/python examples/text/embed.py --grpc --url 127.0.0.1:8001 --json TEXT...
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from text_args import check_texts


def embed(url: str, model: str, texts: list[str], grpc: bool) -> np.ndarray:
    """FP32 [N, 384], one request."""
    if grpc:
        import tritonclient.grpc as client_lib
    else:
        import tritonclient.http as client_lib  # type: ignore[no-redef]
    client = client_lib.InferenceServerClient(url)
    rows = np.array([[t.encode("utf-8")] for t in texts], dtype=object)
    text = client_lib.InferInput("text", list(rows.shape), "BYTES")
    text.set_data_from_numpy(rows)
    result = client.infer(model, [text], outputs=[client_lib.InferRequestedOutput("embedding")])
    return result.as_numpy("embedding")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("texts", nargs="+")
    parser.add_argument("--url", default="127.0.0.1:8000", help="the server's host:port")
    parser.add_argument("--model", default="minilm-text")
    parser.add_argument("--grpc", action="store_true", help="gRPC instead of HTTP")
    parser.add_argument("--json", action="store_true", help="print the vectors as JSON")
    args = parser.parse_args()
    check_texts(parser, args.texts)
    vectors = embed(args.url, args.model, args.texts, args.grpc)
    if args.json:
        print(json.dumps(vectors.tolist()))
        return
    print(f"{vectors.shape[0]} x {vectors.shape[1]} embeddings, norms "
          f"{np.round(np.linalg.norm(vectors, axis=1), 4).tolist()}")
    if len(vectors) > 1:
        print("cosine similarities:")
        print(np.round(vectors @ vectors.T, 3))


if __name__ == "__main__":
    main()
