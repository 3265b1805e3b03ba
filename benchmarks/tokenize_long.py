"""Long texts through the `text.tokenize` processor, with the shipped MiniLM tokenizer: the time
of tokenizing the whole row and truncating (before) against the processor's (after: only the
part truncation keeps; rows over MAX_TEXT_BYTES refused), for 1 KiB to 10 MiB of English, CJK
and text without any whitespace, and that both give the same ids.

    .venv/bin/python benchmarks/tokenize_long.py
    .venv/bin/python benchmarks/tokenize_long.py --max-length 128 --repeat 5
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from surge.errors import InputError
from surge.processors.text import MAX_TEXT_BYTES, load_tokenizer, tokenize
from surge.zoo.minilm import tokenizer_file

SIZES = {"1 KiB": 1 << 10, "100 KiB": 100 << 10, "1 MiB": 1 << 20, "10 MiB": 10 << 20}
KINDS = {
    "english": "The quick brown fox jumps over the lazy dog, and Surge serves it today. ",
    "cjk": "服务器把模型的输出返回给客户端",
    "no-space": "a",
}


def text_of(kind: str, size: int) -> str:
    """`size` bytes (UTF-8) of `kind`, cut at a character boundary."""
    unit = KINDS[kind]
    raw = (unit * (size // len(unit.encode()) + 1)).encode()[:size]
    return raw.decode("utf-8", errors="ignore")


def best_ms(run: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """The fastest of `repeat` runs in milliseconds, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - started)
    return best * 1e3, result


def after(text: str, params: dict[str, Any]) -> list[int] | str:
    try:
        got = tokenize({"text": np.array([[text.encode()]], dtype=object)}, params)
    except InputError:
        return "refused"
    return [int(i) for i in got["input_ids"][0]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    path = str(tokenizer_file())
    params = {"tokenizer": path, "max_length": args.max_length}
    tokenizer = load_tokenizer(path, args.max_length)
    after("warm up", params)
    print(f"max_length {args.max_length}, rows over {MAX_TEXT_BYTES} bytes refused")
    print(f"{'text':20s} {'before ms':>10s} {'after ms':>10s} {'speed-up':>9s}  same ids")
    for kind in KINDS:
        for label, size in SIZES.items():
            text = text_of(kind, size)
            before_ms, whole = best_ms(lambda t=text: tokenizer.encode_batch([t])[0].ids, 1
                                       if size > MAX_TEXT_BYTES else args.repeat)
            after_ms, ids = best_ms(lambda t=text: after(t, params), args.repeat)
            same = "refused" if ids == "refused" else str(ids == whole)
            print(f"{kind + ' ' + label:20s} {before_ms:10.2f} {after_ms:10.2f} "
                  f"{before_ms / max(after_ms, 1e-6):8.0f}x  {same}")


if __name__ == "__main__":
    main()
