"""A crafted pickle must be refused and its payload must never run."""

import pickle
import zipfile
from pathlib import Path

import pytest

from surge.errors import ModelLoadError
from surge.repository import Repository
from surge.runtimes import load_runner
from surge.runtimes.torch_runner import load_state_dict


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.write_text, (self.marker, "pwned"))


def _malicious_checkpoint(path: Path, marker: Path) -> Path:
    import torch

    torch.save({"weight": _Payload(marker)}, str(path))
    return path


def test_weights_only_refuses_pickle_payload(tmp_path: Path) -> None:
    marker = tmp_path / "ran.txt"
    path = _malicious_checkpoint(tmp_path / "model.pt", marker)
    with pytest.raises(ModelLoadError, match="refused to load"):
        load_state_dict(path)
    assert not marker.exists()


def test_raw_pickle_named_pt2_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran.txt"
    path = tmp_path / "model.pt2"
    path.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ModelLoadError, match="not a valid torch.export program"):
        load_runner(path)
    assert not marker.exists()


def test_pickle_inside_pt2_archive_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran.txt"
    path = tmp_path / "model.pt2"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model/data.pkl", pickle.dumps(_Payload(marker)))
    with pytest.raises(ModelLoadError):
        load_runner(path)
    assert not marker.exists()


def test_factory_model_refuses_pickled_weights(tmp_path: Path) -> None:
    marker = tmp_path / "ran.txt"
    model_dir = tmp_path / "repo" / "evil"
    (model_dir / "1").mkdir(parents=True)
    _malicious_checkpoint(model_dir / "1" / "model.safetensors", marker)
    (model_dir / "config.yaml").write_text(
        "factory: tests.unit.tiny_models:two_x_plus_one\n"
        "inputs: [{name: x, datatype: FP32, shape: [-1, 4]}]\n"
    )
    with pytest.raises(ModelLoadError, match="not a valid safetensors file"):
        Repository(tmp_path / "repo").load("evil")
    assert not marker.exists()


def test_a_model_path_that_is_not_a_regular_file_says_so(tmp_path: Path) -> None:
    """A FIFO or a directory named model.onnx is not a missing file (it said "not found")."""
    import os

    os.mkfifo(tmp_path / "fifo.onnx")
    (tmp_path / "dir.onnx").mkdir()
    for name in ("fifo.onnx", "dir.onnx"):
        with pytest.raises(ModelLoadError, match=rf"{name}: not a regular file"):
            load_runner(tmp_path / name)
    with pytest.raises(ModelLoadError, match=r"gone.onnx: model file not found"):
        load_runner(tmp_path / "gone.onnx")
