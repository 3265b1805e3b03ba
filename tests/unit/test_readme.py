"""The README's Python API example runs as written, against the committed example repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def python_api_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the Python API section holds one runnable example"
    return blocks[0]


def test_the_python_api_example_runs(monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(ROOT)  # the example names examples/repository relative to the checkout
    exec(compile(python_api_example(), "README.md", "exec"), {"__name__": "__main__"})  # noqa: S102
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "(4, 10)"
    assert re.fullmatch(r"accuracy on 2000 test images: (\d+\.\d+)%", out[2])
    assert float(out[2].split()[-1].rstrip("%")) > 85.0
    assert out[3] == "[1, 10]"
