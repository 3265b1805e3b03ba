"""Checks a `torch.export` archive (`.pt2`) before `torch.export.load` sees it.

`torch.export.load` unpickles several entries with `weights_only=False`: the sample inputs and
legacy weight files (after a failed `weights_only=True` attempt), weights and constants whose
config says `use_pickle`, and custom or opaque objects among the constants. A crafted archive can
therefore run code on load. The archive is read into memory once, every entry torch would
unpickle is tried with `weights_only=True` (tensors and plain containers only), configs that ask
for arbitrary pickles are refused, and only then are the same bytes handed to torch: the file
cannot change between the check and the load.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

from surge.errors import ModelLoadError, clipped

# Entries torch reads with torch.load: sample inputs (`*/data/sample_inputs/<model>.pt`), the
# legacy `*/data/weights/<model>.pt` and `*/data/constants/<model>.pt`, and the files of the older
# non-archive format (`serialized_state_dict.pt`, ...).
_PICKLE_SUFFIXES = (".pt", ".pkl")
_PAYLOAD_CONFIGS = ("_weights_config.json", "_constants_config.json")
# Constant files torch turns into objects by unpickling them without restriction.
_OBJECT_PREFIXES = ("custom_obj", "opaque_obj")


def read_checked_archive(path: Path) -> io.BytesIO:
    """The archive's bytes, once every entry that torch would unpickle is shown to be plain data."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read the model file ({exc.strerror})") from None
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise ModelLoadError(f"{path}: not a valid torch.export program (not a zip archive)") \
            from None
    with archive:
        for info in archive.infolist():
            if info.filename.endswith(_PICKLE_SUFFIXES):
                _check_tensor_pickle(path, info.filename, archive.read(info))
            elif info.filename.endswith(_PAYLOAD_CONFIGS):
                _check_payload_config(path, info.filename, archive.read(info))
    return io.BytesIO(data)


def _refused(path: Path, entry: str, why: str) -> ModelLoadError:
    return ModelLoadError(f"{path}: refused to load: archive entry {clipped(entry, 120)} {why}")


def _check_tensor_pickle(path: Path, entry: str, data: bytes) -> None:
    import torch

    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise _refused(path, entry, f"is not plain tensor data ({clipped(first)})") from None


def _check_payload_config(path: Path, entry: str, data: bytes) -> None:
    try:
        config = json.loads(data).get("config", {})
        payloads: list[Any] = list(config.values())
    except (ValueError, AttributeError):
        raise _refused(path, entry, "is not a valid payload config") from None
    for payload in payloads:
        if not isinstance(payload, dict):
            raise _refused(path, entry, "is not a valid payload config")
        if payload.get("use_pickle"):
            raise _refused(path, entry, "stores a tensor as a pickle")
        if str(payload.get("path_name", "")).startswith(_OBJECT_PREFIXES):
            raise _refused(path, entry, "holds a pickled Python object")
