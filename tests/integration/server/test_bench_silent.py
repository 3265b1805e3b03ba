"""`surge bench` against a server that answers the model's metadata and then no request: the bench
stops after its warm-up with one line naming the URL, instead of waiting out a 30 s grace for
the warm-up and again for every level (a 1 s bench lasted 62 s and printed a table of timeouts).
"""

from __future__ import annotations

import json
import socketserver
import threading
from collections.abc import Iterator

import pytest
from tests.cli_runner import run_cli

from surge.bench import loadgen

METADATA = json.dumps({
    "name": "m", "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}]}).encode()


class _Handler(socketserver.StreamRequestHandler):
    """Answers GET (metadata, config) over keep-alive; holds every POST unanswered."""

    def handle(self) -> None:
        while True:
            line = self.rfile.readline()
            if not line:
                return
            length = 0
            while (header := self.rfile.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = header.decode().partition(":")
                length = int(value) if name.strip().lower() == "content-length" else length
            self.rfile.read(length)
            if not line.startswith(b"GET"):
                self.server.released.wait()  # type: ignore[attr-defined]
                return
            body = b'{"max_batch_size": 8}' if b"/config" in line else METADATA
            self.wfile.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n%s" % (len(body), body))


@pytest.fixture
def silent_url() -> Iterator[str]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.released = threading.Event()  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.released.set()  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()


def test_a_bench_of_a_server_that_never_answers_stops_after_the_warm_up(
        silent_url: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(loadgen, "MIN_GRACE_S", 0.5, raising=False)  # the test's own pace
    code, out, err = run_cli(["bench", silent_url, "--model", "m", "--concurrency", "1,4",
                              "--duration", "1s"], capsys)
    assert code == 2, out + err
    assert f"{silent_url}: model 'm' accepts requests but answers none" in err
    assert "no answer to any of the 1 warm-up request(s)" in err
    assert "Traceback" not in err
    assert "timeout" not in out  # no table of a level that was never measured
