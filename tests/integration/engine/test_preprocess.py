"""`preprocess:` steps run in the model's own instances: PNG bytes in, the model's answer out, and
a file the decoder refuses fails its own request only, not the requests batched with it."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tests.integration.engine.test_engine import run, serving

from surge.errors import InputError
from surge.protocol.metadata import model_metadata

DECODE = """\
max_batch_size: 8
batching: {{max_queue_delay_ms: 100.0}}
threads: 1
{placement}
preprocess:
  - name: decode
    processor: image.decode
    inputs: {{image: png}}
    outputs: {{pixels: image}}
    params: {{size: [8, 8], color: gray, layout: hw, scale: 1.0}}
"""


def png(value: int, side: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((side, side), value, np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def files(*contents: bytes) -> dict[str, np.ndarray]:
    return {"png": np.array(contents, dtype=object)}


@pytest.mark.parametrize("placement", [
    "instances: 1\nplacement: local", "instances: 1\nplacement: in-process", "worker: shared"])
def test_bytes_in_answers_out_and_a_bad_file_fails_only_its_request(
        tmp_path: Path, placement: str) -> None:
    async def body() -> None:
        models = {"sum": ("image_sum", DECODE.format(placement=placement))}
        async with serving(tmp_path, models) as engine:
            signature = engine.model("sum").signature
            assert [(s.name, s.datatype, s.shape) for s in signature.inputs] == [
                ("png", "BYTES", (-1,))]
            assert model_metadata(engine.model("sum"))["inputs"] == [
                {"name": "png", "datatype": "BYTES", "shape": [-1]}]
            one = await engine.infer("sum", None, files(png(3)))
            assert one["total"].tolist() == [64 * 3.0]
            # A busy instance makes the next requests queue into one batch.
            sent = [files(png(v)) for v in (1, 2)] + [files(b"not a png")] + [
                files(png(4), png(5)), files(png(6), png(7)[:40])]
            before = engine.stats("sum").execution_count
            got = await asyncio.gather(*(engine.infer("sum", None, f) for f in sent),
                                       return_exceptions=True)
            assert [g["total"].tolist() for g in (got[0], got[1], got[3])] == [
                [64.0], [128.0], [256.0, 320.0]]
            assert isinstance(got[2], InputError)
            assert "input 'png' is not a JPEG or PNG file" in str(got[2])
            assert isinstance(got[4], InputError)
            assert "input 'png' is not a valid image" in str(got[4])
            assert str(got[4]).endswith("(row 1)")  # the row within its request
            stats = engine.stats("sum")
            assert stats.execution_count - before < len(sent)  # some were batched together
            assert stats.fail[0] == 2
            assert stats.preprocess_cpu[0] >= 1
            assert stats.preprocess_cpu[1] > 0
            # Every row refused: the batch fails those requests with their errors, no engine run.
            with pytest.raises(InputError, match="input 'png' is empty"):
                await engine.infer("sum", None, files(b""))
            again = await engine.infer("sum", None, files(png(9)))
            assert again["total"].tolist() == [64 * 9.0]

    run(body())


def test_a_second_entry_serves_the_same_files_as_bytes_through_links(tmp_path: Path) -> None:
    """The model fed tensors and the same files fed PNGs: the second entry's version directory
    is a link to the first's (inside the repository, so the repository follows it)."""
    plain = DECODE.format(placement="placement: in-process").split("preprocess:")[0]

    async def body() -> None:
        (tmp_path / "files").mkdir()
        (tmp_path / "files" / "1").symlink_to(Path("..") / "sum" / "1")
        (tmp_path / "files" / "config.yaml").write_text(
            DECODE.format(placement="placement: in-process"))
        async with serving(tmp_path, {"sum": ("image_sum", plain)}) as engine:
            tensors = await engine.infer("sum", None, {"image": np.full((1, 8, 8), 2.0,
                                                                        np.float32)})
            decoded = await engine.infer("files", None, files(png(2)))
            assert tensors["total"].tolist() == decoded["total"].tolist() == [128.0]

    run(body())


def test_the_latency_probe_sends_files_the_decoder_takes(tmp_path: Path) -> None:
    """With `slo_p99_ms`, batch times are known before the first request: the probe sends blank
    PNGs of the target size through the decode step."""
    config = DECODE.format(placement="instances: 1\nplacement: local") + "slo_p99_ms: 50\n"

    async def body() -> None:
        async with serving(tmp_path, {"sum": ("image_sum", config)}) as engine:
            model = engine._find("sum", None)
            assert model.scheduler.batch_time(1) is not None
            assert model.scheduler.batch_time(8) is not None
            assert engine.stats("sum").inference_count == 0  # the probe is no traffic
            got = await engine.infer("sum", None, files(png(1)))
            assert got["total"].tolist() == [64.0]

    run(body())
