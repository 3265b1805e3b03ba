"""`surge inspect` on a folder that is not a model, `surge models` on folders it cannot list."""

from pathlib import Path

import pytest

from tests.cli_runner import run_cli
from tests.unit.tiny_models import make_repo


def _fake_repo(root: Path, *names: str) -> Path:
    """Models whose files are never loaded: the folder checks come first."""
    for name in names:
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.onnx").write_bytes(b"not loaded")
        (root / name / "config.yaml").write_text("max_batch_size: 8\n")
    return root


def test_inspect_a_version_folder_names_the_model_and_its_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fake_repo(tmp_path, "fashion")
    code, _, err = run_cli(["inspect", str(tmp_path / "fashion" / "1")], capsys)
    assert code == 2
    assert "no servable version" not in err
    assert (f"{tmp_path / 'fashion' / '1'} is a version folder of model 'fashion': inspect "
            f"{tmp_path / 'fashion'} or the model file "
            f"{tmp_path / 'fashion' / '1' / 'model.onnx'}") in err
    assert len(err.strip().splitlines()) == 1


def test_inspect_an_empty_version_folder_names_the_model(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fake_repo(tmp_path, "m")
    (tmp_path / "m" / "2").mkdir()
    code, _, err = run_cli(["inspect", str(tmp_path / "m" / "2")], capsys)
    assert code == 2
    assert f"is a version folder of model 'm': inspect {tmp_path / 'm'}\n" in err


def test_inspect_a_repository_lists_its_models(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fake_repo(tmp_path / "repo", "a", "b")
    (tmp_path / "repo" / "notes").mkdir()  # no config, no version: not listed as a model
    code, _, err = run_cli(["inspect", str(tmp_path / "repo")], capsys)
    assert code == 2
    assert "no servable version" not in err
    assert (f"{tmp_path / 'repo'} is a model repository (models: a, b): inspect "
            f"{tmp_path / 'repo' / 'NAME'}") in err


def test_inspect_a_variant_folder_names_the_model(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    variant = _fake_repo(tmp_path, "m") / "m" / "variants" / "int8"
    variant.mkdir(parents=True)
    (variant / "variant.yaml").write_text("{}\n")
    (variant / "model.onnx").write_bytes(b"not loaded")
    code, _, err = run_cli(["inspect", str(variant)], capsys)
    assert code == 2
    assert f"is variant 'int8' of model 'm': inspect {tmp_path / 'm'} or the model file" in err


def test_a_model_named_like_a_version_still_inspects(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_repo(tmp_path, name="1")
    code, out, err = run_cli(["inspect", str(tmp_path / "1")], capsys)
    assert (code, err) == (0, "")
    assert "engine: auto" in out
    assert "FP32" in out


def test_models_names_the_folders_it_leaves_out(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fake_repo(tmp_path, "good")
    for name in ("my model", "[bold]m", ".hidden", "-dash"):
        (tmp_path / name).mkdir()
    (tmp_path / "README[b]").write_text("a file, not a folder")
    code, out, _ = run_cli(["models", str(tmp_path)], capsys)
    assert code == 0
    line = out.strip().splitlines()[-1]
    assert line == ("not models (names must match [A-Za-z0-9][A-Za-z0-9_.-]{0,127}): "
                    "'-dash', '[bold]m', 'my model'")  # brackets printed, not markup
    assert "hidden" not in out
    assert "README" not in out


def test_models_says_nothing_more_when_every_folder_is_a_model(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fake_repo(tmp_path, "good")
    (tmp_path / ".git").mkdir()
    code, out, _ = run_cli(["models", str(tmp_path)], capsys)
    assert code == 0
    assert "not models" not in out


def test_models_names_links_that_point_nowhere(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fake_repo(tmp_path, "good")
    (tmp_path / "moved").symlink_to(tmp_path / "gone")
    (tmp_path / ".hidden-link").symlink_to(tmp_path / "gone")
    code, out, _ = run_cli(["models", str(tmp_path)], capsys)
    assert code == 0
    assert out.strip().splitlines()[-1] == "links to nothing (not models): 'moved'"
