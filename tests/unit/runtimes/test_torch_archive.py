"""A real `.pt2` archive with one entry swapped for a crafted pickle is refused before it runs."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch

from surge.errors import ModelLoadError
from surge.inspection import describe_path
from surge.repository import Repository
from surge.runtimes import load_runner
from tests.unit.tiny_models import write_pt2


class _Payload:
    """Writes a marker file when unpickled: proof that a pickle ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.write_text, (self.marker, "pwned"))


def _rewrite(archive: Path, replace: dict[str, bytes]) -> Path:
    """Copy `archive` with the named entries' contents replaced (a zip cannot be edited)."""
    entries = {}
    with zipfile.ZipFile(archive) as source:
        for info in source.infolist():
            entries[info.filename] = source.read(info)
    entries.update(replace)
    with zipfile.ZipFile(archive, "w") as target:
        for name, data in entries.items():
            target.writestr(name, data)
    return archive


def _entry(archive: Path, suffix: str) -> str:
    with zipfile.ZipFile(archive) as source:
        return next(n for n in source.namelist() if n.endswith(suffix))


def _payload_pickle(tmp_path: Path, marker: Path) -> bytes:
    path = tmp_path / "payload.pt"
    torch.save((_Payload(marker),), str(path))
    return path.read_bytes()


def _crafted_repo(tmp_path: Path, marker: Path) -> Path:
    """repo/evil/1/model.pt2: a real export whose sample inputs are a code-running pickle."""
    model = write_pt2(tmp_path / "repo" / "evil" / "1" / "model.pt2")
    sample_inputs = _entry(model, "/data/sample_inputs/model.pt")
    _rewrite(model, {sample_inputs: _payload_pickle(tmp_path, marker)})
    return model


def test_untouched_archive_loads(tmp_path: Path) -> None:
    runner = load_runner(write_pt2(tmp_path / "model.pt2"))
    assert runner.signature.input_names == ["x"]


def test_crafted_sample_inputs_refused_by_inspect(tmp_path: Path) -> None:
    marker = tmp_path / "ran.txt"
    model = _crafted_repo(tmp_path, marker)
    with pytest.raises(ModelLoadError, match=r"refused to load: archive entry .*sample_inputs"):
        describe_path(model)
    assert not marker.exists()


def test_crafted_sample_inputs_refused_by_repository_load(tmp_path: Path) -> None:
    marker = tmp_path / "ran.txt"
    _crafted_repo(tmp_path, marker)
    with pytest.raises(ModelLoadError, match="refused to load"):
        Repository(tmp_path / "repo").load("evil")
    with pytest.raises(ModelLoadError, match="refused to load"):
        describe_path(tmp_path / "repo" / "evil")
    assert not marker.exists()


def test_crafted_legacy_weights_file_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran.txt"
    model = write_pt2(tmp_path / "model.pt2")
    prefix = _entry(model, "/data/sample_inputs/model.pt").split("/data/")[0]
    _rewrite(model, {f"{prefix}/data/weights/model.pt": _payload_pickle(tmp_path, marker)})
    with pytest.raises(ModelLoadError, match=r"data/weights/model.pt is not plain tensor data"):
        load_runner(model)
    assert not marker.exists()


@pytest.mark.parametrize(("change", "message"), [
    ({"use_pickle": True}, "stores a tensor as a pickle"),
    ({"path_name": "opaque_obj_0"}, "holds a pickled Python object"),
])
def test_payload_configs_asking_for_pickles_refused(
    tmp_path: Path, change: dict, message: str
) -> None:
    model = write_pt2(tmp_path / "model.pt2")
    entry = _entry(model, "_weights_config.json")
    with zipfile.ZipFile(model) as source:
        config = json.loads(source.read(entry))
    first = next(iter(config["config"]))
    config["config"][first].update(change)
    _rewrite(model, {entry: json.dumps(config).encode()})
    with pytest.raises(ModelLoadError, match=message):
        load_runner(model)
