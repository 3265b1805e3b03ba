"""`surge serve --log-level`: the server's own log lines reach stderr; a bad level is refused."""

from __future__ import annotations

import io
import logging
import subprocess
import sys

import pytest

from surge.errors import SurgeError
from surge.server.process import configure_logging


def test_info_lines_are_written_once_the_level_is_info(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info")
    logging.getLogger("surge.cluster.pool").info("model m scaled up: 1 -> 2")
    logging.getLogger("surge.cluster.pool").debug("not shown")
    err = capsys.readouterr().err
    assert "INFO surge.cluster.pool: model m scaled up: 1 -> 2" in err
    assert "not shown" not in err


def test_the_log_follows_stderr_when_it_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    configure_logging("info")
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    logging.getLogger("surge.engine").info("one")
    first.close()  # as a finished capture is
    monkeypatch.setattr(sys, "stderr", second)
    logging.getLogger("surge.engine").info("two")
    assert second.getvalue().endswith("INFO surge.engine: two\n")


def test_an_unknown_level_names_itself_and_the_accepted_ones() -> None:
    with pytest.raises(SurgeError, match=r"'loud'.*debug, info, warning, error"):
        configure_logging("loud")


def test_the_cli_refuses_an_unknown_level_in_one_line_with_exit_2(tmp_path) -> None:
    (tmp_path / "repo").mkdir()
    done = subprocess.run(
        [sys.executable, "-c", "from surge.cli import main; main()", "serve",
         str(tmp_path / "repo"), "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0",
         "--log-level", "loud"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "log level 'loud'" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
