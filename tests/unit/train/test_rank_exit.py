"""A rank's exit status is its run's, not what the interpreter's finalization does after it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# Started with every interpreter of the test (sitecustomize): an exit handler that aborts, as
# torch's gloo threads did to a finished rank at finalization under load.
ABORT_AT_EXIT = "import atexit, os\natexit.register(os.abort)\n"


def test_a_rank_leaves_with_its_own_status_whatever_finalization_would_do(
        tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(ABORT_AT_EXIT)
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    missing = tmp_path / "no-such-config.yaml"
    done = subprocess.run([sys.executable, "-m", "surge.train.rank", str(missing)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert "no-such-config.yaml" in done.stderr  # what it said before leaving was flushed
    assert done.returncode == 2, done.stderr[-2000:]


def test_the_abort_at_exit_is_real(tmp_path: Path) -> None:
    """Without the rank's own exit the same handler ends a process with SIGABRT."""
    (tmp_path / "sitecustomize.py").write_text(ABORT_AT_EXIT)
    done = subprocess.run([sys.executable, "-c", "pass"], env={"PYTHONPATH": str(tmp_path)},
                          capture_output=True, timeout=60)
    assert done.returncode == -6
