"""`surge predict`, `surge models` and `surge demo` given what a careless user gives them: an
input named twice or with no file, an --output that is a folder or a pipe, model names longer
than the terminal, a dataset smaller than one batch."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from surge.commands import console
from tests.cli_runner import run_cli
from tests.unit.tiny_models import make_repo


def _predict(repo: Path, *args: str) -> list[str]:
    return ["predict", str(repo), "--model", "fashion", *args]


def _image(tmp_path: Path, name: str, rows: int) -> Path:
    path = tmp_path / name
    np.save(path, np.zeros((rows, 1, 28, 28), np.float32))
    return path


def test_an_input_given_twice_is_refused(example_repo: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """The second file silently replaced the first: 1 row predicted where 2 were given."""
    two, one = _image(tmp_path, "two.npy", 2), _image(tmp_path, "one.npy", 1)
    code, out, err = run_cli(_predict(example_repo, "--input", f"image={two}",
                                      "--input", f"image={one}"), capsys)
    assert code == 2
    assert f"--input 'image={one}': input 'image' is given twice" in err
    assert "logits" not in out


@pytest.mark.parametrize("item", ["", "image=", "image= "])
def test_an_input_with_no_file_says_so(example_repo: Path, item: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """It said "input file '.' is a directory", a folder the user never named."""
    code, _, err = run_cli(_predict(example_repo, "--input", item), capsys)
    assert code == 2
    assert f"--input {item!r} names no file" in err
    assert "'.'" not in err


def test_an_output_folder_is_refused_not_written_beside(
        example_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--output out` (a folder) wrote out.npz next to it and said it saved there."""
    image = _image(tmp_path, "x.npy", 1)
    (tmp_path / "out").mkdir()
    code, out, err = run_cli(_predict(example_repo, "--input", str(image), "--output",
                                      str(tmp_path / "out")), capsys)
    assert code == 2
    assert f"--output {str(tmp_path / 'out')!r} is a directory: name a file in it" in err
    assert not (tmp_path / "out.npz").exists()
    assert "saved" not in out


@pytest.mark.timeout(60)  # the write blocked forever: fail, not hang the run
@pytest.mark.parametrize("name", ["pipe.npz", "pipe"])
def test_an_output_pipe_is_refused_not_waited_on(
        example_repo: Path, tmp_path: Path, name: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A FIFO no process reads blocked np.savez forever; `pipe` became pipe.npz beside it."""
    image = _image(tmp_path, "x.npy", 1)
    os.mkfifo(tmp_path / name)
    code, _, err = run_cli(_predict(example_repo, "--input", str(image), "--output",
                                    str(tmp_path / name)), capsys)
    assert code == 2
    assert f"--output {str(tmp_path / name)!r} is not a regular file" in err
    assert not (tmp_path / "pipe.npz").is_file()


def test_models_prints_long_names_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """At 80 columns both names were cut to the same 'model-with-a-very-long-name…'."""
    stem = "model-with-a-very-long-name-that-goes-on-and-on-"
    for end in ("first", "second"):
        make_repo(tmp_path, name=stem + end)
    monkeypatch.setattr(console, "width", 80)
    code, out, _ = run_cli(["models", str(tmp_path)], capsys)
    assert code == 0
    assert "…" not in out
    cells = "".join(line.split("│")[1].strip() for line in out.splitlines()
                    if line.startswith("│"))
    assert f"{stem}first{stem}second" in cells


def test_demo_names_the_batch_a_small_dataset_ran_in(
        example_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """5 samples ran as one batch of 5, and the table said 'throughput (batch 64)'."""
    data = tmp_path / "five.npz"
    np.savez(data, image=np.zeros((5, 1, 28, 28), np.float32), labels=np.arange(5))
    code, out, _ = run_cli(["demo", "--repo", str(example_repo), "--data", str(data)], capsys)
    assert code == 0
    assert "throughput (batch 5)" in out


def test_a_row_of_nan_scores_gets_no_label(example_repo: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """NaN pixels (a config without `finite: true`) gave NaN logits, printed as
    'T-shirt/top (class 0, score nan)': argmax takes a NaN for the best."""
    repo = tmp_path / "repo"
    shutil.copytree(example_repo / "fashion", repo / "fashion")
    config = repo / "fashion" / "config.yaml"
    config.write_text(config.read_text().replace(", finite: true", ""))
    images = np.zeros((2, 1, 28, 28), np.float32)
    images[1] = np.nan
    np.save(tmp_path / "x.npy", images)
    code, out, _ = run_cli(_predict(repo, "--input", str(tmp_path / "x.npy")), capsys)
    assert code == 0
    rows = [line.strip() for line in out.splitlines() if line.strip().startswith("[")]
    assert rows[1] == "[1] no class: its scores hold NaN"
    assert "score nan" not in out
    assert rows[0].startswith("[0] ")
    assert "(class " in rows[0]


def test_demo_refuses_an_empty_data(example_repo: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """`--data ''` scored the model on its own dataset, as if --data were left out."""
    code, out, err = run_cli(["demo", "--repo", str(example_repo), "--data", ""], capsys)
    assert code == 2
    assert "--data '': give a dataset name or file" in err
    assert "test samples" not in out
