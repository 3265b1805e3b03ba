from pathlib import Path

import numpy as np
import pytest
import yaml

from surge.errors import ConfigError, InvalidNameError, ModelLoadError, NotFoundError
from surge.repository import Repository, check_name, read_config, split_model_ref, write_config
from surge.repository.config import ModelConfig
from tests.unit.tiny_models import make_repo, write_onnx


def test_latest_version_served_by_default(tmp_path: Path) -> None:
    repo = Repository(make_repo(tmp_path, versions=(1, 2, 3)))
    assert repo.versions("tiny") == [1, 2, 3]
    assert repo.served_versions("tiny") == [3]
    loaded = repo.load("tiny")
    assert loaded.version == 3
    assert loaded.signature.max_batch_size == 8
    np.testing.assert_allclose(loaded.runner.run({"x": np.zeros((1, 4), np.float32)})["y"], 1.0)


@pytest.mark.parametrize(
    ("policy", "served"),
    [
        ("version_policy: {latest: 2}", [2, 3]),
        ("version_policy: {specific: [1, 3]}", [1, 3]),
        ("version_policy: {all: true}", [1, 2, 3]),
    ],
)
def test_version_policies(tmp_path: Path, policy: str, served: list[int]) -> None:
    repo = Repository(make_repo(tmp_path, versions=(1, 2, 3), config=policy + "\n"))
    assert repo.served_versions("tiny") == served
    assert repo.load("tiny", version=served[0]).version == served[0]


def test_unserved_version_is_not_found(tmp_path: Path) -> None:
    repo = Repository(make_repo(tmp_path, versions=(1, 2)))
    with pytest.raises(NotFoundError, match="no served version 1"):
        repo.load("tiny", version=1)


def test_two_policies_at_once_rejected(tmp_path: Path) -> None:
    make_repo(tmp_path, config="version_policy: {latest: 1, all: true}\n")
    with pytest.raises(ConfigError, match=r"config.yaml: version_policy"):
        Repository(tmp_path).load("tiny")


def test_unknown_config_key_names_file_and_key(tmp_path: Path) -> None:
    make_repo(tmp_path, config="max_batch_size: 8\nbatchign: {}\n")
    with pytest.raises(ConfigError, match=r"tiny/config.yaml: unknown key 'batchign'"):
        Repository(tmp_path).load("tiny")


def test_nested_unknown_key(tmp_path: Path) -> None:
    make_repo(tmp_path, config="batching: {max_delay: 3}\n")
    with pytest.raises(ConfigError, match=r"unknown key 'batching.max_delay'"):
        Repository(tmp_path).load("tiny")


def test_bad_value_and_bad_yaml(tmp_path: Path) -> None:
    make_repo(tmp_path, config="instances: 0\n")
    with pytest.raises(ConfigError, match="instances"):
        Repository(tmp_path).load("tiny")
    (tmp_path / "tiny" / "config.yaml").write_text("max_batch_size: [\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        Repository(tmp_path).load("tiny")


def test_missing_model_file(tmp_path: Path) -> None:
    make_repo(tmp_path)
    (tmp_path / "tiny" / "1" / "model.onnx").unlink()
    with pytest.raises(ModelLoadError, match=r"tiny/1: no model file"):
        Repository(tmp_path).load("tiny")


def test_corrupt_model_file(tmp_path: Path) -> None:
    make_repo(tmp_path)
    (tmp_path / "tiny" / "1" / "model.onnx").write_bytes(b"not onnx at all")
    with pytest.raises(ModelLoadError, match=r"tiny/1/model.onnx"):
        Repository(tmp_path).load("tiny")


def test_config_signature_must_match_model(tmp_path: Path) -> None:
    make_repo(tmp_path, config="inputs: [{name: image, datatype: FP32, shape: [-1, 4]}]\n")
    with pytest.raises(ModelLoadError, match="config declares input 'image'"):
        Repository(tmp_path).load("tiny")


def test_name_mismatch(tmp_path: Path) -> None:
    make_repo(tmp_path, config="name: other\n")
    with pytest.raises(ConfigError, match="does not match its directory"):
        Repository(tmp_path).load("tiny")


@pytest.mark.parametrize("name", ["..", "../etc", "a/b", "/abs", "", ".hidden", "a..b", "x\\y"])
def test_path_escaping_names_rejected(tmp_path: Path, name: str) -> None:
    repo = Repository(make_repo(tmp_path))
    with pytest.raises(InvalidNameError):
        repo.load(name)


def test_symlink_out_of_repository_rejected(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    make_repo(outside)
    repo_root = tmp_path / "repo"
    repo_root.mkdir()
    (repo_root / "link").symlink_to(outside / "tiny")
    with pytest.raises(InvalidNameError, match="outside the repository"):
        Repository(repo_root).load("link")


@pytest.mark.parametrize("version", ["0", "-1", "1/../2", "01", "x"])
def test_bad_versions_rejected(tmp_path: Path, version: str) -> None:
    repo = Repository(make_repo(tmp_path))
    with pytest.raises(InvalidNameError, match="invalid version"):
        repo.load("tiny", version=version)


def test_variant_by_name_and_by_config(tmp_path: Path) -> None:
    make_repo(tmp_path)
    variant_dir = tmp_path / "tiny" / "variants" / "fast"
    write_onnx(variant_dir / "model.onnx")
    (variant_dir / "variant.yaml").write_text(yaml.safe_dump({"method": "copy"}))
    repo = Repository(tmp_path)
    assert repo.variants("tiny") == ["fast"]
    assert repo.load("tiny@fast").variant == "fast"
    assert repo.variant_info("tiny", "fast") == {"method": "copy"}
    with pytest.raises(NotFoundError, match="no variant 'slow'"):
        repo.load("tiny@slow")
    config = read_config(tmp_path / "tiny" / "config.yaml")
    write_config(tmp_path / "tiny" / "config.yaml", config.model_copy(update={"variant": "fast"}))
    assert repo.load("tiny").variant == "fast"
    # `@original`: the version files, whatever variant the config selects.
    original = repo.load("tiny@original")
    assert original.variant is None
    assert original.path == tmp_path / "tiny" / "1" / "model.onnx"


def test_split_model_ref() -> None:
    assert split_model_ref("a") == ("a", None)
    assert split_model_ref("a@b") == ("a", "b")
    with pytest.raises(InvalidNameError):
        split_model_ref("a@../b")
    assert check_name("resnet-18.v2") == "resnet-18.v2"


def test_entries_report_broken_models(tmp_path: Path) -> None:
    make_repo(tmp_path, name="good")
    make_repo(tmp_path, name="bad", config="bogus: 1\n")
    entries = {e.name: e for e in Repository(tmp_path).entries()}
    assert entries["good"].state == "READY"
    assert entries["bad"].state == "UNAVAILABLE"
    assert "unknown key 'bogus'" in entries["bad"].reason


def test_config_round_trip_omits_defaults(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    write_config(path, ModelConfig(max_batch_size=4))
    assert yaml.safe_load(path.read_text()) == {"max_batch_size": 4, "schema_version": 1}
    assert read_config(path).max_batch_size == 4


def test_preferred_sizes_must_fit_max_batch(tmp_path: Path) -> None:
    make_repo(tmp_path, config="max_batch_size: 4\nbatching: {preferred_batch_sizes: [8]}\n")
    with pytest.raises(ConfigError, match="preferred batch size 8"):
        Repository(tmp_path).load("tiny")
