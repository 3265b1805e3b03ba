"""Tensor <-> bytes for the binary extension and gRPC raw contents.

Fixed-size datatypes travel as their little-endian element bytes in row-major order. BYTES
elements travel as a 4-byte little-endian length followed by the element's bytes.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from surge.datatypes import BF16_WORDS, V2_DATATYPES, bf16_values, v2_to_numpy
from surge.errors import InputError, shown

_LENGTH = struct.Struct("<I")
MAX_ELEMENTS = 2**32  # far past any request body; numpy refuses shapes past 2**63 bytes


def check_datatype(name: str, datatype: object) -> str:
    if not isinstance(datatype, str) or datatype not in V2_DATATYPES:
        raise InputError(
            f"input {name!r} has unknown datatype {datatype!r}; expected one of "
            f"{', '.join(V2_DATATYPES)}"
        )
    return datatype


def check_shape(name: str, shape: object) -> tuple[int, ...]:
    if not isinstance(shape, list | tuple) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise InputError(f"input {name!r} has invalid shape {shape!r}; expected non-negative ints")
    if len(shape) > 16:
        raise InputError(f"input {name!r} has {len(shape)} dimensions; at most 16 are allowed")
    # An empty tensor may name any other dimensions, but numpy (and every engine) must still
    # be able to make that shape: the product of the non-zero ones is bounded too.
    if math.prod(d for d in shape if d) > MAX_ELEMENTS:
        raise InputError(f"input {name!r} has shape {list(shape)}: over {MAX_ELEMENTS} elements "
                         f"(zero dimensions counted as 1)")
    return tuple(shape)


def serialize_bytes(array: np.ndarray) -> bytes:
    """BYTES tensor -> length-prefixed elements (the V2 wire format, and the one BYTES codec:
    the workers' shared-memory transport uses it too). Non-bytes elements go as UTF-8 text."""
    parts: list[bytes] = []
    for item in array.reshape(-1):
        data = _element_bytes(item)
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def _element_bytes(item: object) -> bytes:
    # as tritonclient does: bytes as they are, anything else as its UTF-8 text
    if isinstance(item, bytes | bytearray | memoryview):
        return bytes(item)
    return str(item).encode()


def deserialize_bytes(name: str, buffer: bytes | memoryview, count: int) -> np.ndarray:
    """Length-prefixed elements -> 1-D object array of `count` bytes objects."""
    view = memoryview(buffer)
    items: list[bytes] = []
    offset = 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise InputError(f"input {name!r}: BYTES data ends inside an element's length prefix")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise InputError(
                f"input {name!r}: BYTES element {len(items)} declares {length} bytes, "
                f"{len(view) - offset} remain"
            )
        items.append(bytes(view[offset:offset + length]))
        offset += length
    if len(items) != count:
        raise InputError(f"input {name!r}: expected {count} BYTES elements, got {len(items)}")
    array = np.empty(count, dtype=object)
    array[:] = items
    return array


def tensor_from_bytes(
    name: str, datatype: str, shape: tuple[int, ...], buffer: bytes | memoryview
) -> np.ndarray:
    """Raw tensor bytes -> array of `shape`; the size must match exactly."""
    count = math.prod(shape)
    if datatype == "BYTES":
        return deserialize_bytes(name, buffer, count).reshape(shape)
    dtype = BF16_WORDS if datatype == "BF16" else v2_to_numpy(datatype).newbyteorder("<")
    expected = count * dtype.itemsize
    if len(buffer) != expected:
        raise InputError(
            f"input {name!r} expects {expected} bytes for {datatype} {list(shape)}, "
            f"got {len(buffer)}"
        )
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)


def tensor_to_bytes(array: np.ndarray, datatype: str) -> bytes:
    """Array -> raw bytes (BYTES: length-prefixed)."""
    if datatype == "BYTES":
        return serialize_bytes(array)
    return np.ascontiguousarray(array).tobytes()


def _bf16_words(values: np.ndarray) -> np.ndarray:
    # BF16 is the upper half of an FP32 word; JSON numbers are rounded by truncation.
    return (values.astype(np.float32).view(np.uint32) >> 16).astype(BF16_WORDS)


def tensor_from_list(name: str, datatype: str, shape: tuple[int, ...], data: object,
                     bools: bool = True) -> np.ndarray:
    """JSON `data`, flat or nested to exactly `shape` -> array of `shape`. `bools=False`: the
    caller knows `data` holds no JSON true or false (rest.py reads it from the body's bytes),
    and a large number tensor is not looked through element by element for one."""
    count = math.prod(shape)
    if not isinstance(data, list):
        data = [data]
    try:
        if datatype == "BYTES":
            flat = _flat(name, shape, np.array(data, dtype=object))
            array = np.empty(flat.size, dtype=object)
            array[:] = [_to_bytes(name, index, item) for index, item in enumerate(flat)]
        else:
            raw = np.array(data)
            if (bools and datatype != "BOOL"
                    or raw.dtype.kind in "UO" and datatype not in _FLOAT_WORDS):
                _check_elements(name, datatype, data, raw.ndim > 1)
            if raw.dtype.kind in "UO" and datatype in _FLOAT_WORDS:
                raw = _with_non_finite_words(name, datatype, data)
            elif raw.dtype.kind in "fO" and datatype in _INTEGER_TYPES:
                raw = _big_integers(data, raw)
            array = _numbers(name, datatype, _flat(name, shape, raw))
    except (ValueError, TypeError, OverflowError) as exc:
        raise InputError(
            f"input {name!r}: data does not hold {datatype} values ({str(exc)[:80]})"
        ) from None
    if array.size != count:
        raise InputError(
            f"input {name!r} has shape {list(shape)} ({count} elements) but {array.size} data values"
        )
    return array.reshape(shape)


FLOAT_TYPES = frozenset({"FP16", "FP32", "FP64"})
_FLOAT_WORDS = FLOAT_TYPES | {"BF16"}  # the types whose JSON data may hold "NaN" and such
_INTEGER_TYPES = frozenset({"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32",
                            "UINT64"})
_NON_FINITE_WORDS = {word: float(key) for key, word in {
    "nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}.items()}


def _with_non_finite_words(name: str, datatype: str, data: list[Any]) -> np.ndarray:
    """Float data holding NaN and infinities as the strings answers carry them (`"NaN"`,
    `"Infinity"`, `"-Infinity"`, so that an answer can be sent back): float64 values, nested
    as given. Any other string is refused, as before."""
    items = np.array(data, dtype=object)
    values = np.empty(items.shape, dtype=np.float64)
    for index, item in np.ndenumerate(items):
        if isinstance(item, str) and item in _NON_FINITE_WORDS:
            values[index] = _NON_FINITE_WORDS[item]
        elif isinstance(item, int | float) and not isinstance(item, bool):
            values[index] = item
        else:  # named as JSON writes it: null, not Python's None
            raise InputError(f"input {name!r}: data does not hold {datatype} values "
                             f"({_json_text(item)} is not a number, NaN, Infinity or -Infinity)")
    return values


_NUMBERS = frozenset({int, float})  # what orjson and json read JSON numbers as


def _check_elements(name: str, datatype: str, data: object, nested: bool) -> None:
    """Refuse, naming it, the first element numpy would read as a value of another kind without
    a word: true or false in a number type's data (read as 1 and 0, which Triton refuses), and a
    string, null or object in an integer type's or BOOL's (read as text or objects, refused
    later without saying which). A float type's strings are `_with_non_finite_words`'."""
    items = np.array(data, dtype=object).reshape(-1).tolist() if nested else data
    assert isinstance(items, list), "tensor_from_list puts a lone value in a list"
    if set(map(type, items)) <= _NUMBERS:  # the common case, at a tenth of a loop's cost
        return
    for index, item in enumerate(items):
        if isinstance(item, bool):
            if datatype == "BOOL":
                continue
            why = "true and false are for BOOL inputs; give numbers"
        elif isinstance(item, int | float) or datatype in _FLOAT_WORDS:
            continue  # the range, and BOOL's 0 and 1, are checked on the array
        else:
            why = "give true, false, 0 or 1" if datatype == "BOOL" else "give numbers"
        raise InputError(f"input {name!r}: data does not hold {datatype} values "
                         f"({_json_text(item)} at element {index}: {why})")


def _json_text(item: object) -> str:
    """An element as its JSON reads (true, false, null), others as `shown` writes them."""
    if item is None:
        return "null"
    if isinstance(item, bool):
        return "true" if item else "false"
    return shown(item)


def _flat(name: str, shape: tuple[int, ...], values: np.ndarray) -> np.ndarray:
    # V2 `data` is flat or nested to exactly the shape: flattening any other nesting would
    # accept data whose element count merely happens to match.
    if values.ndim > 1 and values.shape != shape:
        raise InputError(f"input {name!r} has shape {list(shape)} but its data is nested as "
                         f"{list(values.shape)}; give it flat or nested to exactly that shape")
    return values.reshape(-1)


def _big_integers(data: object, raw: np.ndarray) -> np.ndarray:
    """`data` as exact integers (an object array) when every value is a JSON integer: numpy
    reads [2**64 - 1, 1] and [2**63, -1] as float64, which would call them non-integer (or
    keep them as objects). Anything else leaves `raw` as it was, refused by its kind."""
    exact = np.array(data, dtype=object)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in exact.reshape(-1)):
        return exact
    return raw


def _exact_integers(name: str, datatype: str, values: np.ndarray) -> np.ndarray:
    """Python integers of any size, range-checked before they become `datatype`."""
    info = np.iinfo(v2_to_numpy(datatype))
    if min(values.flat) < info.min or max(values.flat) > info.max:
        raise InputError(f"input {name!r}: {datatype} data holds values outside its range")
    return values.astype(info.dtype)


def _booleans(name: str, raw: np.ndarray) -> np.ndarray:
    """true/false, or the integers 0 and 1: 2 or 0.5 would turn into true unnoticed."""
    if raw.size and raw.dtype.kind not in "biu":
        raise InputError(f"input {name!r}: data does not hold BOOL values")
    if raw.size and raw.dtype.kind != "b" and not bool(((raw == 0) | (raw == 1)).all()):
        raise InputError(f"input {name!r}: BOOL data holds integers other than 0 and 1")
    return raw.astype(np.bool_)


def _numbers(name: str, datatype: str, raw: np.ndarray) -> np.ndarray:
    if datatype == "BOOL":
        return _booleans(name, raw)
    if raw.size and raw.dtype.kind == "O" and datatype in _INTEGER_TYPES:
        return _exact_integers(name, datatype, raw)
    if raw.size and raw.dtype.kind not in "iuf":
        raise InputError(f"input {name!r}: data does not hold {datatype} values")
    if datatype == "BF16":
        if not within_range(raw, np.dtype(np.float32)):
            raise InputError(f"input {name!r}: BF16 data holds values outside its range")
        return _bf16_words(raw)
    dtype = v2_to_numpy(datatype)
    if dtype.kind in "iu" and raw.dtype.kind == "f" and raw.size:  # [] parses as float64
        # integers past 2**64 arrive from the JSON parser as floats: named as out of range,
        # unless a fraction beside them (2**64 - 1 and 0.5 read as floats) is the fault
        finite = raw[np.isfinite(raw)]
        past = bool((np.abs(finite) >= 2.0**64).any()) and bool((finite % 1 == 0).all())
        raise InputError(f"input {name!r}: {datatype} data holds "
                         + ("values outside its range" if past else "non-integer values"))
    if raw.size and not within_range(raw, dtype):
        raise InputError(f"input {name!r}: {datatype} data holds values outside its range")
    with np.errstate(over="ignore"):  # a range was checked above: no silent wrap or inf
        return raw.astype(dtype)


def within_range(raw: np.ndarray, dtype: np.dtype) -> bool:
    """Whether every value of `raw` fits `dtype` (JSON numbers arrive as int64 or float64,
    gRPC's typed contents at their field's width)."""
    if dtype.kind in "iu" and raw.dtype.kind in "iu":
        info = np.iinfo(dtype)
        return bool(raw.min() >= info.min and raw.max() <= info.max)
    if dtype.kind == "f" and raw.dtype.kind in "iuf":
        finite = (raw[np.isfinite(raw)] if raw.dtype.kind == "f" else raw).astype(np.float64)
        return not finite.size or bool(np.abs(finite).max() <= np.finfo(dtype).max)
    return True


def _to_bytes(name: str, index: int, item: object) -> bytes:
    if isinstance(item, str):
        return item.encode()
    if isinstance(item, bytes):
        return item
    shown = repr(item)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    raise InputError(f"input {name!r}: BYTES data must be strings, got {type(item).__name__} "
                     f"{shown} at element {index}")


def tensor_to_list(array: np.ndarray, datatype: str) -> list:
    """Array -> flat JSON list (BYTES as UTF-8 strings where they decode, as Triton does;
    non-finite floats as the strings of `NON_FINITE_JSON`)."""
    flat = array.reshape(-1)
    if datatype == "BYTES":
        return [_bytes_to_json(item) for item in flat]
    if datatype == "BF16":
        flat = bf16_values(flat)
    values = flat.tolist()
    if flat.dtype.kind == "f" and not np.isfinite(flat).all():
        return [_json_float(value) for value in values]
    return values


# JSON has no NaN or infinity (orjson writes them as null, which reads as a missing value):
# they travel as these strings, which numpy's float conversion (and with it tritonclient's and
# the KServe client's `as_numpy`) reads back as the IEEE values.
NON_FINITE_JSON = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def _json_float(value: float) -> float | str:
    return value if math.isfinite(value) else NON_FINITE_JSON[repr(value)]


def _bytes_to_json(item: object) -> str:
    if isinstance(item, bytes):
        return item.decode("utf-8", errors="replace")
    return str(item)
