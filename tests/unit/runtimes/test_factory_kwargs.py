"""A torch_factory model whose factory_kwargs its factory does not take fails the load in one
line naming them (it was the factory's bare TypeError)."""

from pathlib import Path

import pytest

from surge.errors import ModelLoadError
from surge.repository import Repository
from tests.unit.tiny_models import two_x_plus_one


def write_factory_model(root: Path, kwargs: str) -> Path:
    from safetensors.torch import save_file

    model_dir = root / "m"
    (model_dir / "1").mkdir(parents=True)
    save_file(two_x_plus_one().state_dict(), str(model_dir / "1" / "model.safetensors"))
    (model_dir / "config.yaml").write_text(
        "factory: tests.unit.tiny_models:two_x_plus_one\n"
        f"factory_kwargs: {kwargs}\n"
        "inputs: [{name: x, datatype: FP32, shape: [-1, 4]}]\n")
    return root


def test_factory_kwargs_the_factory_does_not_take_fail_the_load_in_one_line(
        tmp_path: Path) -> None:
    repo = Repository(write_factory_model(tmp_path, "{kk: 1}"))
    with pytest.raises(ModelLoadError, match=r"factory_kwargs \{'kk': 1\}: TypeError: .*'kk'"):
        repo.load("m")


def test_factory_kwargs_it_takes_still_load(tmp_path: Path) -> None:
    repo = Repository(write_factory_model(tmp_path, "{}"))
    assert repo.load("m").signature.input_names == ["x"]
