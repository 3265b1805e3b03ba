"""Hostile input to `surge evaluate`, `surge inspect` and `surge convert`: one `error:` line
naming the bad value and exit code 2, never a bare "aborted", a traceback or a figure scored
from outputs that mean nothing; and the figures right where they can be counted by hand."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from surge.evaluate.metrics import MetricError, classification_report
from tests.cli_runner import run_cli
from tests.unit.tiny_models import make_repo

# Rows for the 2x+1 model (4 classes: its argmax is the input's): the last row is a miss.
ROWS = np.array([[1, 0, 0, 0], [0, 2, 0, 0], [0, 0, 3, 0], [0, 0, 0, 4], [5, 0, 0, 0]],
                np.float32)
LABELS = np.array([0, 1, 2, 3, 1])


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repo(tmp_path_factory.mktemp("repo"))


def one_line_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code, out, err = run_cli(args, capsys)
    assert code == 2, out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, out + err
    assert lines[0].startswith("error: "), out + err
    assert "Traceback" not in out + err
    return lines[0]


def evaluate_args(repo: Path, data: Path | str, *extra: str) -> list[str]:
    return ["evaluate", str(repo), "--model", "tiny", "--data", str(data), *extra]


def test_accuracy_and_macro_f1_are_the_hand_counted_ones(
        repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.savez(tmp_path / "rows.npz", x=ROWS, labels=LABELS)
    code, out, err = run_cli(evaluate_args(repo, tmp_path / "rows.npz"), capsys)
    assert (code, err) == (0, "")
    assert "(5 samples): accuracy 80.00%" in out  # 4 of 5
    code, out, _ = run_cli(evaluate_args(repo, tmp_path / "rows.npz", "--metric", "macro_f1"),
                           capsys)
    # class 0: P 1/2 R 1, class 1: P 1 R 1/2 (F1 2/3 each); classes 2, 3: F1 1 -> 5/6
    assert code == 0
    assert "macro_f1 83.33%" in out


def test_nan_scores_are_refused_not_scored_as_class_0(
        repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = ROWS.copy()
    rows[2, 2] = np.nan  # the whole output row is NaN: it was counted as a miss (60%)
    np.savez(tmp_path / "nan.npz", x=rows, labels=LABELS)
    line = one_line_error(evaluate_args(repo, tmp_path / "nan.npz"), capsys)
    assert "NaN in 1 of 5 rows (the first: row 2)" in line


def test_real_valued_outputs_are_not_floored_into_class_ids() -> None:
    # a regression model's [N] outputs: 0.5, 1.5, 2.7 were cast to classes 0, 1, 2 (100%)
    with pytest.raises(MetricError, match="real values such as 0.5"):
        classification_report(np.array([0, 1, 2]), np.array([0.5, 1.5, 2.7]))
    with pytest.raises(MetricError, match="NaN"):
        classification_report(np.array([0, 1]), np.array([[0.1, 0.9], [np.nan, 0.2]]))
    # class ids [N], integer or whole floats, are still scored
    assert classification_report(np.array([0, 1, 2]), np.array([0, 1, 1])).accuracy == \
        pytest.approx(2 / 3)
    assert classification_report(np.array([0, 1]), np.array([0.0, 1.0])).accuracy == 1.0


@pytest.mark.parametrize(("content", "said"), [
    (b"", "is not an .npz archive (an empty file)"),  # was a bare "aborted", exit code 1
    (b"hello", "is not an .npz archive (no zip header)"),  # was "contains pickled data"
])
def test_an_npz_that_is_no_archive_is_one_line_naming_it(
        repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        content: bytes, said: str) -> None:
    path = tmp_path / "bad data.npz"
    path.write_bytes(content)
    assert one_line_error(evaluate_args(repo, path), capsys) == \
        f"error: dataset '{path}' {said}"


def test_labels_not_one_per_sample_are_refused_even_with_samples(
        repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.savez(tmp_path / "long.npz", x=ROWS, labels=np.array([0, 1, 2, 3, 1, 0, 0]))
    # --samples 5 cut both to 5 and scored them as if they belonged together
    line = one_line_error(evaluate_args(repo, tmp_path / "long.npz", "--samples", "5"), capsys)
    assert line == "error: dataset 'long' has 5 samples but 7 labels: give one per sample"
    np.savez(tmp_path / "scalar.npz", x=ROWS, labels=np.array(1))
    assert "but a single value" in one_line_error(evaluate_args(repo, tmp_path / "scalar.npz"),
                                                  capsys)


@pytest.mark.parametrize("data", ["", "  "])
def test_an_empty_dataset_name_is_not_the_current_folder(
        repo: Path, capsys: pytest.CaptureFixture[str], data: str) -> None:
    assert one_line_error(evaluate_args(repo, data), capsys) == \
        f"error: dataset {data!r}: give a dataset name or file"


def test_names_with_brackets_are_printed_as_they_are(
        repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "[red]x.onnx"
    shutil.copy(repo / "tiny" / "1" / "model.onnx", model)
    code, out, _ = run_cli(["inspect", str(model)], capsys)
    assert code == 0
    # (the terminal's width may wrap a long temporary path)
    assert "/[red]x.onnx" in out.replace("\n", ""), out  # was ".../x.onnx"
    np.savez(tmp_path / "[bold]d.npz", x=ROWS, labels=LABELS)
    code, out, _ = run_cli(evaluate_args(repo, tmp_path / "[bold]d.npz"), capsys)
    assert code == 0
    assert "tiny on [bold]d (5 samples)" in out, out


def test_convert_data_that_is_a_directory_says_so(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    version = tmp_path / "repo" / "m" / "1"
    version.mkdir(parents=True)
    (version / "model.h5").write_bytes(b"not hdf5")
    line = one_line_error(["convert", str(tmp_path / "repo"), "--model", "m", "--data",
                           str(tmp_path)], capsys)
    assert line == f"error: --data {tmp_path}: a directory, not a .npy or .npz file"
    assert not (version / "converted").exists()
