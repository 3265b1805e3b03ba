"""`image.decode` refuses files that would cost far more than their pixels before decoding them:
progressive JPEGs of thousands of scans and PNGs of thousands of tiny chunks (each small enough to
be decoded on the event loop, which it held while it decoded)."""

from __future__ import annotations

import io
import zlib
from typing import Any

import numpy as np
import pytest
import simplejpeg
from PIL import Image

from surge.errors import InputError
from surge.processors import resolve
from surge.processors.images import MAX_JPEG_SCANS, small_images


def decode(data: bytes, **params: Any) -> np.ndarray:
    params = {"size": [8, 8], **params}
    return resolve("image.decode").run({"image": np.array([data], dtype=object)},
                                       params)["pixels"]


def progressive_jpeg(size: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (10, 200, 30)).save(buffer, "JPEG", progressive=True)
    return buffer.getvalue()


def _segments(data: bytes) -> list[bytes]:
    """A JPEG's segments after SOI, each scan with its entropy-coded data."""
    segments, offset = [], 2
    while data[offset + 1] != 0xD9:
        end = offset + 2 + int.from_bytes(data[offset + 2:offset + 4], "big")
        if data[offset + 1] == 0xDA:  # the scan's data runs to the next marker
            while not (data[end] == 0xFF and data[end + 1] not in (0x00, *range(0xD0, 0xD8))):
                end += 1
        segments.append(data[offset:end])
        offset = end
    return segments


def scan_bomb(scans: int) -> bytes:
    """A blank progressive JPEG with its smallest AC scan repeated: a few bytes a scan, each
    decoded over every block of the image."""
    segments = _segments(progressive_jpeg())
    ac = min([s for s in segments if s[1] == 0xDA][1:], key=len)
    kept = b"".join(segments)
    return b"\xff\xd8" + kept + ac * (scans - kept.count(b"\xff\xda")) + b"\xff\xd9"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def png_in_chunks(pixels: np.ndarray, idat_bytes: int, extra: int = 0) -> bytes:
    """A PNG whose image data is split into chunks of `idat_bytes`, after `extra` empty
    ancillary chunks."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    whole = buffer.getvalue()
    stream = zlib.compress(np.pad(pixels, ((0, 0), (1, 0))).tobytes())  # filter 0 on each row
    idats = b"".join(_chunk(b"IDAT", stream[i:i + idat_bytes])
                     for i in range(0, len(stream), idat_bytes))
    return whole[:33] + _chunk(b"prVt", b"") * extra + idats + _chunk(b"IEND", b"")


def _never_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("decoded a file the checks should have refused")

    monkeypatch.setattr(simplejpeg, "decode_jpeg", refuse)
    monkeypatch.setattr(Image, "open", refuse)


@pytest.mark.parametrize("decoder", ["simplejpeg", "pillow"])
def test_a_jpeg_of_thousands_of_scans_is_refused_before_decoding(
        monkeypatch: pytest.MonkeyPatch, decoder: str) -> None:
    bomb = scan_bomb(5000)
    assert len(bomb) < 256 * 1024
    assert small_images({"image": np.array([bomb], dtype=object)}, {})  # would run on the loop
    _never_decoded(monkeypatch)
    with pytest.raises(InputError, match=f"input 'image' row 0 is a JPEG of 5000 scans, over "
                                         f"the limit of {MAX_JPEG_SCANS}"):
        decode(bomb, decoder=decoder)


def test_ordinary_jpegs_still_decode() -> None:
    assert decode(progressive_jpeg()).shape == (1, 3, 8, 8)
    with pytest.raises(InputError, match="not a valid JPEG"):  # at the limit: the decoder's
        decode(scan_bomb(MAX_JPEG_SCANS))  # to judge (it finds the repeated scans out of order)
    gray = simplejpeg.encode_jpeg(np.zeros((16, 16, 1), np.uint8), colorspace="GRAY")
    assert decode(gray, color="gray", layout="hw", dtype="uint8").shape == (1, 8, 8)


def test_a_png_of_thousands_of_empty_chunks_is_refused_before_decoding(
        monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = png_in_chunks(np.zeros((8, 8), np.uint8), 64, extra=20_000)
    _never_decoded(monkeypatch)
    with pytest.raises(InputError, match=r"input 'image' row 0 is a PNG of more than 1258 "
                                         r"chunks \(at most 1024 and one per KiB\)"):
        decode(bomb)


def test_pngs_with_their_data_in_small_chunks_still_decode() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (512, 512), np.uint8)
    split = png_in_chunks(pixels, 1024)  # libpng writes 8 KiB chunks; this is 1 KiB
    assert split.count(b"IDAT") > 200
    np.testing.assert_array_equal(decode(split, size=[512, 512], color="gray", layout="hw",
                                         dtype="uint8")[0], pixels)
