"""Hypothesis fuzzing of the model config reader: any YAML text or mapping is a ModelConfig or a
short ConfigError, never another exception."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from surge.configfile import parse_yaml
from surge.errors import ConfigError
from surge.repository.config import ModelConfig, parse_config, read_config

FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

KEYS = sorted(ModelConfig.model_fields) + ["batching.enabled", "queue.max_size", "nope"]
scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats()
           | st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=6) | st.sampled_from(KEYS), inner,
                                        max_size=4), max_leaves=16)
mappings = st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), values, max_size=6)
yaml_text = st.text(st.characters(codec="utf-8"), max_size=200) | st.lists(
    st.sampled_from(["a: 1\n", "- x\n", "&a [1]\n", "*a\n", "b: *a\n", "{", "[", ": ", "!!python/",
                     "max_batch_size: ", "batching: {", "  ", "\t", "%YAML 1.1\n", "---\n",
                     "? x\n", "'", '"', "|\n", ">\n", "!!binary YQ==\n", "<<: *a\n"]),
    max_size=12).map("".join)


def _config_or_config_error(call: object) -> None:
    try:
        result = call()  # type: ignore[operator]
    except ConfigError as exc:
        message = str(exc)
    else:
        assert isinstance(result, ModelConfig)
        return
    assert len(message) < 1000


@FUZZ
@given(mappings)
def test_any_mapping_validates_or_raises_config_error(data: dict) -> None:
    _config_or_config_error(lambda: parse_config(data, "fuzz/config.yaml"))


@FUZZ
@given(yaml_text)
def test_any_yaml_text_parses_or_raises_config_error(text: str) -> None:
    _config_or_config_error(lambda: parse_config(parse_yaml(text), "fuzz/config.yaml"))


@FUZZ
@given(st.binary(max_size=200))
def test_any_file_bytes_read_or_raise_config_error(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(data)
    _config_or_config_error(lambda: read_config(path))
