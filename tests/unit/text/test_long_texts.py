"""Long rows through text.tokenize: only the part truncation keeps reaches the tokenizer, and the
ids are those of tokenizing the whole row and truncating it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import surge.processors.text as text_module
from surge.processors.text import MAX_TEXT_BYTES, load_tokenizer, tokenize
from surge.processors.token_prefix import encode_rows, prefix_plan
from surge.zoo.minilm import tokenizer_file

PATH = str(tokenizer_file())
TRICKY = [
    "plain words, then more words. " * 40,
    "a" * 5000 + " then words after one very long word " * 20,
    "words   \t\n\r  separated \n\n\n by   runs of    whitespace " * 60,
    " " * 3000 + "words only after a long run of spaces " * 10,
    "服务器把模型的输出返回给客户端" * 200 + " mixed with english",
    "[MASK] [SEP] [CLS][PAD]x[UNK] special tokens as text " * 50,
    "ca\u0301fe\u0301 İstanbul ΣΟΦΟΣ ς ﬁne ≠ <\u0338 \u200b\ufeff\x00\x1c zero-width " * 40,
    "punctuation!!!...???---___###" * 100,
    "emoji 😀👍🏽 and ZWJ 👨\u200d👩\u200d👧 sequences " * 60,
    "unaffable " * 10 + "x" * 150 + " wordpiece " * 100,
    "\t".join(["tabbed"] * 500),
    "\u3000ideographic\u3000space\u3000\u00a0nbsp\u2028line " * 80,
]


def rows(*texts: str) -> np.ndarray:
    array = np.empty((len(texts), 1), dtype=object)
    for i, text in enumerate(texts):
        array[i, 0] = text.encode()
    return array


def whole_row_ids(texts: list[str], length: int) -> dict[str, list[list[int]]]:
    """What tokenizing every row whole and truncating gives."""
    encodings = load_tokenizer(PATH, length).encode_batch(texts)
    return {"input_ids": [e.ids for e in encodings],
            "attention_mask": [e.attention_mask for e in encodings],
            "token_type_ids": [e.type_ids for e in encodings]}


def processor_ids(texts: list[str], length: int) -> dict[str, list[list[int]]]:
    got = tokenize({"text": rows(*texts)}, {"tokenizer": PATH, "max_length": length})
    return {key: array.tolist() for key, array in got.items()}


@pytest.mark.parametrize("length", [4, 16, 64, 256])
@pytest.mark.parametrize("text", TRICKY, ids=range(len(TRICKY)))
def test_ids_equal_those_of_the_whole_row_truncated(text: str, length: int) -> None:
    batch = [text, "a short row", text[len(text) // 3:]]
    assert processor_ids(batch, length) == whole_row_ids(batch, length)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(pieces=st.lists(st.sampled_from([
    " ", "   ", "\t", "\n", "\r", "[", "]", "[MASK]", "!", "_", "-", "word", "a", "é", "\u0301",
    "中", "文", "\x00", "\u200b", "İ", "≠", "<", "\u0338", "7", "\u3000", "x" * 120, "😀", "ﬁ",
]), min_size=1, max_size=600), length=st.sampled_from([3, 8, 16]))
def test_any_mix_of_cut_and_joining_characters_keeps_the_ids(pieces: list[str],
                                                             length: int) -> None:
    text = "".join(pieces)
    tokenizer = load_tokenizer(PATH, length)
    plan = prefix_plan({"normalizer": {"type": "BertNormalizer"},
                        "pre_tokenizer": {"type": "BertPreTokenizer"},
                        "added_tokens": [{"content": "[MASK]"}]}, length)
    got = encode_rows(tokenizer, [text, "short"], length, plan)
    assert [e.ids for e in got] == [e.ids for e in tokenizer.encode_batch([text, "short"])]


class Spy:
    """The tokenizer, recording the length of every text it is given."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.lengths: list[int] = []

    def encode(self, text: str, **kwargs: Any) -> Any:
        self.lengths.append(len(text))
        return self.tokenizer.encode(text, **kwargs)

    def encode_batch(self, texts: list[str]) -> Any:
        self.lengths.extend(len(text) for text in texts)
        return self.tokenizer.encode_batch(texts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tokenizer, name)


def test_a_megabyte_row_reaches_the_tokenizer_only_as_far_as_truncation_keeps(
        monkeypatch: pytest.MonkeyPatch) -> None:
    text = "many words repeated " * (MAX_TEXT_BYTES // 20)
    assert len(text.encode()) <= MAX_TEXT_BYTES
    spy = Spy(load_tokenizer(PATH, 32))
    monkeypatch.setattr(text_module, "load_tokenizer", lambda path, length: spy)
    got = processor_ids([text, "short"], 32)
    assert max(spy.lengths) <= 8 * 32 + 20
    assert sum(spy.lengths) <= 4 * 8 * 32
    monkeypatch.undo()
    assert got == whole_row_ids([text, "short"], 32)


@pytest.mark.parametrize("config", [
    {"normalizer": {"type": "NFKC"}, "pre_tokenizer": {"type": "BertPreTokenizer"}},
    {"normalizer": {"type": "Sequence", "normalizers": [{"type": "Lowercase"},
                                                        {"type": "Replace"}]},
     "pre_tokenizer": {"type": "Whitespace"}},
    {"normalizer": None, "pre_tokenizer": {"type": "ByteLevel"}},
    {"normalizer": None, "pre_tokenizer": {"type": "Metaspace"}},
    {"normalizer": None, "pre_tokenizer": {"type": "WhitespaceSplit"},
     "added_tokens": [{"content": "new york"}]},
])
def test_tokenizers_that_may_join_across_a_cut_get_whole_rows(config: dict[str, Any]) -> None:
    assert prefix_plan(config, 16) is None
    spy = Spy(load_tokenizer(PATH, 16))
    text = "word " * 1000
    encode_rows(spy, [text], 16, prefix_plan(config, 16))
    assert spy.lengths == [len(text)]


def test_cut_characters_follow_the_pre_tokenizer_and_the_added_tokens() -> None:
    bert = prefix_plan({"normalizer": {"type": "BertNormalizer"},
                        "pre_tokenizer": {"type": "BertPreTokenizer"},
                        "added_tokens": [{"content": "[MASK]"}]}, 4)
    assert bert is not None
    assert bert.window == 32
    assert all(bert.cuts.match(c) for c in " \t\n\r!.-_中")
    assert not any(bert.cuts.match(c) for c in "[]a\u3000\x1c\u00a0")
    split = prefix_plan({"normalizer": {"type": "Lowercase"},
                         "pre_tokenizer": {"type": "WhitespaceSplit"},
                         "added_tokens": [{"content": "<s>", "single_word": True}]}, 4)
    assert split is not None
    assert [c for c in " \t\n\r!._<" if split.cuts.match(c)] == list(" \t\n\r")
