"""The README's Python API example runs as written, against the committed example repository."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def python_api_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the Python API section holds one runnable example"
    return blocks[0]


def test_the_python_api_example_runs(tmp_path: Path) -> None:
    """Run as a user would: a script of its own (its workers re-import it by spawning)."""
    script = tmp_path / "example.py"
    script.write_text(python_api_example())
    done = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True,
                          text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout.splitlines()
    assert out[1] == "(4, 10)"
    assert re.fullmatch(r"accuracy on 2000 test images: (\d+\.\d+)%", out[2])
    assert float(out[2].split()[-1].rstrip("%")) > 85.0
    assert out[3] == "[1, 10]"
