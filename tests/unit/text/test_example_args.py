"""examples/text/*.py refuse odd arguments with a message naming the value and exit code 2
(argparse's), before any server is asked, rather than a traceback or a silently wrong answer."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PYTHON = ROOT / ".venv-triton" / "bin" / "python"  # the examples' client venv (tritonclient)

pytestmark = pytest.mark.skipif(not PYTHON.exists(), reason="no .venv-triton to run examples")


def run(script: str, *args: str | bytes) -> subprocess.CompletedProcess[bytes]:
    command = [str(PYTHON), str(ROOT / "examples" / "text" / script), *args]
    return subprocess.run(command, capture_output=True, timeout=60, check=False,
                          env={**os.environ, "PYTHONIOENCODING": "utf-8"})


@pytest.mark.parametrize(("args", "message"), [
    (["--docs", "0", "{corpus}", "q"], b"argument --docs: must be at least 1, got 0"),
    (["--top", "-1", "{corpus}", "q"], b"argument --top: must be at least 1, got -1"),
    (["{missing}", "q"], b"No such file or directory"),
    (["{corpus}", "q"], b"holds no documents"),
    (["{corpus}", b"ok\xff"], b"text 'ok\\udcff' is not valid UTF-8"),
])
def test_search_refuses_odd_arguments(tmp_path: Path, args: list[str | bytes],
                                      message: bytes) -> None:
    corpus = tmp_path / "corpus.tab"
    corpus.write_text("h\nh\nh\n")  # header lines only
    given = [a.format(corpus=corpus, missing=tmp_path / "none.tab") if isinstance(a, str) else a
             for a in args]
    done = run("search.py", *given)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr, done.stderr


@pytest.mark.parametrize("script", ["embed.py", "classify.py"])
def test_text_that_is_not_utf8_is_named(script: str) -> None:
    done = run(script, b"ok\xff")
    assert done.returncode == 2, done.stderr
    assert b"text 'ok\\udcff' is not valid UTF-8" in done.stderr, done.stderr
