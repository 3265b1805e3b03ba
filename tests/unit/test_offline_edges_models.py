"""`surge models` on hostile repositories: a variant whose variant.yaml is damaged, or that has
no model file, is marked broken and said why, the rest of the listing as before; a symlink loop
where a file should be is named, not a traceback."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from surge.repository import Repository
from tests.cli_runner import run_cli
from tests.unit.tiny_models import make_repo

RECORD = "check: {samples: 8, accuracy: 0.9, passed: true}\n"

# variant -> what its variant.yaml is, and what `surge models` says of it
BROKEN = {
    "bad-yaml": ("size: [1, 2\n", "variant.yaml: invalid YAML"),
    "a-list": ("- 1\n- 2\n", "variant.yaml: expected a mapping"),
    "check-text": ("check: fine\n", "variant.yaml: check is 'fine', not a mapping"),
    "accuracy-text": ("check: {accuracy: lots}\n",
                      "variant.yaml: check.accuracy is 'lots', not a fraction between 0 and 1"),
    "passed-number": ("check: {passed: 1}\n",
                      "variant.yaml: check.passed is 1, not true or false"),
}


def _variant(repo: Path, name: str, record: str | None, model_file: bool = True) -> Path:
    folder = repo / "tiny" / "variants" / name
    folder.mkdir(parents=True)
    if record is not None:
        (folder / "variant.yaml").write_text(record)
    if model_file:
        shutil.copy(repo / "tiny" / "1" / "model.onnx", folder / "model.onnx")
    return folder


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    make_repo(tmp_path)
    _variant(tmp_path, "good", RECORD)
    for name, (record, _) in BROKEN.items():
        _variant(tmp_path, name, record)
    (_variant(tmp_path, "record-folder", None) / "variant.yaml").mkdir()
    _variant(tmp_path, "no-model", RECORD, model_file=False)
    (_variant(tmp_path, "record-loop", None) / "variant.yaml").symlink_to("variant.yaml")
    _variant(tmp_path, "in-progress", None)  # no record: not a variant, not listed
    return tmp_path


def test_models_marks_each_broken_variant_and_says_why(
        repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["models", str(repo)], capsys)
    assert (code, err) == (0, "")
    said = {line.split(" is broken: ")[0]: line.split(" is broken: ")[1]
            for line in out.splitlines() if " is broken: " in line}
    expected = {f"variant tiny@{name}": why for name, (_, why) in BROKEN.items()} | {
        "variant tiny@record-folder": "variant.yaml: not a regular file",
        "variant tiny@no-model": "no model file for variant 'no-model'",
        "variant tiny@record-loop": "variant.yaml: a symlink loop",
    }
    assert set(said) == set(expected)
    for variant, why in expected.items():
        assert why in said[variant], variant
    assert "READY" in out
    assert "in-progress" not in out


def test_the_entry_keeps_good_variants_apart_from_broken_ones(repo: Path) -> None:
    (entry,) = Repository(repo).entries()
    assert entry.state == "READY"
    assert entry.variants == ("good",)
    assert sorted(v for v, _ in entry.broken_variants) == sorted(
        [*BROKEN, "record-folder", "no-model", "record-loop"])


def test_a_config_that_is_a_symlink_loop_is_named_in_the_listing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Python 3.11 resolves a symlink loop with a RuntimeError: the whole listing was a
    traceback, and so was every load of the model."""
    make_repo(tmp_path, "looped")
    make_repo(tmp_path, "fine")
    config = tmp_path / "looped" / "config.yaml"
    config.unlink()
    config.symlink_to("config.yaml")
    code, out, err = run_cli(["models", str(tmp_path)], capsys)
    assert (code, err) == (0, "")
    assert "UNAVAILABLE" in out
    assert "READY" in out
    reasons = {e.name: e.reason for e in Repository(tmp_path).entries()}
    assert reasons["looped"].startswith(f"{config}: a symlink loop")
    code, _, err = run_cli(["inspect", str(tmp_path / "looped")], capsys)
    assert code == 2
    assert err.startswith(f"error: {config}: a symlink loop")
