"""Built-in processors on small and bad inputs: bad data is an InputError naming the input."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import simplejpeg
from PIL import Image

from surge.errors import ConfigError, InputError
from surge.processors import once_per, resolve, target
from surge.processors.images import small_images

RNG = np.random.default_rng(0)


def jpeg(height: int = 60, width: int = 80, quality: int = 95) -> bytes:
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2] = (250, 10, 10)  # left half red, right half blue
    pixels[:, width // 2:] = (10, 10, 250)
    return bytes(simplejpeg.encode_jpeg(pixels, quality=quality))


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def decode(*files: Any, **params: Any) -> np.ndarray:
    params = {"size": [8, 8], **params}
    result = resolve("image.decode").run({"image": np.array(files, dtype=object)}, params)
    return result["pixels"]


def test_short_names_map_to_the_builtin_modules() -> None:
    assert target("image.decode") == "surge.processors.images:decode"
    assert target("text.tokenize") == "surge.processors.text:tokenize"
    assert target("pkg.mod:fn") == "pkg.mod:fn"
    with pytest.raises(ConfigError, match="unknown processor 'audio.decode'"):
        target("audio.decode")
    with pytest.raises(ConfigError, match="has no function 'nope'"):
        resolve("image.nope")
    with pytest.raises(ConfigError, match="cannot import"):
        resolve("no_such_package.mod:fn")


@pytest.mark.parametrize(("params", "layout"), [
    ({"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}, "nchw"),
    ({"layout": "nhwc", "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.3, 0.4], "scale": 0.5}, "nhwc"),
    ({"color": "gray", "layout": "hw", "mean": [0.5], "std": [0.25]}, "hw"),
    ({"color": "gray"}, "nchw"),
])
def test_normalised_pixels_are_scale_mean_and_std_of_the_decoded_ones(
        params: dict[str, Any], layout: str) -> None:
    """Whatever way the float pixels are computed, they are `(x * scale - mean) / std` of the
    uint8 decode, in the configured layout, one contiguous array."""
    pixels = RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    if params.get("color") == "gray":
        pixels = np.repeat(pixels[..., :1], 3, axis=-1)
    files = (png(pixels), png(pixels[::-1].copy()))
    raw = decode(*files, **{**params, "dtype": "uint8", "layout": "nhwc"}).astype(np.float32)
    out = decode(*files, **params)
    p = {"scale": 1 / 255, "mean": [0.0], "std": [1.0], **params}
    expected = (raw * np.float32(p["scale"]) - np.asarray(p["mean"], np.float32)) / np.asarray(
        p["std"], np.float32)
    expected = {"nchw": expected.transpose(0, 3, 1, 2), "nhwc": expected,
                "hw": expected[..., 0]}[layout]
    assert out.dtype == np.float32
    assert out.flags.c_contiguous
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_jpeg_and_png_decode_to_the_same_normalised_batch() -> None:
    pixels = np.zeros((60, 80, 3), np.uint8)
    pixels[:, :40] = (250, 10, 10)
    pixels[:, 40:] = (10, 10, 250)
    out = decode(jpeg(), png(pixels), size=[6, 8], mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
    assert out.shape == (2, 3, 6, 8)
    assert out.dtype == np.float32
    red = out[:, 0]
    assert red[:, :, :3].mean() > 0.9
    assert red[:, :, 5:].mean() < -0.9
    # JPEG's chroma subsampling blurs the edge between the halves: compare away from it.
    np.testing.assert_allclose(out[0][..., :3], out[1][..., :3], atol=0.05)
    np.testing.assert_allclose(out[0][..., 5:], out[1][..., 5:], atol=0.05)


def test_a_crop_keeps_the_center_and_gray_hw_is_uint8_for_detectors() -> None:
    gray = np.tile(np.arange(16, dtype=np.uint8) * 16, (16, 1))
    out = decode(png(gray), size=[4, 4], crop_fraction=0.5, color="gray", layout="hw",
                 dtype="uint8")
    assert out.shape == (1, 4, 4)
    assert out.dtype == np.uint8
    assert out.min() >= 64
    assert out.max() <= 192
    same = decode(png(gray), size=[16, 16], color="gray", layout="nhwc", dtype="uint8")
    np.testing.assert_array_equal(same[0, :, :, 0], gray)


@pytest.mark.parametrize(("data", "message"), [
    (b"", "row 0 is empty"),
    (b"GIF89a....", r"row 0 is not a JPEG or PNG file \(it starts with b'GIF89a"),
    (jpeg()[:200], "row 0 is not a valid JPEG"),
    (b"\xff\xd8\xff" + b"\x00" * 100, "row 0 is not a valid JPEG"),
    (png(np.zeros((4, 4), np.uint8))[:40], "row 0 is not a valid image"),
])
def test_bad_files_name_the_input_and_row(data: bytes, message: str) -> None:
    with pytest.raises(InputError, match=f"input 'image' {message}"):
        decode(data)


def test_a_50_mb_image_is_refused_before_decoding() -> None:
    huge = jpeg() + bytes(50 * 2**20)
    with pytest.raises(InputError, match=r"input 'image' row 1 is 524\d{5} bytes, over the limit "
                                         r"of 20971520"):
        decode(jpeg(), huge)


def test_the_pixel_cap_reads_the_header_so_a_small_file_cannot_expand() -> None:
    header = png(np.zeros((2, 2), np.uint8))
    # The IHDR chunk claims 30000 x 30000 pixels; nothing is decoded.
    bomb = header[:16] + (30000).to_bytes(4, "big") * 2 + header[24:]
    with pytest.raises(InputError, match="30000x30000 pixels, over the limit of 40000000"):
        decode(bomb)
    with pytest.raises(InputError, match="80x60 pixels, over the limit of 1000"):
        decode(jpeg(), max_pixels=1000)


def _chunk(kind: bytes, data: bytes) -> bytes:
    import zlib

    return (len(data).to_bytes(4, "big") + kind + data
            + zlib.crc32(kind + data).to_bytes(4, "big"))


def test_a_png_whose_first_chunk_is_not_ihdr_is_refused_before_decoding() -> None:
    # A text chunk whose first 8 bytes read as 1x1 before the real 20000 x 20000 IHDR: the
    # size checks read the first chunk, Pillow the IHDR (its own bomb check was a 500).
    real = png(np.zeros((2, 2), np.uint8))
    ihdr = real[8:33]
    big = ihdr[:8] + (20000).to_bytes(4, "big") * 2 + ihdr[16:21]
    sneaky = real[:8] + _chunk(b"tEXt", (1).to_bytes(4, "big") * 2 + b"x") + _chunk(
        b"IHDR", big[8:21]) + real[33:]
    with pytest.raises(InputError, match="row 0 is not a valid PNG \\(its first chunk is not IHDR"):
        decode(sneaky)
    assert small_images({"image": np.array([sneaky], dtype=object)}, {})  # refused at once


def test_pillow_decodes_jpegs_when_asked() -> None:
    np.testing.assert_allclose(decode(jpeg(), decoder="pillow"), decode(jpeg()), atol=0.08)


def test_non_bytes_rows_are_refused() -> None:
    with pytest.raises(InputError, match="expects BYTES"):
        resolve("image.decode").run({"image": np.zeros((2, 3), np.float32)}, {"size": [8, 8]})


@pytest.mark.parametrize(("params", "message"), [
    ({}, "params.size must be"),
    ({"size": [8, 8], "layout": "hw"}, "layout hw is for color: gray"),
    ({"size": [8, 8], "mean": [1, 2]}, "params.mean must be 3 number"),
    ({"size": [8, 8], "std": [1, 0, 1]}, "params.std may not hold 0"),
    ({"size": [8, 8], "crop_fraction": 2}, r"params.crop_fraction must be a number in \(0, 1\]"),
])
def test_bad_decode_params_are_config_errors(params: dict[str, Any], message: str) -> None:
    describe = resolve("image.decode").describe
    assert describe is not None
    with pytest.raises(ConfigError, match=message):
        describe(params)


def test_topk_names_the_best_classes_with_probabilities() -> None:
    logits = np.array([[0.0, 3.0, 1.0, 2.0], [5.0, 0.0, 0.0, 0.0]], np.float32)
    out = resolve("labels.topk").run({"logits": logits}, {"k": 2, "labels": ["a", "b", "c", "d"]})
    assert out["labels"].tolist() == [[b"b", b"d"], [b"a", b"b"]]
    assert out["scores"].shape == (2, 2)
    assert out["scores"][0, 0] == pytest.approx(np.exp(3) / np.exp([0, 3, 1, 2]).sum())
    raw = resolve("labels.topk").run({"logits": logits}, {"k": 1, "softmax": False})
    assert raw["labels"].tolist() == [[b"1"], [b"0"]]
    assert raw["scores"].ravel().tolist() == [3, 5]


def test_topk_declares_its_class_count_so_a_label_mismatch_fails_at_load() -> None:
    describe = resolve("labels.topk").describe
    assert describe is not None
    assert describe({"k": 2, "labels": ["a", "b", "c"]}).inputs["logits"].shape == (-1, 3)
    with pytest.raises(ConfigError, match="at least k=5"):
        describe({"labels": ["a"]})
    with pytest.raises(InputError, match="expects .N, C. with C >= 5"):
        resolve("labels.topk").run({"logits": np.zeros((1, 3), np.float32)}, {})


def test_detection_keeps_the_boxes_at_or_above_the_threshold_with_names() -> None:
    boxes = RNG.random((2, 3, 4), dtype=np.float32)
    scores = np.array([[0.2, 0.9, 0.375], [0.1, 0.0, 0.3]], np.float32)
    labels = np.array([[0, 1, 2], [1, 1, 7]], np.int64)
    out = resolve("detection.boxes").run(
        {"boxes": boxes, "scores": scores, "labels": labels},
        {"score_threshold": 0.375, "labels": ["shirt", "shoe", "bag"]})
    assert out["count"].tolist() == [2, 0]
    assert out["labels"].tolist() == [[b"shoe", b"bag", b""], [b"", b"", b""]]
    assert out["scores"][0].tolist() == pytest.approx([0.9, 0.375, 0.0])
    np.testing.assert_array_equal(out["boxes"][0, 0], boxes[0, 1])
    assert not out["boxes"][1].any()


def test_detection_needs_a_threshold_and_matching_shapes() -> None:
    describe = resolve("detection.boxes").describe
    assert describe is not None
    with pytest.raises(ConfigError, match="score_threshold must be a number"):
        describe({})
    with pytest.raises(InputError, match="disagree"):
        resolve("detection.boxes").run(
            {"boxes": np.zeros((1, 3, 4), np.float32), "scores": np.zeros((1, 2), np.float32),
             "labels": np.zeros((1, 3), np.int64)}, {"score_threshold": 0.5})


def test_detection_names_classes_by_index_without_labels_and_unknown_ones_by_nothing() -> None:
    boxes = RNG.random((1, 3, 4), dtype=np.float32)
    scores = np.array([[0.5, 0.9, 0.7]], np.float32)
    labels = np.array([[4, 0, 9]], np.int64)
    inputs = {"boxes": boxes, "scores": scores, "labels": labels}
    by_index = resolve("detection.boxes").run(inputs, {"score_threshold": 0.6})
    assert by_index["labels"].tolist() == [[b"0", b"9", b""]]
    named = resolve("detection.boxes").run(inputs, {"score_threshold": 0.0, "labels": ["a", "b"]})
    assert named["labels"].tolist() == [[b"a", b"", b""]]  # 9 and 4 are past the labels
    np.testing.assert_array_equal(named["boxes"][0], boxes[0, [1, 2, 0]])


def test_once_per_builds_once_for_the_same_params_and_again_when_they_change() -> None:
    built: list[object] = []

    def build(source: dict[str, Any]) -> int:
        built.append(source)
        return len(built)

    params: dict[str, Any] = {"size": [2, 2]}
    assert once_per(params, build) == once_per(params, build) == 1
    params["size"][0] = 3  # edited in place: checked against the copy kept, built again
    assert once_per(params, build) == 2
    assert once_per({"size": [3, 2]}, build) == 3  # another object, however equal
    assert len(built) == 3


def test_label_tables_follow_edited_labels() -> None:
    logits = np.array([[0.0, 3.0]], np.float32)
    labels = ["a", "b"]
    topk = resolve("labels.topk").run
    assert topk({"logits": logits}, {"k": 1, "labels": labels})["labels"].tolist() == [[b"b"]]
    labels[1] = "bee"
    assert topk({"logits": logits}, {"k": 1, "labels": labels})["labels"].tolist() == [[b"bee"]]
    found = {"boxes": np.zeros((1, 1, 4), np.float32), "scores": np.ones((1, 1), np.float32),
             "labels": np.ones((1, 1), np.int64)}
    boxes = resolve("detection.boxes").run
    assert boxes(found, {"score_threshold": 0.5, "labels": labels})["labels"].tolist() == [[b"bee"]]
    labels[1] = "b"
    assert boxes(found, {"score_threshold": 0.5, "labels": labels})["labels"].tolist() == [[b"b"]]


def test_a_png_already_in_the_wanted_mode_decodes_to_the_same_pixels() -> None:
    gray = RNG.integers(0, 256, (6, 5), dtype=np.uint8)
    params = {"size": [6, 5], "color": "gray", "layout": "hw", "dtype": "uint8"}
    out = resolve("image.decode").run({"image": np.array([png(gray)], dtype=object)}, params)
    np.testing.assert_array_equal(out["pixels"][0], gray)
    rgb = resolve("image.decode").run({"image": np.array([png(gray)] * 2, dtype=object)},
                                      {**params, "color": "rgb", "layout": "nhwc"})
    assert rgb["pixels"].shape == (2, 6, 5, 3)
    np.testing.assert_array_equal(rgb["pixels"][1, ..., 2], gray)


@pytest.mark.parametrize("params", [{"size": [224, 224]}, {"size": [28, 28], "mode": "gray"}])
def test_the_probes_example_is_a_photo_like_jpeg_of_the_target_size(params: dict[str, Any]
                                                                    ) -> None:
    # A uniform image decodes faster than a photo, so the latency probe would predict the
    # first batches of real images too fast.
    from surge.processors.images import example_file

    data = example_file(params)["image"][0]
    assert data.startswith(b"\xff\xd8")
    pixels = decode(data, **params)
    assert pixels.shape[-2:] == tuple(params["size"])
    assert pixels.std() > 0.2


@pytest.mark.parametrize("text", ["\x00", "\x00\x00 \x00", "\u200b", "\ufeff", "\x07\u200d"])
def test_text_the_tokenizer_drops_whole_is_refused_as_empty(text: str) -> None:
    """Control and format characters alone tokenize to nothing: such a row is empty, as a blank
    one is (it was answered with the empty string's tokens)."""
    tokenize = resolve("text.tokenize").run
    params = {"tokenizer": "surge.zoo.minilm:tokenizer_file", "max_length": 16}
    rows = np.array([[b"hello"], [text.encode()]], dtype=object)
    with pytest.raises(InputError, match=r"input 'text' row 1: empty text \(no tokens once "
                                         r"normalised\)"):
        tokenize({"text": rows}, params)
    kept = tokenize({"text": np.array([[b"hello\x00world"]], dtype=object)},
                    {**params, "outputs": ["input_ids"]})
    assert kept["input_ids"].shape == (1, 4)  # [CLS] hello world [SEP]: NUL dropped, text kept
    # max_length 2 leaves room for the special tokens only: every row would be [CLS] [SEP]
    with pytest.raises(ConfigError, match="max_length 2 leaves no room for text"):
        tokenize({"text": rows[:1]}, {**params, "max_length": 2})
