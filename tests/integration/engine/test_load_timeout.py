"""`load_timeout_s`: a load whose warm-up never ends fails, and its workers are killed."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from safetensors.torch import save_file
from tests.integration.server.conftest import HERE

from surge.engine import Engine
from surge.errors import ModelLoadError
from surge.repository import Repository

pytestmark = pytest.mark.timeout(120)

# Each warm-up batch computes for a minute.
HUNG = """\
engine: torch_factory
factory: models:slow_double
factory_kwargs: {delay_ms: 60000}
inputs: [{name: x, datatype: FP32, shape: [-1, 4]}]
outputs: [{name: output, datatype: FP32, shape: [-1, 4]}]
max_batch_size: 2
instances: 2
threads: 1
load_timeout_s: 5
model_warmup:
  - name: zeros
    inputs: {x: {datatype: FP32, dims: [4], zero_data: true}}
"""


def _workers() -> set[int]:
    """This process's children that multiprocessing spawned (not its resource tracker)."""
    pid = os.getpid()
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return {int(p) for p in children
            if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()}


def test_a_warm_up_that_never_ends_fails_the_load_and_kills_its_workers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The model stayed LOADING for ever and its load request was never answered."""
    (tmp_path / "hung" / "1").mkdir(parents=True)
    save_file({}, str(tmp_path / "hung" / "1" / "model.safetensors"))
    (tmp_path / "hung" / "config.yaml").write_text(HUNG)
    monkeypatch.syspath_prepend(str(HERE))  # the workers import models:slow_double

    async def body() -> None:
        engine = Engine(Repository(tmp_path), models=["hung"])
        before = _workers()
        started = time.monotonic()
        with pytest.raises(ModelLoadError, match=r"within 5 s \(load_timeout_s\)"):
            await engine.start()
        assert time.monotonic() - started < 30
        (row,) = engine.index()
        assert row["state"] == "UNAVAILABLE"
        assert "load_timeout_s" in row["reason"]
        assert not _workers() - before
        await engine.stop()

    asyncio.run(body())
