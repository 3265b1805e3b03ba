"""Tokenizing only the part of a long text that truncation keeps.

A tokenizer normalizes a text, splits it into words and tokenizes each word on its own. When its
normalizer works character by character (`CHARACTERWISE_NORMALIZERS`) and its pre-tokenizer
always ends a word before certain characters (whitespace; ASCII punctuation for BERT's; CJK
ideographs where BERT's normalizer spaces them out), a text cut just before one of those
characters tokenizes into the tokens of its parts, one after the other, as long as no added
token (`[MASK]`, ...) holds such a character. A long row is then tokenized piece by piece, only
until `max_length` tokens are reached; the pieces' tokens, joined and post-processed (special
tokens, truncation), are the ids of tokenizing the whole text and truncating it. Pieces with no
token at all (a run of whitespace) are dropped on the way. Any other tokenizer gets whole rows.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

WHITESPACE = " \t\n\r"  # whitespace to Python, to Rust and to every pre-tokenizer below
CJK_RANGES = "\u3400-\u4dbf\u4e00-\u9fff"  # ideographs BERT's normalizer surrounds with spaces
CHARACTERWISE_NORMALIZERS = frozenset({"BertNormalizer", "Lowercase", "StripAccents", "NFD"})
WORD_SPLITTERS = frozenset({"BertPreTokenizer", "Whitespace", "WhitespaceSplit"})
CHARS_PER_TOKEN = 8  # a piece's length in characters per token of max_length


@dataclass(frozen=True)
class PrefixPlan:
    """Where a text may be cut (`cuts`: before a match) and how long a piece is, at least."""

    cuts: re.Pattern[str]
    window: int

    def pieces(self, text: str) -> Iterator[str]:
        """`text` in consecutive pieces of at least `window` characters (the last: the rest),
        each ending just before a cut character."""
        start = 0
        while start < len(text):
            found = self.cuts.search(text, start + self.window)
            end = found.start() if found else len(text)
            yield text[start:end]
            start = end


def prefix_plan(config: Mapping[str, Any], max_length: int) -> PrefixPlan | None:
    """How to cut texts for the tokenizer described by `config` (its tokenizer.json), or None
    when its normalizer, pre-tokenizer or added tokens may join characters across a cut."""
    normalizers = _normalizers(config.get("normalizer"))
    pre_tokenizer = (config.get("pre_tokenizer") or {}).get("type")
    if normalizers is None or pre_tokenizer not in WORD_SPLITTERS:
        return None
    added = list(config.get("added_tokens") or ())
    in_added = {char for token in added for char in str(token.get("content", ""))}
    if any(char.isspace() for char in in_added):
        return None
    chars = set(WHITESPACE)
    if pre_tokenizer == "BertPreTokenizer":
        chars |= set(string.punctuation)
    single_word = any(token.get("single_word") for token in added)
    if single_word:
        chars.discard("_")  # a word character to a single-word added token's match
    ranges = CJK_RANGES if not single_word and _spaces_cjk(normalizers) else ""
    pattern = "[" + "".join(re.escape(c) for c in sorted(chars - in_added)) + ranges + "]"
    return PrefixPlan(re.compile(pattern), CHARS_PER_TOKEN * max_length)


def _normalizers(spec: Mapping[str, Any] | None) -> list[Mapping[str, Any]] | None:
    """The normalizer's steps, or None when one of them is not character by character."""
    if spec is None:
        return []
    if spec.get("type") == "Sequence":
        steps = [_normalizers(step) for step in spec.get("normalizers") or ()]
        return None if any(s is None for s in steps) else [n for s in steps if s for n in s]
    return [spec] if spec.get("type") in CHARACTERWISE_NORMALIZERS else None


def _spaces_cjk(normalizers: Sequence[Mapping[str, Any]]) -> bool:
    return any(n.get("type") == "BertNormalizer" and n.get("handle_chinese_chars", True)
               for n in normalizers)


def encode_rows(tokenizer: Any, texts: list[str], max_length: int,
                plan: PrefixPlan | None, pad: bool = True) -> list[Any]:
    """`tokenizer.encode_batch(texts)` (truncating to `max_length`, padding to the longest row
    unless not `pad`), with rows longer than the plan's window tokenized only as far as
    truncation keeps."""
    long_rows = set() if plan is None else {
        i for i, text in enumerate(texts) if len(text) > plan.window}
    if plan is None or not long_rows:
        return list(tokenizer.encode_batch(texts))
    short_rows = [i for i in range(len(texts)) if i not in long_rows]
    encodings = dict(zip(short_rows, tokenizer.encode_batch([texts[i] for i in short_rows]),
                         strict=True))
    wanted = max(1, max_length - tokenizer.num_special_tokens_to_add(False))
    for i in long_rows:
        encodings[i] = encode_prefix(tokenizer, plan.pieces(texts[i]), wanted)
    ordered = [encodings[i] for i in range(len(texts))]
    if pad:
        _pad_to_longest(tokenizer, ordered)
    return ordered


def encode_prefix(tokenizer: Any, pieces: Iterator[str], wanted: int) -> Any:
    """The encoding of the text `pieces` make up, tokenizing pieces only until `wanted` tokens
    (special tokens aside) are found."""
    from tokenizers import Encoding

    kept: list[Any] = []
    found = 0
    for piece in pieces:
        encoding = tokenizer.encode(piece, add_special_tokens=False)
        if encoding.ids:
            kept.append(encoding)
            found += len(encoding.ids)
        if found >= wanted:
            break
    joined = (Encoding.merge(kept, growing_offsets=True) if kept
              else tokenizer.encode("", add_special_tokens=False))
    return tokenizer.post_process(joined)


def _pad_to_longest(tokenizer: Any, encodings: list[Any]) -> None:
    padding = tokenizer.padding or {}
    longest = max(len(encoding.ids) for encoding in encodings)
    for encoding in encodings:
        encoding.pad(longest, direction=padding.get("direction", "right"),
                     pad_id=padding.get("pad_id", 0), pad_type_id=padding.get("pad_type_id", 0),
                     pad_token=padding.get("pad_token", "[PAD]"))
