"""`surge serve` refuses options that would expose the server or cannot work, in one line
(exit 2), before the repository is opened or any model loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli_runner import run_cli


@pytest.mark.parametrize(("args", "message"), [
    (["--host", ""], "--host '': name the address to bind"),
    (["--host", "  "], "--host '  ': name the address to bind"),
    (["--api-key", ""], "--api-key '' (or SURGE_API_KEY set empty) would leave the server open"),
    (["--http-port", "18555", "--grpc-port", "18555"],
     "--http-port 18555 and --grpc-port 18555: each listener needs its own port"),
    (["--grpc-port", "18556", "--metrics-port", "18556"],
     "--grpc-port 18556 and --metrics-port 18556: each listener needs its own port"),
    (["--models", ""], "--models '' names no model"),
    (["--access-log", ""], "--access-log '': give a file, or - for standard output"),
    (["--shared-memory", "cuda"], "--shared-memory 'cuda': use system or none"),
    # an infinite grace crashed the first listener's start, after the models loaded
    (["--grace", "inf"], "--grace inf: give the seconds a drain waits, a finite number >= 0"),
])
def test_refused_in_one_line_before_anything_loads(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
        message: str) -> None:
    code, out, err = run_cli(["serve", str(tmp_path / "no-such-repo"), *args], capsys)
    assert code == 2
    assert message in err.replace(chr(10), " ")
    assert len(err.strip().splitlines()) <= 2  # one line, soft-wrapped at most once


def test_ports_given_as_0_may_repeat(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["serve", str(tmp_path / "no-such-repo"), "--http-port", "0",
                            "--grpc-port", "0", "--metrics-port", "0"], capsys)
    assert code == 2
    assert "no-such-repo" in err  # past the listener checks, to the missing repository
