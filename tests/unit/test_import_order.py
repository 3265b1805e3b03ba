"""Every package of surge imports first in a fresh interpreter: no import cycle depends on
which module a program (or a test run) happens to import first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "surge"
PACKAGES = sorted(p.name for p in SRC.iterdir() if (p / "__init__.py").exists())
SUBMODULES = ["surge.pipeline.served", "surge.engine.engine", "surge.engine.ladder",
              "surge.engine.ondemand", "surge.workers.group", "surge.server.frontends"]


@pytest.mark.parametrize("module", [f"surge.{name}" for name in PACKAGES] + SUBMODULES)
def test_a_module_imports_first(module: str) -> None:
    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
