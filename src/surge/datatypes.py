"""KServe V2 datatypes and their numpy, Triton-config and torch equivalents."""

from __future__ import annotations

import numpy as np

from surge.errors import SurgeError

# V2 name -> numpy dtype. BF16 has no numpy dtype: it travels as raw 2-byte words (uint16)
# and is widened to float32 at the engine boundary.
_V2_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BF16": np.dtype(np.uint16),
    "BYTES": np.dtype(np.object_),
}

_NUMPY_TO_V2: dict[np.dtype, str] = {
    dtype: name for name, dtype in _V2_TO_NUMPY.items() if name not in ("BF16", "BYTES")
}

V2_DATATYPES: tuple[str, ...] = tuple(_V2_TO_NUMPY)
# The BF16 words of a request: a dtype equal to uint16 (every check and engine sees uint16)
# that keeps the name the client sent, for the errors that name it.
_SENT_AS = "v2_datatype"
BF16_WORDS = np.dtype("<u2", metadata={_SENT_AS: "BF16"})


def label_bf16(outputs: dict[str, np.ndarray], names: frozenset[str]) -> dict[str, np.ndarray]:
    """`outputs` with each of `names` that holds BF16 words (uint16, as engines return bfloat16,
    and as it arrives from a worker process, whose transport keeps no dtype label) viewed as
    `BF16_WORDS`, so that `sent_datatype` answers BF16 for it. An output of another dtype
    (a variant computing it in FP32) is left as it is; `outputs` itself is not changed."""
    labelled = outputs
    for name in names:
        array = outputs.get(name)
        if array is not None and array.dtype == BF16_WORDS:
            if labelled is outputs:
                labelled = dict(outputs)
            labelled[name] = array.view(BF16_WORDS)
    return labelled


def bf16_values(words: np.ndarray) -> np.ndarray:
    """The float32 values of BF16 words (each word is the upper half of an FP32 word)."""
    return (words.astype(np.uint32) << 16).view(np.float32)


def v2_to_numpy(datatype: str) -> np.dtype:
    """Numpy dtype for a V2 datatype name; raises SurgeError naming an unknown datatype."""
    try:
        return _V2_TO_NUMPY[datatype]
    except KeyError:
        known = ", ".join(V2_DATATYPES)
        raise SurgeError(f"unknown datatype {datatype!r}; expected one of {known}") from None


def numpy_to_v2(dtype: np.dtype | type) -> str:
    """V2 datatype name for a numpy dtype (object and bytes/str arrays are BYTES)."""
    dtype = np.dtype(dtype)
    if dtype.kind in ("O", "S", "U"):
        return "BYTES"
    try:
        return _NUMPY_TO_V2[dtype]
    except KeyError:
        raise SurgeError(f"numpy dtype {dtype} has no V2 datatype") from None


def v2_to_triton(datatype: str) -> str:
    """Triton model-config type name (`TYPE_FP32`, `TYPE_STRING` for BYTES)."""
    v2_to_numpy(datatype)  # validates
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def element_size(datatype: str) -> int:
    """Bytes per element for fixed-size datatypes; raises for BYTES."""
    if datatype == "BYTES":
        raise SurgeError("BYTES elements have no fixed size")
    return int(v2_to_numpy(datatype).itemsize)


# ONNX Runtime's type of a session's input or output -> V2 name.
ORT_TO_V2: dict[str, str] = {
    "tensor(float)": "FP32", "tensor(uint8)": "UINT8", "tensor(int8)": "INT8",
    "tensor(uint16)": "UINT16", "tensor(int16)": "INT16", "tensor(int32)": "INT32",
    "tensor(int64)": "INT64", "tensor(string)": "BYTES", "tensor(bool)": "BOOL",
    "tensor(float16)": "FP16", "tensor(double)": "FP64", "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64", "tensor(bfloat16)": "BF16",
}


def torch_to_v2(dtype: object) -> str:
    """V2 datatype name for a torch dtype."""
    import torch

    table = {
        torch.bool: "BOOL", torch.uint8: "UINT8", torch.int8: "INT8", torch.int16: "INT16",
        torch.int32: "INT32", torch.int64: "INT64", torch.float16: "FP16",
        torch.float32: "FP32", torch.float64: "FP64", torch.bfloat16: "BF16",
        torch.uint16: "UINT16", torch.uint32: "UINT32", torch.uint64: "UINT64",
    }
    try:
        return table[dtype]  # type: ignore[index]
    except KeyError:
        raise SurgeError(f"torch dtype {dtype} has no V2 datatype") from None


def sent_datatype(array: np.ndarray) -> str:
    """The V2 datatype `array` was sent as (or is answered as): its dtype's, or BF16 for BF16
    words. Once per output of every response: a plain dtype is one lookup."""
    dtype = array.dtype
    metadata = dtype.metadata
    if metadata is None:
        name = _NUMPY_TO_V2.get(dtype)
        if name is not None:
            return name
    elif _SENT_AS in metadata:
        return str(metadata[_SENT_AS])
    return numpy_to_v2(dtype)
