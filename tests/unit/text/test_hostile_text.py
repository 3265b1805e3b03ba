"""Hostile batches for text.tokenize: no rows, very many rows (with a long one padding them all),
and params that would make every answer the same or that it does not take."""

from __future__ import annotations

import numpy as np
import pytest

from surge.errors import ConfigError, InputError
from surge.processors import text as text_module
from surge.processors.text import describe_tokenize, tokenize

PARAMS = {"tokenizer": "surge.zoo.minilm:tokenizer_file", "max_length": 32}


def texts(rows: list[bytes]) -> np.ndarray:
    array = np.empty((len(rows), 1), dtype=object)
    array[:, 0] = rows
    return array


@pytest.mark.parametrize("shape", [(0, 1), (0,), (0, 3)])
def test_no_rows_is_an_input_error(shape: tuple[int, ...]) -> None:
    with pytest.raises(InputError, match=r"input 'text' has no rows \(shape \["):
        tokenize({"text": np.empty(shape, dtype=object)}, PARAMS)


def test_many_tiny_rows_pass_and_one_long_row_padding_them_all_is_refused() -> None:
    tiny = tokenize({"text": texts([b"hi"] * 100_000)}, {**PARAMS, "max_length": 256})
    assert tiny["input_ids"].shape == (100_000, 3)
    assert (tiny["input_ids"] == [101, 7632, 102]).all()
    rows = [b"word " * 400] + [b"hi"] * 99_999  # 1.3 KB more than the tiny rows: 25.6 M tokens
    with pytest.raises(InputError, match="input 'text': 100000 rows padded to 256 tokens or more "
                                         "are over the 1048576 tokens"):
        tokenize({"text": texts(rows)}, {**PARAMS, "max_length": 256})
    with pytest.raises(InputError, match="1000000 rows padded to 3 tokens or more"):
        tokenize({"text": texts([b"a"] * 1_000_000)}, PARAMS)


def test_rows_past_the_budget_get_the_same_ids_as_a_small_batch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # a long row of few tokens (cut in pieces by token_prefix), unicode, a one-token row
    rows = [b"hello world", "Caf\u00e9 \u4e2d\u6587 na\u00efve".encode(), b"a" + b" " * 600 + b"b",
            b"hi"]
    small = tokenize({"text": texts(rows)}, PARAMS)
    assert small["input_ids"].shape[1] <= 16
    monkeypatch.setattr(text_module, "MAX_BATCH_TOKENS", 8 * 16)
    monkeypatch.setattr(text_module, "_CHUNK_ROWS", 3)
    monkeypatch.setattr(text_module, "_many_rows", spy := Spy(text_module._many_rows))
    big = tokenize({"text": texts(rows + rows)}, PARAMS)
    assert spy.calls == 1
    for key, array in small.items():
        np.testing.assert_array_equal(big[key], np.concatenate([array, array]))


class Spy:
    def __init__(self, fn: object) -> None:
        self.fn, self.calls = fn, 0

    def __call__(self, *args: object) -> object:
        self.calls += 1
        return self.fn(*args)  # type: ignore[operator]


def test_max_length_with_no_room_past_the_special_tokens_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="max_length 2 leaves no room for text: .* adds 2 "
                                          "special tokens"):
        describe_tokenize({**PARAMS, "max_length": 2})
    ids = tokenize({"text": texts([b"hello world", b"other"])}, {**PARAMS, "max_length": 3})
    np.testing.assert_array_equal(ids["input_ids"], [[101, 7592, 102], [101, 2060, 102]])


@pytest.mark.parametrize(("key", "value"), [("padding", "max_length"), ("truncation", False)])
def test_padding_and_truncation_params_are_refused_not_ignored(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"no param '{key}' \\(got {value!r}\\)"):
        describe_tokenize({**PARAMS, key: value})
