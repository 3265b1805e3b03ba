"""Shared facts defined once: the BYTES codec, the strict config base, the served version."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from surge.configfile import StrictConfig
from surge.errors import NotFoundError
from surge.protocol.tensors import deserialize_bytes, serialize_bytes
from surge.repository import served_version
from surge.repository.config import BatchingConfig, ModelConfig
from surge.train.config import OptimizerConfig, TrainConfig
from surge.workers.transport import pack, unpack


def test_bytes_codec_round_trip() -> None:
    items = np.array([b"", b"\x00\xff", "caf\u00e9", 42], dtype=object)
    raw = serialize_bytes(items)
    assert raw[:4] == b"\x00\x00\x00\x00"  # 4-byte little-endian length, then the bytes
    decoded = deserialize_bytes("t", raw, len(items))
    assert decoded.tolist() == [b"", b"\x00\xff", "caf\u00e9".encode(), b"42"]


def test_worker_transport_speaks_the_wire_codec() -> None:
    """Shared memory carries BYTES exactly as the V2 wire format does."""
    first = np.array([[b"a", b"bc"]], dtype=object)
    second = np.array([["d", b""]], dtype=object)
    buffer = bytearray(4096)
    metas = pack({"s": [first, second]}, lambda n: memoryview(buffer)[:n])
    meta = metas[0]
    assert bytes(buffer[meta.offset:meta.offset + meta.nbytes]) == \
        serialize_bytes(first) + serialize_bytes(second)
    out = unpack(metas, memoryview(buffer))["s"]
    assert out.shape == (2, 2)
    assert out.tolist() == [[b"a", b"bc"], [b"d", b""]]


@pytest.mark.parametrize("schema", [ModelConfig, BatchingConfig, TrainConfig, OptimizerConfig])
def test_every_config_schema_derives_from_the_strict_base(schema: type) -> None:
    assert issubclass(schema, StrictConfig)


def test_the_strict_base_rejects_unknown_keys_and_is_frozen() -> None:
    with pytest.raises(ValidationError, match="extra"):
        BatchingConfig.model_validate({"enabled": True, "batchign": 1})
    config = OptimizerConfig()
    with pytest.raises(ValidationError, match="frozen"):
        config.lr = 1.0  # type: ignore[misc]


def test_served_version_is_the_newest_unless_named() -> None:
    assert served_version("m", [1, 3, 2]) == 3
    assert served_version("m", [1, 3], 1) == 1
    with pytest.raises(NotFoundError, match=r"no served version 2 \(served: \[1, 3\]\)"):
        served_version("m", [3, 1], 2)
    with pytest.raises(NotFoundError, match="no servable version"):
        served_version("m", [])
