"""The API key file as operators write it (docs/production.md's own example, editors' byte
order marks, a key given twice) and the Authorization values clients send."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from surge.errors import SurgeError
from surge.server.keys import ApiKey, FollowedKeyFile, KeyRing, Scope, read_key_file

DOCUMENTED = """\
# key                               scope
3b1f0c                              read     # dashboards, Prometheus
9d2e77                              infer    # applications
c0a4e1                              admin    # deployment jobs
"""


def _keys(path: Path, text: str, encoding: str = "utf-8") -> list[tuple[str, Scope]]:
    path.write_text(text, encoding=encoding)
    return [(k.key, k.scope) for k in read_key_file(path)]


def test_the_documented_example_loads(tmp_path: Path) -> None:
    assert _keys(tmp_path / "keys", DOCUMENTED) == [
        ("3b1f0c", Scope.READ), ("9d2e77", Scope.INFER), ("c0a4e1", Scope.ADMIN)]


def test_a_byte_order_mark_is_no_part_of_the_first_key(tmp_path: Path) -> None:
    assert _keys(tmp_path / "keys", "k1 read\nk2 infer\n", "utf-8-sig") == [
        ("k1", Scope.READ), ("k2", Scope.INFER)]


def test_a_key_given_twice_is_refused_without_printing_it(tmp_path: Path) -> None:
    with pytest.raises(SurgeError, match=r"keys:3: this key is already on line 1") as caught:
        _keys(tmp_path / "keys", "s3cret read\nother infer\ns3cret admin\n")
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize(("text", "expected"), [
    ("k superuser\n", r"keys:1: unknown API key scope 'superuser'"),
    ("ok read\nключ read\n", r"keys:2: an API key must be visible ASCII"),
    ("k\x1b[31m read\n", r"keys:1: an API key must be visible ASCII"),
])
def test_a_bad_line_is_named(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(SurgeError, match=expected):
        _keys(tmp_path / "keys", text)


def test_the_bearer_scheme_is_case_insensitive() -> None:
    ring = KeyRing([ApiKey("k-read", Scope.READ), ApiKey("k-admin")])
    assert ring.scope_of([b"bearer k-read"]) is Scope.READ
    assert ring.scope_of([b"BEARER  k-admin"]) is Scope.ADMIN
    assert ring.scope_of([b"Basic k-admin", b"k-admin", b"Bearer", b""]) is None


def test_many_values_against_many_keys_take_no_time() -> None:
    """A request may carry a thousand Authorization values (within the 64 KiB head): against
    a large key file each was compared with each key, seconds on the event loop."""
    ring = KeyRing([ApiKey(f"key-{n:06d}", Scope.READ) for n in range(20_000)])
    values = [b"Bearer guess-%06d" % n for n in range(1000)]
    started = time.perf_counter()
    assert ring.scope_of(values) is None
    assert ring.scope_of([*values, b"Bearer key-019999"]) is Scope.READ
    assert time.perf_counter() - started < 0.2


# -- a key file followed while serving ------------------------------------------------------

def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "keys"
    path.write_text(text)
    return path


def test_a_changed_key_file_replaces_the_keys_and_keeps_the_fixed_ones(tmp_path: Path) -> None:
    path = _file(tmp_path, "old-key infer\n")
    ring = KeyRing([])
    followed = FollowedKeyFile(path, ring, [ApiKey("fixed", Scope.ADMIN)])
    assert ring.scope_of([b"Bearer old-key"]) is Scope.INFER
    assert not followed.reload_if_changed()  # nothing changed
    path.write_text("new-key read\nnewer-key infer\n")
    assert followed.reload_if_changed()
    assert ring.scope_of([b"Bearer old-key"]) is None
    assert ring.scope_of([b"Bearer new-key"]) is Scope.READ
    assert ring.scope_of([b"Bearer fixed"]) is Scope.ADMIN


def test_a_rename_over_the_file_is_seen_even_with_the_same_time_and_size(tmp_path: Path) -> None:
    path = _file(tmp_path, "key-one\n")
    ring = KeyRing([])
    followed = FollowedKeyFile(path, ring)
    status = path.stat()
    replacement = tmp_path / "keys.new"
    replacement.write_text("key-two\n")  # as editors and Kubernetes secrets replace a file
    os.utime(replacement, ns=(status.st_atime_ns, status.st_mtime_ns))
    replacement.rename(path)
    assert followed.reload_if_changed()
    assert ring.scope_of([b"Bearer key-two"]) is Scope.ADMIN


@pytest.mark.parametrize("damage", ["mistake", "removed", "empty", "fifo"])
def test_a_file_that_cannot_be_used_keeps_the_keys_in_use(
        tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture) -> None:
    path = _file(tmp_path, "good-key infer\n")
    ring = KeyRing([])
    followed = FollowedKeyFile(path, ring)
    if damage == "mistake":
        path.write_text("good-key superuser\n")
    elif damage == "removed":
        path.unlink()
    elif damage == "empty":
        path.write_text("")
    else:
        path.unlink()
        os.mkfifo(path)
    assert not followed.reload()  # returns: a FIFO is not opened, so nothing blocks
    assert ring.scope_of([b"Bearer good-key"]) is Scope.INFER
    assert "API keys not reloaded, the previous ones stay in use" in caplog.text
    assert "good-key" not in caplog.text


def test_a_fifo_given_as_the_key_file_is_refused_at_start(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    os.mkfifo(path)
    with pytest.raises(SurgeError, match="is not a regular file"):
        read_key_file(path)
