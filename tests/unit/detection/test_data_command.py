"""`surge data fashion-detection`: writes the three splits and the evaluation archives."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from surge_examples.detection.coco import load_split
from tests.cli_runner import run_cli


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code, out, err = run_cli(args, capsys)
    return code, out + err


def test_command_writes_splits_and_eval_archives(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run(["data", "fashion-detection", str(tmp_path), "--train", "12", "--val", "6",
                      "--test", "5", "--seed", "3"], capsys)
    assert code == 0, out
    for split, count in (("train", 12), ("val", 6), ("test", 5)):
        data = load_split(tmp_path / split)
        assert data.images.shape == (count, 128, 128)
        assert data.images.dtype == np.uint8
    with np.load(tmp_path / "test.npz") as archive:
        assert archive["image"].shape == (5, 128, 128)
        assert archive["image_ids"].tolist() == [1, 2, 3, 4, 5]
    truth = json.loads((tmp_path / "test.json").read_text())
    assert {a["image_id"] for a in truth["annotations"]} == {1, 2, 3, 4, 5}
    assert not (tmp_path / "train.npz").exists()
    assert np.load(tmp_path / "calib.npy").shape == (6, 128, 128)


def test_command_rejects_a_canvas_too_small(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run(["data", "fashion-detection", str(tmp_path), "--size", "16"], capsys)
    assert code == 2
    assert "--size" in out


@pytest.mark.parametrize(("args", "message"), [
    (["--seed", "-1"], "--seed"),  # numpy refused it after the table had started
    (["--train", "100000000000"], "--train"),  # a 745 GiB allocation
    # an empty split was written: train/ with no canvases, a test.npz with no images
    (["--train", "0"], "--train '0': must be at least 1"),
    (["--val", "0"], "--val '0': must be at least 1"),
    (["--test", "0"], "--test '0': must be at least 1"),
    (["--train", "-5"], "--train '-5': must be at least 1"),
    (["--train", "nan"], "--train 'nan': must be a whole number"),
    (["--val", "0.5"], "--val '0.5': must be a whole number"),
    # 98 GiB of canvases, drawn in memory at once
    (["--size", "1024", "--train", "100000"], "--train 100000 at --size 1024: 98 GiB of "
                                              "canvases, more than the 16 GiB"),
    (["--size", "1024", "--train", "10", "--test", "20000"], "--test 20000 at --size 1024"),
])
def test_counts_and_seeds_it_cannot_use_are_refused_at_once(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
        message: str) -> None:
    code, out = _run(["data", "fashion-detection", str(tmp_path / "out"), *args], capsys)
    assert code == 2
    assert message in out
    assert "Traceback" not in out
    assert not (tmp_path / "out").exists()


def test_out_that_is_a_file_is_refused(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "f").write_text("x")
    code, out = _run(["data", "fashion-detection", str(tmp_path / "f"), "--train", "1"], capsys)
    assert code == 2
    assert "is a file: name a directory" in out


def test_a_folder_holding_other_files_is_refused_and_a_previous_output_rewritten(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the splits were written beside the folder's other files and read with them later
    args = ["data", "fashion-detection", str(tmp_path), "--train", "2", "--val", "2",
            "--test", "2"]
    (tmp_path / "notes.txt").write_text("x")
    code, out = _run(args, capsys)
    assert code == 2, out
    assert "holds files this command does not write (notes.txt)" in out
    assert not (tmp_path / "train").exists()
    (tmp_path / "notes.txt").unlink()
    assert _run(args, capsys)[0] == 0
    code, out = _run(args, capsys)  # its own previous output is written over
    assert code == 0, out
