"""'package.module:name' resolution: one rule and one-line errors for every place a config or
the command line names trusted code (factories, tasks, datasets, decoders)."""

from __future__ import annotations

import pytest

from surge.errors import ConfigError, ModelLoadError
from surge.runtimes.torch_runner import resolve_factory
from surge.tasks.detection import Detection
from surge.trusted import import_object


def test_resolves_the_named_object() -> None:
    assert import_object("surge.trusted:import_object", "helper") is import_object


@pytest.mark.parametrize(("spec", "message"), [
    ("surge.trusted", "helper 'surge.trusted' must look like 'package.module:name'"),
    (":import_object", "must look like"),
    ("surge.nowhere:f", "helper 'surge.nowhere:f': cannot import 'surge.nowhere'"),
    ("surge.trusted:nope", "helper 'surge.trusted:nope': 'surge.trusted' has no 'nope'"),
])
def test_a_wrong_name_is_a_one_line_config_error(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        import_object(spec, "helper")


def test_factories_fail_as_model_loads_and_must_be_callable() -> None:
    with pytest.raises(ModelLoadError, match="factory 'surge.nowhere:f': cannot import"):
        resolve_factory("surge.nowhere:f")
    with pytest.raises(ModelLoadError,
                       match="'V2_DATATYPES' in 'surge.datatypes' is not callable"):
        resolve_factory("surge.datatypes:V2_DATATYPES")


def test_a_bad_detection_decoder_names_the_parameter() -> None:
    with pytest.raises(ConfigError, match="parameters.decoder 'surge.nowhere:decode'"):
        Detection().decoder({"decoder": "surge.nowhere:decode"})
