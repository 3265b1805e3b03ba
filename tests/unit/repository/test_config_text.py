"""What a config file says is what is served: a key given twice is refused, and an error of the
whole config says what is wrong without repeating the config."""

from __future__ import annotations

from pathlib import Path

import pytest

from surge.configfile import parse_yaml
from surge.errors import ConfigError
from surge.repository.config import parse_config


@pytest.mark.parametrize(("text", "key", "line"), [
    ("max_batch_size: 8\ninstances: 1\nmax_batch_size: 16\n", "max_batch_size", 3),
    ("batching:\n  max_queue_delay_ms: 1\n  max_queue_delay_ms: 5\n", "max_queue_delay_ms", 3),
    ("{a: 1, a: 1}\n", "a", 1),
])
def test_a_key_given_twice_is_refused(text: str, key: str, line: int) -> None:
    with pytest.raises(ConfigError, match=f"key '{key}' is given twice in one mapping "
                                          f"\\(line {line}\\)"):
        parse_yaml(text)


def test_the_same_key_in_different_mappings_is_fine() -> None:
    data = parse_yaml("batching: {enabled: true}\ncluster: {instances: 1}\n"
                      "inputs: [{name: a}, {name: b}]\n")
    assert data["inputs"] == [{"name": "a"}, {"name": "b"}]


def test_an_error_of_the_whole_config_does_not_repeat_it() -> None:
    labels = [f"class-{i}" for i in range(200)]
    with pytest.raises(ConfigError) as caught:
        parse_config({"ladder": ["original", "fast"], "labels": labels}, "m/config.yaml")
    message = str(caught.value)
    assert "a ladder needs slo_p99_ms and max_accuracy_drop" in message
    assert "class-1" not in message
    assert "(got" not in message


def test_a_config_written_is_whole_or_not_written_at_all(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails half-way (a full disk, a stop) leaves the previous config.yaml, not
    half a file that a server polling its repository would read."""
    from surge.repository.config import ModelConfig, read_config, write_config

    path = tmp_path / "config.yaml"
    write_config(path, ModelConfig(max_batch_size=8))
    real = Path.write_text

    def half_then_full_disk(self: Path, text: str, *args: object, **kwargs: object) -> int:
        real(self, text[: len(text) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half_then_full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_config(path, ModelConfig(max_batch_size=16))
    monkeypatch.undo()
    assert read_config(path).max_batch_size == 8
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


@pytest.mark.parametrize(("text", "value"), [
    ("slo_p99_ms: 5e1\n", 50.0), ("slo_p99_ms: 2.5E+1\n", 25.0), ("slo_p99_ms: 1_0e0\n", 10.0)])
def test_exponent_numbers_are_numbers(text: str, value: float) -> None:
    # PyYAML (YAML 1.1) read `5e1` as the string '5e1', refused as "not a valid number"
    assert parse_config(parse_yaml(text), "m/config.yaml").slo_p99_ms == value


def test_a_quoted_exponent_stays_a_string() -> None:
    assert parse_yaml("v: '5e1'\n") == {"v": "5e1"}
