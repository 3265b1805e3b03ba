"""Image bytes -> a decoded, resized, normalised batch tensor (`image.decode`).

Each request row is one JPEG or PNG file (V2 BYTES). JPEGs are decoded by libjpeg-turbo through
simplejpeg, which also scales in the DCT domain (1/2, 1/4, 1/8) when the target is much smaller
than the photo: a 12-megapixel photo for a 224x224 model decodes at an eighth of the pixels
(benchmarks/pipelines.py measures it against Pillow). PNGs go through Pillow. The size is read
from the header and checked before anything is decoded, so a small file cannot expand into a huge
bitmap; nor can it cost more than its pixels: a JPEG of more than MAX_JPEG_SCANS scans, or a PNG
of more chunks than MAX_PNG_CHUNKS and one per KiB, is refused before decoding.

params: size [H, W] (required); crop_fraction (1.0: the whole image scaled to cover H x W and
center-cropped; 0.875: the ImageNet recipe, shorter side to 256 then a 224 crop); color rgb|gray;
layout nchw|nhwc|hw (hw: gray only, [N, H, W]); dtype float32|uint8; scale (float32: 1/255),
mean and std per channel; max_bytes (20 MiB) and max_pixels (40 M) per image; decoder
simplejpeg|pillow (JPEGs only; for comparisons).
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

from surge.errors import ConfigError, InputError
from surge.processors import ProcessorSpec, declares, once_per
from surge.runtimes.base import TensorSpec

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAX_SIDE = 8192
# JPEGs are scaled in the DCT domain only down to this multiple of the target size; the
# antialiased resize does the rest. MobileNetV2's top-1 on 18 photos as JPEG agreed with the
# framework's Pillow preprocessing of the originals on 14 when scaling right down to the target
# (textures moved), on 17 at 2x, as with Pillow's full decode (the 18th moves with JPEG itself).
DCT_MARGIN = 2.0
# A request whose images hold at most this many pixels in all (and no file over INLINE_BYTES) is
# decoded on the event loop: the hand-off to a processor thread and back cost ~200 us of process
# CPU a call (a 128x128 PNG step: 471 us through a thread, 271 us on the loop); a 256x256 image
# blocks the loop ~1 ms at most.
INLINE_PIXELS = 256 * 256
INLINE_BYTES = 256 * 1024
# A progressive JPEG is decoded scan by scan, each scan over every block of the image: 8,000
# repeated scans of a blank 4000x4000 image are a 206 KB file that took 3.2 s to refuse, and a
# 240 KB one of 256x256 pixels, small enough to decode on the event loop, held it 0.18 s
# (health checks waited 1.5 s behind eight such clients). Encoders write 1 (baseline) to about
# 10 scans; libjpeg-turbo leaves such a limit to its callers (TJPARAM_SCANLIMIT).
MAX_JPEG_SCANS = 256
# Pillow reads a PNG's chunks one at a time in Python, holding the GIL (2.7 us a chunk: 20 MB of
# empty chunks, seconds). Encoders write image data in chunks of 8-64 KiB.
MAX_PNG_CHUNKS = 1024
SOS = b"\xff\xda"  # a scan's marker; never inside entropy-coded data, where 0xff is escaped


@dataclass(frozen=True)
class DecodeParams:
    """Validated params of `image.decode`."""

    height: int
    width: int
    crop_fraction: float
    gray: bool
    layout: str
    dtype: str
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    max_bytes: int
    max_pixels: int
    decoder: str

    @property
    def channels(self) -> int:
        return 1 if self.gray else 3


def _choice(params: Mapping[str, Any], key: str, default: str, allowed: tuple[str, ...]) -> str:
    value = str(params.get(key, default)).lower()
    if value not in allowed:
        raise ConfigError(f"params.{key} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _positive(params: Mapping[str, Any], key: str, default: float, upper: float) -> float:
    value = params.get(key, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value <= upper:
        raise ConfigError(f"params.{key} must be a number in (0, {upper:g}], got {value!r}")
    return float(value)


def _per_channel(params: Mapping[str, Any], key: str, default: float, channels: int,
                 ) -> tuple[float, ...]:
    value = params.get(key, [default] * channels)
    values = value if isinstance(value, list) else [value] * channels
    if len(values) != channels or not all(isinstance(v, int | float) for v in values):
        raise ConfigError(f"params.{key} must be {channels} number(s), got {value!r}")
    if key == "std" and any(v == 0 for v in values):
        raise ConfigError("params.std may not hold 0")
    return tuple(float(v) for v in values)


def decode_params(params: Mapping[str, Any]) -> DecodeParams:
    """Check `image.decode`'s params; ConfigError names the bad one."""
    size = params.get("size")
    if not (isinstance(size, list) and len(size) == 2
            and all(isinstance(d, int) and 0 < d <= MAX_SIDE for d in size)):
        raise ConfigError(f"params.size must be [height, width] up to {MAX_SIDE}, got {size!r}")
    gray = _choice(params, "color", "rgb", ("rgb", "gray")) == "gray"
    layout = _choice(params, "layout", "nchw", ("nchw", "nhwc", "hw"))
    if layout == "hw" and not gray:
        raise ConfigError("params.layout hw is for color: gray")
    dtype = _choice(params, "dtype", "float32", ("float32", "uint8"))
    channels = 1 if gray else 3
    return DecodeParams(
        size[0], size[1], _positive(params, "crop_fraction", 1.0, 1.0), gray, layout, dtype,
        _positive(params, "scale", 1 / 255 if dtype == "float32" else 1.0, 1e6),
        _per_channel(params, "mean", 0.0, channels), _per_channel(params, "std", 1.0, channels),
        int(_positive(params, "max_bytes", 20 * 2**20, 2**30)),
        int(_positive(params, "max_pixels", 40e6, 1e9)),
        _choice(params, "decoder", "simplejpeg", ("simplejpeg", "pillow")))


def _output_shape(p: DecodeParams) -> list[int]:
    if p.layout == "hw":
        return [-1, p.height, p.width]
    if p.layout == "nhwc":
        return [-1, p.height, p.width, p.channels]
    return [-1, p.channels, p.height, p.width]


def describe_decode(params: Mapping[str, Any]) -> ProcessorSpec:
    p = decode_params(params)
    datatype = "FP32" if p.dtype == "float32" else "UINT8"
    return ProcessorSpec({"image": TensorSpec("image", "BYTES", (-1,))},
                         {"pixels": TensorSpec("pixels", datatype, tuple(_output_shape(p)))})


def _header_pixels(data: Any) -> int:
    """Pixels a file says it holds, from its header only; not a file, or a large one, counts as
    too many."""
    if not isinstance(data, bytes) or len(data) > INLINE_BYTES:
        return INLINE_PIXELS + 1
    if data.startswith(PNG_MAGIC):
        size = _png_size(data)
        return 0 if size is None else size[0] * size[1]  # not a PNG: refused at once
    if data.startswith(JPEG_MAGIC):
        try:
            height, width, _, _ = simplejpeg.decode_jpeg_header(data)
        except ValueError:
            return 0  # corrupt: the decode fails at once, wherever it runs
        return int(height) * int(width)
    return 0  # not an image: refused before anything is decoded


def small_images(inputs: dict[str, np.ndarray], params: Mapping[str, Any]) -> bool:
    """Whether a call's images are small enough to decode on the event loop (INLINE_PIXELS)."""
    images = inputs.get("image")
    if not isinstance(images, np.ndarray) or images.dtype != object:
        return False
    total = 0
    for data in images.reshape(-1):
        total += _header_pixels(data)
        if total > INLINE_PIXELS:
            return False
    return True


def example_file(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """One JPEG (quality 90) of the target size and color, of seeded noise: a valid row for
    `decode` that costs about what a photo of that size does (at 224x224, 0.86 ms against a
    photo's 0.83; a blank PNG took 0.51), so the latency probe does not predict the first
    batches of real images too fast."""
    p = once_per(params, decode_params)
    shape = (p.height, p.width) if p.gray else (p.height, p.width, 3)
    pixels = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return {"image": np.array([buffer.getvalue()], dtype=object)}


@declares(describe_decode, inline_when=small_images, example=example_file)
def decode(inputs: dict[str, np.ndarray], params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """BYTES [N] (or [N, 1]) of JPEG/PNG files -> `pixels` [N, C, H, W] (per params)."""
    p = once_per(params, decode_params)
    images = inputs["image"]
    rows = images.shape[0] if images.ndim else 0
    if images.dtype != object or images.size != rows:
        raise InputError(f"input 'image' expects BYTES [-1] (one file per row), got "
                         f"{list(images.shape)}")
    files = images.reshape(-1)
    decoded = [_decode_one(files[i], i, p) for i in range(rows)]
    # One image (most requests): a view with the batch dim, not np.stack's copy.
    batch = decoded[0][None] if rows == 1 else np.stack(decoded)
    return {"pixels": _normalise(batch, p)}


def _decode_one(data: Any, row: int, p: DecodeParams) -> np.ndarray:
    """One file -> uint8 [H, W, C]."""
    where = f"input 'image' row {row}"
    if not isinstance(data, bytes | bytearray | memoryview) or len(data) == 0:
        raise InputError(f"{where} is empty")
    data = bytes(data)
    if len(data) > p.max_bytes:
        raise InputError(f"{where} is {len(data)} bytes, over the limit of {p.max_bytes}")
    if data.startswith(JPEG_MAGIC):
        if not _one_scan(data) and (scans := data.count(SOS)) > MAX_JPEG_SCANS:
            raise InputError(f"{where} is a JPEG of {scans} scans, over the limit of "
                             f"{MAX_JPEG_SCANS}")
        if p.decoder == "simplejpeg":
            return _decode_jpeg(data, where, p)
    elif data.startswith(PNG_MAGIC):
        size = _png_size(data)
        if size is None:
            raise InputError(f"{where} is not a valid PNG (its first chunk is not IHDR)")
        _check_pixels(*size, where, p)
        _check_chunks(data, where)
    else:
        raise InputError(f"{where} is not a JPEG or PNG file (it starts with {data[:8]!r})")
    return _decode_pillow(data, where, p)


def _one_scan(data: bytes) -> bool:
    """Whether a JPEG's markers read cleanly to a sequential frame whose first scan holds all
    its components: libjpeg refuses a second scan of such a file at once, so only the others
    (progressive, one component a scan, anything odd) need their scans counted (a count is 3%
    of a photo's decode; reading the markers, microseconds)."""
    offset, components = 2, 0
    while offset + 9 < len(data) and data[offset] == 0xFF:
        marker = data[offset + 1]
        if marker == 0xFF:  # a fill byte before a marker
            offset += 1
            continue
        if marker in (0xC0, 0xC1):  # baseline or extended sequential frame: Nf at +9
            components = data[offset + 9]
        elif 0xC2 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # another frame
            return False
        elif marker == 0xDA:  # the first scan: Ns at +4
            return components > 0 and data[offset + 4] == components
        offset += 2 + int.from_bytes(data[offset + 2:offset + 4], "big")
    return False


def _check_chunks(data: bytes, where: str) -> None:
    """Refuse a PNG of more than MAX_PNG_CHUNKS chunks and one per KiB, counted up to IEND
    (the walk stops at the limit, so it costs at most what Pillow's reading would)."""
    limit = MAX_PNG_CHUNKS + len(data) // 1024
    offset, chunks = 8, 0
    while offset + 8 <= len(data) and data[offset + 4:offset + 8] != b"IEND":
        chunks += 1
        if chunks > limit:
            raise InputError(f"{where} is a PNG of more than {limit} chunks (at most "
                             f"{MAX_PNG_CHUNKS} and one per KiB)")
        offset += 12 + int.from_bytes(data[offset:offset + 4], "big")


def _png_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) of a PNG's IHDR, which the format puts first; None when it is not
    there (Pillow would find a later one, past the size checks made from the first)."""
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    return int.from_bytes(data[20:24], "big"), int.from_bytes(data[16:20], "big")


def _check_pixels(height: int, width: int, where: str, p: DecodeParams) -> None:
    if height * width > p.max_pixels:
        raise InputError(f"{where} is {width}x{height} pixels, over the limit of "
                         f"{p.max_pixels} pixels")
    if height < 1 or width < 1:
        raise InputError(f"{where} has no pixels ({width}x{height})")


def _scale(height: int, width: int, p: DecodeParams) -> float:
    """The factor that makes the image cover the target before the center crop."""
    return max(p.height / height, p.width / width) / p.crop_fraction


def _decode_jpeg(data: bytes, where: str, p: DecodeParams) -> np.ndarray:
    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
        _check_pixels(height, width, where, p)
        scale = _scale(height, width, p)
        pixels = simplejpeg.decode_jpeg(
            data, colorspace="GRAY" if p.gray else "RGB", fastdct=False, fastupsample=False,
            min_height=math.ceil(height * scale * DCT_MARGIN),
            min_width=math.ceil(width * scale * DCT_MARGIN))
    except ValueError as exc:
        raise InputError(f"{where} is not a valid JPEG ({exc})") from None
    return _resize(Image.fromarray(pixels[..., 0] if p.gray else pixels), p)


def _decode_pillow(data: bytes, where: str, p: DecodeParams) -> np.ndarray:
    mode = "L" if p.gray else "RGB"
    try:
        with Image.open(io.BytesIO(data)) as image:
            _check_pixels(image.height, image.width, where, p)
            # Read before the file closes; a file already in the mode (the detector's gray
            # canvases) is used as decoded: convert() would copy it.
            return _resize(image if image.mode == mode else image.convert(mode), p)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError,
            Image.DecompressionBombError) as exc:
        raise InputError(f"{where} is not a valid image ({exc})") from None


def _resize(image: Image.Image, p: DecodeParams) -> np.ndarray:
    """Scale to cover H x W, center-crop; one Pillow call (antialiased bilinear) on the crop box."""
    if image.size != (p.width, p.height) or p.crop_fraction != 1.0:
        scale = _scale(image.height, image.width, p)
        box_w, box_h = p.width / scale, p.height / scale
        left, top = (image.width - box_w) / 2, (image.height - box_h) / 2
        image = image.resize((p.width, p.height), Image.Resampling.BILINEAR,
                             box=(left, top, left + box_w, top + box_h))
    array = np.asarray(image)
    return array[..., None] if array.ndim == 2 else array


def _normalise(batch: np.ndarray, p: DecodeParams) -> np.ndarray:
    """uint8 [N, H, W, C] -> the configured dtype and layout.

    FP32 is `x * scale / std - mean / std`, computed straight into the output: for NCHW one
    channel at a time into its contiguous plane (a 224x224 photo: 0.1 ms, against 0.7-1.4 ms
    for the textbook `(x * scale - mean) / std` and a transposing copy, whose temporaries and
    strided writes cost more than the arithmetic)."""
    if p.dtype != "float32":
        if p.layout == "hw":
            return np.ascontiguousarray(batch[..., 0])
        if p.layout == "nchw":
            return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
        return batch
    factor, shift = _affine(p.scale, p.mean, p.std)
    if p.layout == "nhwc":
        out = np.multiply(batch, factor, dtype=np.float32)
        out -= shift
        return out
    rows, height, width, channels = batch.shape
    planes = np.empty((rows, channels, height, width), np.float32)
    for c in range(channels):
        np.multiply(batch[..., c], factor[c], out=planes[:, c], casting="unsafe")
        planes[:, c] -= shift[c]
    return planes[:, 0] if p.layout == "hw" else planes


@functools.cache
def _affine(scale: float, mean: tuple[float, ...], std: tuple[float, ...]
            ) -> tuple[np.ndarray, np.ndarray]:
    """Per channel (factor, shift) with `(x * scale - mean) / std == x * factor - shift`."""
    std_ = np.asarray(std, np.float64)
    return ((scale / std_).astype(np.float32),
            (np.asarray(mean, np.float64) / std_).astype(np.float32))
