"""The CLI: inspect, predict, models; one-line errors and non-zero exit codes."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from surge_examples.fashion.data import load_fashion_mnist, to_model_input
from tests.cli_runner import run_cli
from tests.unit.tiny_models import make_repo


def test_inspect_file_and_directory(example_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["inspect", str(example_repo / "fashion" / "1" / "model.onnx")], capsys)
    assert code == 0
    assert "onnxruntime" in out
    assert "image" in out
    assert "[-1, 1, 28, 28]" in out
    code, out, _ = run_cli(["inspect", str(example_repo / "fashion-torch")], capsys)
    assert code == 0
    assert "torch_factory" in out
    assert "logits" in out


def test_predict_prints_label(example_repo: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    images, labels = load_fashion_mnist("test")
    np.save(tmp_path / "one.npy", to_model_input(images[:1])[0])  # no batch dim: added for us
    code, out, _ = run_cli(["predict", str(example_repo), "--model", "fashion",
                            "--input", str(tmp_path / "one.npy")], capsys)
    assert code == 0
    assert "logits" in out
    assert "Ankle boot" in out  # the first test image is an ankle boot
    assert labels[0] == 9


def test_predict_saves_npz(example_repo: Path, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "x.npy", np.zeros((3, 1, 28, 28), np.float32))
    code, _, _ = run_cli(["predict", str(example_repo), "--model", "fashion",
                          "--input", f"image={tmp_path / 'x.npy'}", "--output",
                          str(tmp_path / "out.npz")], capsys)
    assert code == 0
    assert np.load(tmp_path / "out.npz")["logits"].shape == (3, 10)


def test_predict_bad_input_is_one_line(example_repo: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "bad.npy", np.zeros((2, 3), np.int64))
    code, out, err = run_cli(["predict", str(example_repo), "--model", "fashion",
                              "--input", str(tmp_path / "bad.npy")], capsys)
    assert code == 2
    assert "input 'image' expects FP32 [-1, 1, 28, 28], got INT64 [2, 3]" in err
    assert "Traceback" not in err + out
    assert len(err.strip().splitlines()) == 1


def test_predict_files_it_cannot_use_are_one_line_before_the_model_runs(
        example_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 28, 28), np.float32))
    np.savez(tmp_path / "in.npz", image=np.zeros((1, 1, 28, 28), np.float32))
    (tmp_path / "dir.npz").mkdir()
    predict = ["predict", str(example_repo), "--model", "fashion", "--input"]
    for args, message in [
        ([str(tmp_path / "in.npz")], "is an .npz archive"),
        ([str(tmp_path)], "is a directory"),
        ([str(tmp_path / "x.npy"), "--output", str(tmp_path / "no" / "o.npz")], "does not exist"),
        ([str(tmp_path / "x.npy"), "--output", str(tmp_path / "dir.npz")], "is a directory"),
    ]:
        code, out, err = run_cli([*predict, *args], capsys)
        assert code == 2, args
        assert message in err
        assert "Traceback" not in err + out
    code, out, _ = run_cli([*predict, str(tmp_path / "x.npy"), "--output",
                            str(tmp_path / "o.txt")], capsys)
    assert code == 0
    assert f"to {tmp_path / 'o.txt.npz'}" in out.replace("\n", "")  # the file np.savez wrote
    assert (tmp_path / "o.txt.npz").is_file()


def test_unknown_model_and_bad_name(example_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["predict", str(example_repo), "--model", "nope", "--input", "x.npy"],
                           capsys)
    assert code == 2
    assert "model 'nope' is not in the repository" in err
    code, _, err = run_cli(["predict", str(example_repo), "--model", "../x", "--input", "x.npy"],
                           capsys)
    assert code == 2
    assert "invalid model name '../x'" in err


def test_models_lists_state(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_repo(tmp_path, name="good", versions=(1, 2))
    make_repo(tmp_path, name="broken", config="nonsense: 1\n")
    code, out, _ = run_cli(["models", str(tmp_path)], capsys)
    assert code == 0
    assert "good" in out
    assert "READY" in out
    assert "UNAVAILABLE" in out
    assert "nonsense" in out


def test_bad_values_are_printed_as_given_not_as_markup(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["inspect", str(tmp_path / "[/x]y.onnx")], capsys)
    assert code == 2
    assert "[/x]y.onnx" in err  # a closing tag with no opening one was a MarkupError
    code, _, err = run_cli(["inspect", str(tmp_path / "[b]x.onnx")], capsys)
    assert "[b]x.onnx" in err  # an opening tag was eaten
    make_repo(tmp_path, name="odd", config="max_batch_size: '[/x]'\n")
    code, out, _ = run_cli(["models", str(tmp_path)], capsys)
    assert code == 0
    assert "[/x]" in out


def test_console_script_debug_shows_traceback(tmp_path: Path) -> None:
    surge = Path(sys.executable).with_name("surge")
    plain = subprocess.run([str(surge), "models", str(tmp_path / "absent")],
                           capture_output=True, text=True, check=False)
    assert plain.returncode == 2
    assert "is not a directory" in plain.stderr
    assert "Traceback" not in plain.stderr
    debug = subprocess.run([str(surge), "--debug", "models", str(tmp_path / "absent")],
                           capture_output=True, text=True, check=False)
    assert debug.returncode != 0
    assert "Traceback" in debug.stderr


def test_predict_refuses_an_empty_npy_and_a_fifo_in_one_line(
        example_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An empty .npy raised EOFError, which click reported as a bare "aborted" (exit 1); a FIFO
    blocked the read forever."""
    from tests.unit.fifo import bounded, make_fifo

    (tmp_path / "empty.npy").write_bytes(b"")
    fifo = make_fifo(tmp_path / "fifo.npy")
    predict = ["predict", str(example_repo), "--model", "fashion", "--input"]
    for path, message in [(tmp_path / "empty.npy", "is not a plain .npy array (EOFError"),
                          (fifo, "is not a regular file")]:
        code, out, err = bounded(fifo, lambda p=path: run_cli([*predict, str(p)], capsys))
        assert code == 2, out + err
        assert err.startswith(f"error: input file '{path}' {message}"), err
        assert len(err.strip().splitlines()) == 1
