"""Text processors: UTF-8 strings (V2 BYTES) -> token ids, with the model's own tokenizer files.

    tokenize({"text": np.array([b"a sentence", ...], dtype=object)},
             {"tokenizer": "minilm/tokenizer.json", "max_length": 256})
    -> {"input_ids": INT64 [N, L], "attention_mask": INT64 [N, L], "token_type_ids": INT64 [N, L]}

L is the longest row of the batch after truncation to `max_length`: a batch of short sentences
costs the model short sequences. Pooling is not a processor: the served sentence encoders pool
and normalise inside their ONNX graph (`surge.zoo.minilm`), so one model call returns the final
vector and `surge optimize` quantizes the whole computation.

Parameters (`params` of the pipeline step):

- `tokenizer` (required): a `tokenizer.json` (Hugging Face `tokenizers` format), a directory
  holding one (a relative path starts from `root`), or a trusted `package.module:function`
  returning such a path (`surge.zoo.minilm:tokenizer_file`: the files the model's package ships,
  wherever it is installed).
- `root` (default: the current directory): where relative tokenizer paths start.
- `max_length` (256): tokens per row, special tokens included (more than the tokenizer adds:
  at 2, MiniLM's rows would all be `[CLS] [SEP]`); longer texts are truncated. A
  row is refused over MAX_TEXT_BYTES (1 MiB); below that, with a WordPiece-style tokenizer (the
  MiniLM one), only about the first 8 * max_length characters of a long row are tokenized
  (`surge.processors.token_prefix`), with the same ids as tokenizing all of it.
- `input` (`text`): the BYTES input to read.
- `outputs` (all three): which of `input_ids`, `attention_mask`, `token_type_ids` to return.

There is no `padding` or `truncation` param (refused, not ignored): rows are always padded to
the batch's longest and truncated to `max_length`. One call returns at most MAX_BATCH_TOKENS
(rows x padded length); a request with more is refused, before tokenizing where its row count
alone exceeds it.

The input is BYTES [-1, 1] (one text per row, as Triton clients send strings); every output is
INT64 [-1, -1].
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from surge.errors import ConfigError, InputError
from surge.processors import ProcessorSpec, declares
from surge.processors.token_prefix import PrefixPlan, encode_rows, prefix_plan
from surge.runtimes.base import TensorSpec

TOKENIZER_FILE = "tokenizer.json"
DEFAULT_MAX_LENGTH = 256
MAX_LENGTH_LIMIT = 8192
TOKEN_OUTPUTS = ("input_ids", "attention_mask", "token_type_ids")
# A row longer than this is refused before tokenizing. Below it, a long row costs the tokenizer
# only the part truncation keeps where the tokenizer allows cutting it (`token_prefix`), and the
# whole row otherwise.
MAX_TEXT_BYTES = 1 << 20
# Rows x padded length one call may return (8 MiB per INT64 output). Without it, many tiny rows
# and one long one (padded to max_length each) cost gigabytes for a request of a megabyte.
MAX_BATCH_TOKENS = 1 << 20
_CHUNK_ROWS = 8192  # rows per encode_batch past the budget check: their encodings are dropped
REFUSED_PARAMS = ("padding", "truncation")

_lock = threading.Lock()


def describe_tokenize(params: Mapping[str, Any]) -> ProcessorSpec:
    """What `tokenize` reads and writes; bad params (a missing tokenizer file) fail here, when
    the pipeline loads, rather than on its first request."""
    name = str(params.get("input", "text"))
    refused = [key for key in REFUSED_PARAMS if key in params]
    if refused:
        raise ConfigError(f"text.tokenize: no param {refused[0]!r} (got {params[refused[0]]!r}): "
                          "rows are padded to the batch's longest and truncated to max_length")
    load_tokenizer(str(tokenizer_path(params)), max_length(params))
    return ProcessorSpec({name: TensorSpec(name, "BYTES", (-1, 1))},
                         {key: TensorSpec(key, "INT64", (-1, -1)) for key in _outputs(params)})


def example_text(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """One short text: a valid row for `tokenize`."""
    return {str(params.get("input", "text")): np.array([[b"surge"]], dtype=object)}


@declares(describe_tokenize, example=example_text)
def tokenize(inputs: dict[str, np.ndarray], params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A batch of UTF-8 texts -> INT64 token ids, attention mask and token type ids."""
    name = str(params.get("input", "text"))
    texts = decode_texts(inputs, name)
    wanted = _outputs(params)
    length = max_length(params)
    path = str(tokenizer_path(params))
    tokenizer = load_tokenizer(path, length)
    special = tokenizer.num_special_tokens_to_add(False)
    if len(texts) * length > MAX_BATCH_TOKENS:  # a few requests: checked, padded in numpy
        arrays = _many_rows(name, path, texts, length, special)
    else:
        encodings = encode_rows(tokenizer, texts, length, load_prefix_plan(path, length))
        arrays = {key: np.array([getattr(e, column) for e in encodings], dtype=np.int64)
                  for key, column in _COLUMNS.items() if key in wanted or key == "attention_mask"}
    _refuse_empty(name, arrays["attention_mask"], special)
    return {key: arrays[key] for key in wanted}


_COLUMNS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}


def _many_rows(name: str, path: str, texts: list[str], length: int,
               special: int) -> dict[str, np.ndarray]:
    """The three outputs for a call whose rows could pad past MAX_BATCH_TOKENS: refused as
    soon as its rows must, tokenized in chunks without the tokenizer's own padding (a padded
    encoding holds a string per token), padded here."""
    rows = len(texts)
    if rows * (special + 1) > MAX_BATCH_TOKENS:  # every row holds a token besides the special
        _refuse_tokens(name, rows, special + 1)
    tokenizer, plan = load_tokenizer(path, length, pad=False), load_prefix_plan(path, length)
    ids: list[list[int]] = []
    types: list[list[int]] = []
    longest = 0
    for start in range(0, rows, _CHUNK_ROWS):
        chunk = encode_rows(tokenizer, texts[start:start + _CHUNK_ROWS], length, plan, pad=False)
        ids.extend(e.ids for e in chunk)
        types.extend(e.type_ids for e in chunk)
        longest = max(longest, *(len(e.ids) for e in chunk))
        if rows * longest > MAX_BATCH_TOKENS:
            _refuse_tokens(name, rows, longest)
    lengths = np.fromiter(map(len, ids), np.int64, count=rows)
    mask = np.arange(longest) < lengths[:, None]  # right padding: row-major order of the tokens
    padding = load_tokenizer(path, length).padding or {}
    return {"input_ids": _padded(mask, ids, padding.get("pad_id", 0)),
            "token_type_ids": _padded(mask, types, padding.get("pad_type_id", 0)),
            "attention_mask": mask.astype(np.int64)}


def _padded(mask: np.ndarray, rows: list[list[int]], pad: int) -> np.ndarray:
    out = np.full(mask.shape, pad, dtype=np.int64)
    out[mask] = np.fromiter(itertools.chain.from_iterable(rows), np.int64,
                            count=int(mask.sum()))
    return out


def _refuse_tokens(name: str, rows: int, longest: int) -> None:
    raise InputError(f"input {name!r}: {rows} rows padded to {longest} tokens or more are over "
                     f"the {MAX_BATCH_TOKENS} tokens one call takes; send fewer rows per request")


def _refuse_empty(name: str, mask: np.ndarray, special: int) -> None:
    """A row of special tokens only held no text the tokenizer keeps (control or format
    characters alone: NUL, a zero-width space, a byte-order mark): empty, like a blank row,
    which would otherwise be answered as the empty string's embedding. (`load_tokenizer`
    leaves room for a token past the special ones.)"""
    empty = np.flatnonzero(mask.sum(axis=1) <= special)
    if empty.size:
        raise InputError(f"input {name!r} row {int(empty[0])}: empty text (no tokens once "
                         "normalised)")


def decode_texts(inputs: Mapping[str, np.ndarray], name: str) -> list[str]:
    """The rows of BYTES input `name` as str; empty, oversized or non-UTF-8 rows are refused
    with an InputError naming the input and the row."""
    if name not in inputs:
        raise InputError(f"input {name!r} is missing (got {', '.join(sorted(inputs)) or 'none'})")
    array = np.asarray(inputs[name])
    if array.dtype != object and array.dtype.kind not in "SU":
        raise InputError(f"input {name!r} expects BYTES (UTF-8 text), got {array.dtype}")
    if array.ndim and not len(array):  # numpy cannot reshape (0, ...) to (0, -1)
        raise InputError(f"input {name!r} has no rows (shape {list(array.shape)}): send at "
                         "least one text")
    rows = array.reshape(len(array), -1) if array.ndim else array.reshape(1, 1)
    if rows.shape[1] != 1:
        raise InputError(f"input {name!r} expects one text per row, got shape {list(array.shape)}")
    return [_decode_row(name, i, value) for i, value in enumerate(rows[:, 0])]


def _decode_row(name: str, row: int, value: Any) -> str:
    if isinstance(value, str):
        raw = value.encode("utf-8")
    elif isinstance(value, bytes | bytearray | memoryview | np.bytes_):
        raw = bytes(value)
    else:
        raise InputError(f"input {name!r} row {row}: expected bytes, got {type(value).__name__}")
    if len(raw) > MAX_TEXT_BYTES:
        raise InputError(f"input {name!r} row {row}: {len(raw)} bytes of text, more than the "
                         f"{MAX_TEXT_BYTES} allowed")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"input {name!r} row {row}: not valid UTF-8 (byte {exc.start})") from None
    if not text.strip():
        raise InputError(f"input {name!r} row {row}: empty text")
    return text


def max_length(params: Mapping[str, Any]) -> int:
    value = params.get("max_length", DEFAULT_MAX_LENGTH)
    if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= MAX_LENGTH_LIMIT:
        raise ConfigError(f"text.tokenize: max_length must be an integer in [2, "
                          f"{MAX_LENGTH_LIMIT}], got {value!r}")
    return value


def _outputs(params: Mapping[str, Any]) -> Sequence[str]:
    wanted = params.get("outputs", TOKEN_OUTPUTS)
    if isinstance(wanted, str):
        wanted = [wanted]
    unknown = [w for w in wanted if w not in TOKEN_OUTPUTS]
    if unknown or not wanted:
        raise ConfigError(f"text.tokenize: outputs must be some of {', '.join(TOKEN_OUTPUTS)}, "
                          f"got {wanted!r}")
    return list(wanted)


def tokenizer_path(params: Mapping[str, Any]) -> Path:
    """The tokenizer.json `params` name (a file, or a directory holding one)."""
    given = params.get("tokenizer")
    if not given:
        raise ConfigError("text.tokenize: params.tokenizer must name a tokenizer.json or its "
                          "directory")
    if ":" in str(given) and not Path(str(given)).exists():
        from surge.tasks.registry import import_object

        given = import_object(str(given), "text.tokenize: tokenizer")()
    path = Path(str(given))
    if not path.is_absolute():
        path = Path(str(params.get("root", "."))) / path
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise ConfigError(f"text.tokenize: tokenizer file {str(path)!r} not found")
    return path


@lru_cache(maxsize=16)
def load_tokenizer(path: str, length: int, pad: bool = True) -> Any:
    """The tokenizer in `path`, truncating to `length` and padding to each batch's longest row
    (`pad`; else not padding).

    Cached per (file, length, pad): a pipeline tokenizes every batch with the same one, and its
    padding and truncation settings are fixed here, never changed on a shared object. A
    `length` with no room for a token past the tokenizer's special ones is a ConfigError.
    """
    from tokenizers import Tokenizer

    with _lock:
        try:
            tokenizer = Tokenizer.from_file(path)
        except Exception as exc:  # the library raises a bare Exception for a malformed file
            raise ConfigError(f"text.tokenize: {path}: not a tokenizers file ({exc})") from None
        special = tokenizer.num_special_tokens_to_add(False)
        if length <= special:  # every row would be the special tokens alone, whatever its text
            raise ConfigError(f"text.tokenize: max_length {length} leaves no room for text: "
                              f"{path} adds {special} special tokens to each row")
        padding = tokenizer.padding or {}
        tokenizer.enable_truncation(max_length=length)
        if not pad:
            tokenizer.no_padding()
            return tokenizer
        tokenizer.enable_padding(pad_id=padding.get("pad_id", 0),
                                 pad_token=padding.get("pad_token", "[PAD]"),
                                 pad_type_id=padding.get("pad_type_id", 0))
    return tokenizer


@lru_cache(maxsize=16)
def load_prefix_plan(path: str, length: int) -> PrefixPlan | None:
    """Where long texts may be cut for the tokenizer in `path` (None: nowhere, tokenize whole)."""
    return prefix_plan(json.loads(load_tokenizer(path, length).to_str()), length)
