"""Control messages between the front end and a worker: small frozen dataclasses only.

Tensors never travel inside these: they sit in a shared-memory slot (or follow as raw bytes on
the pipe with the pipe transport), and `TensorMeta` says where.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from surge.runtimes.base import Signature, SpinWait

if TYPE_CHECKING:
    from surge.repository.warmup import WarmupSample

# An instance's warm-up samples as the front end's config has them (a load's override may set
# them); None: the instance reads its config.yaml's.
Warmup = tuple["WarmupSample", ...] | None


@dataclass(frozen=True)
class TensorMeta:
    """Where one tensor lies in a buffer. `dtype` is a numpy dtype string, or "BYTES"."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


@dataclass(frozen=True)
class RunBatch:
    """Front end -> worker: compute the batch whose inputs are in `input_slot`.

    An empty `input_slot` means the input bytes follow on the pipe. Outputs go to
    `output_slot` when they fit (empty: always inline).
    """

    batch_id: int
    tensors: tuple[TensorMeta, ...]
    input_slot: str = ""
    output_slot: str = ""
    output_capacity: int = 0
    model: str = ""  # a shared worker hosts several models: the one to run ("" for a dedicated)


@dataclass(frozen=True)
class BatchDone:
    """Worker -> front end: outputs are in the output slot, or follow on the pipe (`inline`)."""

    batch_id: int
    tensors: tuple[TensorMeta, ...] = ()
    inline: bool = False
    needed: int = 0  # bytes the outputs took: lets the front end grow a too small slot
    input_ns: int = 0
    infer_ns: int = 0
    output_ns: int = 0
    error: str = ""  # the runner raised: the batch's requests fail, the worker lives on
    # The worker thread's CPU for reading the inputs and running the batch: unlike the wall
    # times above, it does not grow while the worker waits for a core on a busy machine.
    cpu_ns: int = 0
    # Rows of the batch its preprocessing refused, with the error: their requests fail with it
    # (HTTP 400), the others are answered (see runtimes.base.RowsRejectedError).
    rejected: tuple[tuple[int, str], ...] = ()
    preprocess_cpu_ns: int = 0  # of `cpu_ns`: the model's preprocessing steps in this worker


@dataclass(frozen=True)
class Ready:
    """Worker -> front end: model loaded and a warm-up batch run."""

    pid: int
    threads: int
    device: str
    signature: Signature


@dataclass(frozen=True)
class LoadFailed:
    """Worker -> front end: the model could not be loaded; the worker exits."""

    error: str


@dataclass(frozen=True)
class Stop:
    """Front end -> worker: finish and exit."""


# -- a shared worker: several models in one process, each addressed by its member id ----------
@dataclass(frozen=True)
class GroupReady:
    """Shared worker -> front end: the process is up (empty: models are loaded one by one)."""

    pid: int
    threads: int


@dataclass(frozen=True)
class LoadModel:
    """Front end -> shared worker: load a model as `member` and warm it up."""

    member: str
    ref: str  # model name, or name@variant
    version: int | None
    threads: int
    device: str
    spin_wait: SpinWait = False
    warmup: Warmup = None  # the front end's model_warmup; None: config.yaml's


@dataclass(frozen=True)
class ModelLoaded:
    """Shared worker -> front end: `member` is loaded and warm; batches for it may come."""

    member: str
    signature: Signature
    device: str
    added_bytes: int  # how much the process's resident memory grew with this load


@dataclass(frozen=True)
class ModelLoadFailed:
    """Shared worker -> front end: `member` could not be loaded; the others are unaffected."""

    member: str
    error: str


@dataclass(frozen=True)
class UnloadModel:
    """Front end -> shared worker: drop `member` (its batches were all answered before this)."""

    member: str


@dataclass(frozen=True)
class ModelUnloaded:
    """Shared worker -> front end: `member` is gone from the process."""

    member: str
    rss_bytes: int
