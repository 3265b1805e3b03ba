"""`model_warmup` in config.yaml: samples every instance runs before the model is ready.

Triton's ModelWarmup: each sample names a batch size, the data of every input (zeros, random
values or a file of raw bytes in the model's `warmup/` folder) and how many times to run it.
What the config alone can tell is checked here, when the config is read; what needs the
model's signature (known once an instance has loaded it) or the model directory is checked by
the instance before it runs the samples (surge.workers.warmup).
"""

from __future__ import annotations

import math
from pathlib import PurePosixPath
from typing import Annotated, Any

from pydantic import AfterValidator, Field, ValidationInfo, model_validator

from surge.configfile import Bool, Int, StrictConfig
from surge.datatypes import V2_DATATYPES, v2_to_numpy

WARMUP_DIR = "warmup"  # Triton's layout: <model>/warmup/<input_data_file>
MAX_COUNT = 10_000  # runs of one sample: more only delays the model's readiness
# One sample's batch in memory, every input together: a typo in dims must not exhaust the
# instance's memory while it loads.
MAX_SAMPLE_BYTES = 1 << 30
MAX_DIM = 2**63 - 1
BYTES_ELEMENT_ESTIMATE = 4  # a BYTES element's least size in a file: its 4-byte length


def _v2_name(datatype: Any) -> Any:
    """Triton's `TYPE_FP32` (and `TYPE_STRING` for BYTES) as the V2 name; others unchanged."""
    if not isinstance(datatype, str) or not datatype.startswith("TYPE_"):
        return datatype
    return "BYTES" if datatype == "TYPE_STRING" else datatype.removeprefix("TYPE_")


class WarmupInput(StrictConfig):
    """The data one input of a sample gets: exactly one of zero_data, random_data,
    input_data_file."""

    datatype: str = Field(description="V2 datatype (FP32, INT64, BYTES, ...; Triton's "
                          "`data_type: TYPE_FP32` is read too); must be the input's.")
    dims: list[Annotated[Int, Field(ge=1, le=MAX_DIM)]] = Field(
        description="Shape of one row, without the batch dim (Triton's dims); a variable dim "
        "of the input takes the size given here.")
    zero_data: Bool = Field(False, description="Zeros (BYTES: empty elements).")
    random_data: Bool = Field(False, description="Random values within the input's declared "
                              "min/max (BYTES: one-byte elements).")
    input_data_file: str | None = Field(
        None, description="A file in the model directory's warmup/ folder holding one row as "
        "raw little-endian bytes (BYTES: each element a 4-byte little-endian length, then its "
        "bytes); the batch repeats it.")

    @model_validator(mode="before")
    @classmethod
    def _triton_spelling(cls, data: Any) -> Any:
        """Triton's `data_type` key and TYPE_ names, as a Triton config writes them."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "data_type" in data and "datatype" not in data:
            data["datatype"] = data.pop("data_type")
        if "datatype" in data:
            data["datatype"] = _v2_name(data["datatype"])
        return data

    @model_validator(mode="after")
    def _check(self) -> WarmupInput:
        if self.datatype not in V2_DATATYPES:
            raise ValueError(f"datatype {self.datatype!r} is not one of "
                             f"{', '.join(V2_DATATYPES)}")
        sources = [name for name, given in (("zero_data", self.zero_data),
                                            ("random_data", self.random_data),
                                            ("input_data_file", self.input_data_file is not None))
                   if given]
        if len(sources) != 1:
            found = " and ".join(sources) if sources else "none"
            raise ValueError(f"takes exactly one of zero_data: true, random_data: true, "
                             f"input_data_file: NAME; got {found}")
        if self.input_data_file is not None:
            check_file_name(self.input_data_file)
        return self

    def row_bytes(self) -> int:
        """Bytes of one row (BYTES: the least its elements can take)."""
        elements = math.prod(self.dims)
        if self.datatype == "BYTES":
            return elements * BYTES_ELEMENT_ESTIMATE
        return elements * v2_to_numpy(self.datatype).itemsize


def check_file_name(name: str) -> str:
    """`name` if it names a file inside the warmup/ folder; ValueError saying why not."""
    path = PurePosixPath(name)
    # "." (or "./") names the folder itself, not a file in it
    if not path.parts or name != name.strip() or "\\" in name or "\0" in name:
        raise ValueError(f"input_data_file {name!r} must be a plain file name in the model's "
                         f"{WARMUP_DIR}/ folder")
    if path.is_absolute() or ".." in path.parts:
        raise ValueError(f"input_data_file {name!r} must lie in the model's {WARMUP_DIR}/ "
                         "folder: give a path relative to it, without '..'")
    return name


class WarmupSample(StrictConfig):
    """One warm-up sample: a batch every instance runs `count` times before it is ready."""

    name: str = Field(min_length=1, description="Names the sample in load errors.")
    batch_size: Int = Field(1, ge=1, description="Rows of the batch (each input's data "
                            "repeated); at most max_batch_size, 1 for a model without batching.")
    inputs: dict[str, WarmupInput] = Field(
        min_length=1, description="Input name -> its data; every model input needs one.")
    count: Int = Field(1, ge=1, le=MAX_COUNT, description="Runs of this sample per instance.")

    @model_validator(mode="after")
    def _check(self) -> WarmupSample:
        size = sum(spec.row_bytes() for spec in self.inputs.values()) * self.batch_size
        if size > MAX_SAMPLE_BYTES:
            raise ValueError(f"sample {self.name!r} takes {size} bytes (batch_size "
                             f"{self.batch_size} x its inputs' dims), over the "
                             f"{MAX_SAMPLE_BYTES} bytes a warm-up sample may take")
        return self


def dims_problem(dims: list[int], shape: tuple[int, ...] | list[int], batched: bool
                 ) -> str | None:
    """Why a sample's row `dims` do not fit an input of `shape` (full, with the batch dim of
    a batched model); None when they do (a variable dim takes the sample's size)."""
    row = list(shape[1:] if batched and shape else shape)
    fits = len(dims) == len(row) and all(
        want in (-1, got) for got, want in zip(dims, row, strict=True))
    return None if fits else f"dims {dims} do not fit the input's row shape {row}"


def _check_against_config(sample: WarmupSample, data: dict[str, Any]) -> None:
    """Batch size against max_batch_size; inputs the config declares, by datatype and dims
    (without preprocess steps: with them, requests send other inputs than the model's)."""
    max_batch = data.get("max_batch_size")
    if max_batch == 0 and sample.batch_size > 1:
        raise ValueError(f"sample {sample.name!r}: batch_size {sample.batch_size} needs a "
                         "model with batching (max_batch_size is 0): use 1")
    if max_batch and sample.batch_size > max_batch:
        raise ValueError(f"sample {sample.name!r}: batch_size {sample.batch_size} is over "
                         f"max_batch_size {max_batch}")
    if data.get("preprocess") or max_batch is None:
        return
    declared = {tensor.name: tensor for tensor in data.get("inputs") or []}
    for name, given in sample.inputs.items():
        tensor = declared.get(name)
        if tensor is None:
            continue  # the model file has it or not: checked when an instance loads it
        if given.datatype != tensor.datatype:
            raise ValueError(f"sample {sample.name!r}: input {name!r} is {tensor.datatype}, "
                             f"not {given.datatype}")
        problem = dims_problem(given.dims, tensor.shape, max_batch > 0)
        if problem:
            raise ValueError(f"sample {sample.name!r}: input {name!r}: {problem}")


def check_samples(samples: list[WarmupSample], info: ValidationInfo) -> list[WarmupSample]:
    """The samples' checks against the rest of the model config (the fields read before)."""
    if not samples:
        return samples
    if info.data.get("kind") == "pipeline":
        raise ValueError("model_warmup is for kind model: a pipeline's steps warm their own "
                         "models")
    names = [sample.name for sample in samples]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"model_warmup names sample {repeated[0]!r} twice")
    for sample in samples:
        _check_against_config(sample, info.data)
    return samples


# The config field's type (surge.repository.config.ModelConfig.model_warmup).
WarmupSamples = Annotated[list[WarmupSample], AfterValidator(check_samples)]
