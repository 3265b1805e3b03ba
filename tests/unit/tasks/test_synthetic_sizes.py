"""The synthetic dataset's sizes are refused before anything is allocated when they cannot fit
in memory: the allocator's failure was a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from surge.errors import ConfigError
from surge.tasks import data
from surge.tasks.data import DataOptions, SyntheticDataset
from tests.cli_runner import run_cli
from tests.unit.train.tiny import write_recipe

MEMORY = 16 << 30


@pytest.fixture(autouse=True)
def memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine of 16 GiB, whatever this one has."""
    monkeypatch.setattr(data, "memory_bytes", lambda: MEMORY, raising=False)  # new in the fix


def test_a_train_size_that_cannot_fit_is_refused_by_surge_train(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """It ended in "DefaultCPUAllocator: can't allocate memory" and a traceback."""
    recipe = write_recipe(tmp_path, **{"data.train_size": 100_000_000_000})
    code, out, err = run_cli(["train", str(recipe)], capsys)
    assert code == 2
    assert "Traceback" not in out + err
    line = " ".join(err.split())
    assert line.startswith("error: data.train_size 100,000,000,000: 8,195.6 GiB of samples of "
                           "model.input_shape [8], more than this machine's 16.0 GiB of memory;")
    assert not (tmp_path / "run").exists()  # refused before the run started


@pytest.mark.parametrize(("options", "named"), [
    (DataOptions(test_size=10**12, input_shape=(8,)), "data.test_size 1,000,000,000,000"),
    (DataOptions(classes=10**12, input_shape=(8,)), "data.classes 1,000,000,000,000"),
    # 2**64 inputs per sample: np.prod wrapped it round to 0
    (DataOptions(input_shape=(2**32, 2**32)), "model.input_shape [4294967296, 4294967296]"),
])
def test_sizes_that_cannot_fit_are_refused_before_drawing(options: DataOptions,
                                                          named: str) -> None:
    with pytest.raises(ConfigError, match="more than this machine's 16.0 GiB") as error:
        SyntheticDataset().training(options)
    assert named in str(error.value)


def test_the_largest_size_refused_is_one_more_than_said() -> None:
    sample = 8 * 8 + 4 * 10 + 8
    most = MEMORY // sample
    SyntheticDataset().check(DataOptions(train_size=most, input_shape=(8,)))
    with pytest.raises(ConfigError, match=f"give at most {most:,}"):
        SyntheticDataset().check(DataOptions(train_size=most + 1, input_shape=(8,)))


def test_sizes_that_fit_still_draw() -> None:
    train, test = SyntheticDataset().training(DataOptions(train_size=32, test_size=16,
                                                          input_shape=(4,), classes=3))
    assert (len(train), len(test)) == (32, 16)
