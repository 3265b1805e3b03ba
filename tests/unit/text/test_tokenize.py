"""The text.tokenize processor: the model's own tokenizer files, padding to the batch's longest
row, truncation to max_length, and clear errors naming the input for bad text."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from surge.errors import ConfigError, InputError
from surge.processors import resolve
from surge.processors.text import MAX_TEXT_BYTES, describe_tokenize, tokenize
from surge.zoo.minilm import minilm_dir, tokenizer_file

PARAMS = {"tokenizer": "surge.zoo.minilm:tokenizer_file", "max_length": 32}
SENTENCES = ["hello world", "Surge serves sentence encoders; the tokenizer runs in a pipeline."]


def texts(*rows: str | bytes) -> np.ndarray:
    array = np.empty((len(rows), 1), dtype=object)
    for i, row in enumerate(rows):
        array[i, 0] = row.encode() if isinstance(row, str) else row
    return array


def test_ids_equal_the_reference_tokenizer_padded_to_the_longest_row() -> None:
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(str(minilm_dir()))(
        SENTENCES, padding=True, truncation=True, max_length=32, return_tensors="np")
    got = tokenize({"text": texts(*SENTENCES)}, PARAMS)
    assert set(got) == {"input_ids", "attention_mask", "token_type_ids"}
    for key, array in got.items():
        assert array.dtype == np.int64
        np.testing.assert_array_equal(array, reference[key])
    # padded to the longest row of this batch, not to max_length or the file's fixed 128
    assert got["input_ids"].shape == (2, int(reference["attention_mask"].sum(1).max()))
    assert got["input_ids"].shape[1] < 32


def test_long_text_is_truncated_to_max_length_and_ends_with_sep() -> None:
    got = tokenize({"text": texts("word " * 500)}, {**PARAMS, "max_length": 16})
    assert got["input_ids"].shape == (1, 16)
    assert got["input_ids"][0, -1] == 102  # [SEP]
    assert got["attention_mask"].all()


def test_one_dim_batches_outputs_subset_and_tokenizer_directory() -> None:
    flat = np.array([b"hello world", b"hi"], dtype=object)
    got = tokenize({"words": flat}, {"tokenizer": str(minilm_dir()), "input": "words",
                                     "outputs": ["input_ids"]})
    assert list(got) == ["input_ids"]
    np.testing.assert_array_equal(got["input_ids"], [[101, 7592, 2088, 102], [101, 7632, 102, 0]])


def test_relative_tokenizer_paths_start_from_root(tmp_path: Path) -> None:
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_bytes(tokenizer_file().read_bytes())
    got = tokenize({"text": texts("hello")}, {"tokenizer": "tok", "root": str(tmp_path)})
    np.testing.assert_array_equal(got["input_ids"], [[101, 7592, 102]])


@pytest.mark.parametrize(("row", "message"), [
    (b"", "input 'text' row 1: empty text"),
    (b"   \n\t", "input 'text' row 1: empty text"),
    (b"caf\xe9", "input 'text' row 1: not valid UTF-8 (byte 3)"),
    (b"\xff\xfe\x00", "input 'text' row 1: not valid UTF-8 (byte 0)"),
    (b"a" * (MAX_TEXT_BYTES + 1), f"more than the {MAX_TEXT_BYTES} allowed"),
])
def test_bad_rows_are_input_errors_naming_the_input_and_row(row: bytes, message: str) -> None:
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tokenize({"text": texts("fine", row)}, PARAMS)


def test_wrong_dtype_shape_or_missing_input_are_input_errors() -> None:
    with pytest.raises(InputError, match="input 'text' expects BYTES"):
        tokenize({"text": np.zeros((2, 1), np.float32)}, PARAMS)
    with pytest.raises(InputError, match="one text per row, got shape"):
        tokenize({"text": texts("a", "b").reshape(1, 2)}, PARAMS)
    with pytest.raises(InputError, match="input 'text' is missing"):
        tokenize({"other": texts("a")}, PARAMS)


def test_declared_specs_and_bad_params_fail_when_the_pipeline_loads() -> None:
    processor = resolve("text.tokenize")
    assert processor.run is tokenize
    assert processor.describe is describe_tokenize
    spec = describe_tokenize({**PARAMS, "outputs": ["input_ids", "attention_mask"]})
    assert (spec.inputs["text"].datatype, spec.inputs["text"].shape) == ("BYTES", (-1, 1))
    assert {k: (v.datatype, v.shape) for k, v in spec.outputs.items()} == {
        "input_ids": ("INT64", (-1, -1)), "attention_mask": ("INT64", (-1, -1))}
    with pytest.raises(ConfigError, match="params.tokenizer must name"):
        describe_tokenize({})
    with pytest.raises(ConfigError, match="tokenizer file '/nonexistent' not found"):
        describe_tokenize({"tokenizer": "/nonexistent"})
    with pytest.raises(ConfigError, match="max_length must be an integer"):
        describe_tokenize({**PARAMS, "max_length": 1})
    with pytest.raises(ConfigError, match="outputs must be some of"):
        describe_tokenize({**PARAMS, "outputs": ["ids"]})


def test_a_malformed_tokenizer_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not a tokenizers file"):
        describe_tokenize({"tokenizer": str(tmp_path)})


def test_threads_sharing_the_cached_tokenizer_get_their_own_padding() -> None:
    """The processor pool calls it from several threads: the shared tokenizer's settings are
    fixed once, so each batch is padded to its own longest row."""
    results: dict[int, np.ndarray] = {}

    def run(rows: int) -> None:
        for _ in range(20):
            results[rows] = tokenize({"text": texts(*["word " * rows] * 2)}, PARAMS)["input_ids"]

    threads = [threading.Thread(target=run, args=(n,)) for n in (1, 5, 10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {n: r.shape for n, r in results.items()} == {1: (2, 3), 5: (2, 7), 10: (2, 12)}
