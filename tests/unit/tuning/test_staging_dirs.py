"""The tune's staged repositories (`surge-tune-<pid>-*` in the temp dir): one is removed when its
measurement ends, however it ends, and those of a tune killed outright (SIGKILL) by the next."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from surge.tuning import serving


def test_a_tune_killed_outright_leaves_its_staging_to_the_next(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    orphan = tmp_path / f"surge-tune-{gone.pid}-abc"
    (orphan / "m").mkdir(parents=True)
    live = tmp_path / f"surge-tune-{os.getppid()}-def"  # a tune still running
    live.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    staged: list[Path] = []

    def stop_staging(model_dir: Path, candidate: object, slo: object, root: Path) -> Path:
        staged.append(root)
        assert not orphan.exists()
        raise RuntimeError("stopped while staging")

    monkeypatch.setattr(serving, "stage_model", stop_staging)
    with pytest.raises(RuntimeError, match="stopped while staging"):
        serving.measure_served(tmp_path / "m", None, None, 1.0)  # type: ignore[arg-type]
    assert staged[0].name.startswith(f"surge-tune-{os.getpid()}-")
    assert sorted(tmp_path.iterdir()) == [live]
