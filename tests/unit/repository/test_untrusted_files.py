"""Repository files are untrusted data: bounded to parse, short to report, kept inside the root."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from surge.configfile import MAX_CONFIG_BYTES
from surge.errors import ConfigError, InvalidNameError
from surge.repository import Repository, check_name, check_version
from tests.unit.tiny_models import make_repo, write_onnx

# 375 bytes that safe_load turns into 9**9 shared list items: validating or printing the
# result never ends (the reported attack embedded a 34.7 MB repr in an error message).
ALIAS_BOMB = "\n".join([
    "a: &a [x, x, x, x, x, x, x, x, x]",
    "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]",
    "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]",
    "d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]",
    "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]",
    "f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]",
    "g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]",
    "h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]",
    "labels: [*h, *h, *h, *h, *h, *h, *h, *h, *h]",
]) + "\n"


def test_symlinked_model_file_outside_repository_refused(tmp_path: Path) -> None:
    outside = write_onnx(tmp_path / "elsewhere" / "model.onnx")
    repo_root = make_repo(tmp_path / "repo")
    model = repo_root / "tiny" / "1" / "model.onnx"
    model.unlink()
    model.symlink_to(outside)
    repo = Repository(repo_root)
    with pytest.raises(InvalidNameError, match="model.onnx resolves outside the repository"):
        repo.load("tiny")
    entry = repo.entries()[0]
    assert entry.state == "UNAVAILABLE"
    assert "resolves outside the repository" in entry.reason


def test_symlinked_model_file_inside_repository_loads(tmp_path: Path) -> None:
    repo_root = make_repo(tmp_path / "repo")
    shared = write_onnx(repo_root / "shared" / "model.onnx")
    model = repo_root / "tiny" / "1" / "model.onnx"
    model.unlink()
    model.symlink_to(shared)
    assert Repository(repo_root).load("tiny").signature.input_names == ["x"]


def test_symlinked_config_outside_repository_refused(tmp_path: Path) -> None:
    (tmp_path / "secret.yaml").write_text("max_batch_size: 8\n")
    repo_root = make_repo(tmp_path / "repo")
    config = repo_root / "tiny" / "config.yaml"
    config.unlink()
    config.symlink_to(tmp_path / "secret.yaml")
    with pytest.raises(InvalidNameError, match="resolves outside the repository"):
        Repository(repo_root).config("tiny")


def test_alias_bomb_config_gets_a_short_error(tmp_path: Path) -> None:
    assert len(ALIAS_BOMB) < 400
    make_repo(tmp_path, config=ALIAS_BOMB)
    repo = Repository(tmp_path)
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="aliases") as caught:
        repo.config("tiny")
    assert len(str(caught.value)) < 300
    reason = repo.entries()[0].reason
    assert "aliases" in reason
    assert len(reason) < 300
    assert time.perf_counter() - started < 5.0  # today it never finishes


def test_oversized_config_refused_before_parsing(tmp_path: Path) -> None:
    make_repo(tmp_path, config="labels: [" + "a, " * (MAX_CONFIG_BYTES // 3) + "b]\n")
    with pytest.raises(ConfigError, match=f"larger than the {MAX_CONFIG_BYTES} bytes"):
        Repository(tmp_path).config("tiny")


def test_deeply_nested_config_refused(tmp_path: Path) -> None:
    make_repo(tmp_path, config="parameters: " + "[" * 200 + "]" * 200 + "\n")
    with pytest.raises(ConfigError, match="nested deeper than"):
        Repository(tmp_path).config("tiny")


def test_huge_bad_value_is_shown_briefly(tmp_path: Path) -> None:
    make_repo(tmp_path, config="device: " + "x" * 100_000 + "\nmax_batch_size: [" +
              ", ".join(["1"] * 5000) + "]\n")
    with pytest.raises(ConfigError, match="max_batch_size") as caught:
        Repository(tmp_path).config("tiny")
    assert len(str(caught.value)) < 600


@pytest.mark.parametrize("name", ["tiny\n", "a" * 129, "é", "-x", ""])
def test_names_match_whole_string(name: str) -> None:
    with pytest.raises(InvalidNameError):
        check_name(name)


@pytest.mark.parametrize("version", ["1\n", "0", "01", "²", "1" * 10])
def test_versions_match_whole_string(version: str) -> None:
    with pytest.raises(InvalidNameError):
        check_version(version)


def test_long_name_error_is_bounded() -> None:
    with pytest.raises(InvalidNameError) as caught:
        check_name("/" * 1_000_000)
    assert len(str(caught.value)) < 500
