"""The values a config declares its inputs may hold (`min`, `max`, `finite`): what the schema
accepts and refuses, the refusal `surge models` lists, and the range a load gives the served
signature."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from surge.errors import ConfigError, InputError, ModelLoadError
from surge.repository import Repository
from surge.repository.config import parse_config, read_config, write_config
from surge.runtimes.base import Signature
from surge.runtimes.values import ValueRange
from tests.cli_runner import run_cli
from tests.unit.tiny_models import make_repo

# The tiny model: x FP32 [-1, 4] -> y FP32 [-1, 4].
X = "inputs:\n- {{name: x, datatype: FP32, shape: [-1, 4], {values}}}\n"


def _inputs(**tensor: object) -> list[dict[str, object]]:
    return [{"name": "ids", "datatype": "INT64", "shape": [-1], **tensor}]


@pytest.mark.parametrize(("tensor", "values"), [
    ({"min": 0, "max": 1999}, ValueRange(0, 1999)),
    ({"min": 0}, ValueRange(0, None)),
    ({"max": -1}, ValueRange(None, -1)),
    ({"min": 7, "max": 7}, ValueRange(7, 7)),
    ({}, None),
])
def test_integer_ranges_are_read_as_written(tensor: dict, values: ValueRange | None) -> None:
    config = parse_config({"inputs": _inputs(**tensor)}, "config.yaml")
    assert config.inputs is not None
    assert config.inputs[0].spec().values == values


def test_float_inputs_take_float_bounds_and_finite() -> None:
    config = parse_config({"inputs": [{"name": "x", "datatype": "FP16", "shape": [-1],
                                       "min": -0.5, "max": 2, "finite": True}]}, "c.yaml")
    assert config.inputs is not None
    assert config.inputs[0].spec().values == ValueRange(-0.5, 2, True)


@pytest.mark.parametrize(("tensor", "message"), [
    (_inputs(min=5, max=1), "inputs.0: Value error, 'ids': min 5 is above max 1"),
    (_inputs(min=0.5), "'ids': min takes an integer for INT64 inputs, got 0.5"),
    (_inputs(finite=True), "'ids': finite is for float inputs; INT64 values are always finite"),
    (_inputs(datatype="BYTES", min=0), "'ids': BYTES inputs take no min, max or finite"),
    (_inputs(datatype="BOOL", max=1), "'ids': BOOL inputs take no min, max or finite"),
    (_inputs(datatype="UINT8", min=-1), "'ids': min -1 is beyond what UINT8 holds ([0, 255])"),
    (_inputs(max="10"), "inputs.0.max: Value error, expected a number (got '10')"),
    (_inputs(min=True), "inputs.0.min: Value error, expected a number (got True)"),
    (_inputs(datatype="FP32", max=float("inf")), "inputs.0.max: Value error, expected a finite"),
    (_inputs(datatype="FP32", finite="yes"), "inputs.0.finite: Input should be a valid boolean"),
    (_inputs(minimum=0), "unknown key 'inputs.0.minimum'"),
])
def test_ranges_that_cannot_hold_are_refused_naming_the_input(tensor: list, message: str) -> None:
    with pytest.raises(ConfigError, match="^config.yaml: ") as refused:
        parse_config({"inputs": tensor}, "config.yaml")
    assert message in str(refused.value)


def test_a_range_on_an_output_is_refused() -> None:
    outputs = [{"name": "y", "datatype": "FP32", "shape": [-1], "finite": True}]
    with pytest.raises(ConfigError, match="outputs: 'y' declares min, max or finite, which are "
                       "for inputs"):
        parse_config({"outputs": outputs}, "config.yaml")


def test_a_written_config_keeps_its_ranges(tmp_path: Path) -> None:
    config = parse_config({"inputs": [*_inputs(min=0, max=9),
                                      {"name": "d", "datatype": "FP32", "shape": [-1, 2],
                                       "finite": True}]}, "c.yaml")
    write_config(tmp_path / "config.yaml", config)
    text = (tmp_path / "config.yaml").read_text()
    for written in ("min: 0", "max: 9", "finite: true"):
        assert written in text
    assert "min: null" not in text
    assert read_config(tmp_path / "config.yaml") == config


def test_models_lists_a_bad_range_as_the_load_refuses_it(tmp_path: Path) -> None:
    repo = Repository(make_repo(tmp_path, config=X.format(values="min: 2, max: 1")))
    with pytest.raises(ConfigError) as refused:
        repo.load("tiny")
    assert "'x': min 2 is above max 1" in str(refused.value)
    entry = repo.entries()[0]
    assert (entry.state, entry.reason) == ("UNAVAILABLE", str(refused.value))


def test_models_command_shows_the_reason(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    make_repo(tmp_path, config=X.format(values="finite: 1"))
    code, out, _ = run_cli(["models", str(tmp_path)], capsys)
    assert code == 0
    assert "UNAVAILABLE" in out
    assert "inputs.0.finite" in out


def test_the_loaded_signature_checks_the_declared_range(tmp_path: Path) -> None:
    repo = Repository(make_repo(tmp_path, config=X.format(values="min: -1, max: 1, finite: true")))
    signature = repo.load("tiny").signature
    assert signature.inputs[0].values == ValueRange(-1, 1, True)
    signature.validate_inputs({"x": np.array([[-1, 0, 0.5, 1]], np.float32)})
    with pytest.raises(InputError, match=r"^input 'x' holds 1.5, but its config declares finite "
                       r"values in \[-1, 1\]$"):
        signature.validate_inputs({"x": np.array([[0, 0, 0, 1.5]], np.float32)})


def test_a_range_for_a_datatype_the_model_lacks_fails_the_load(tmp_path: Path) -> None:
    config = "inputs:\n- {name: x, datatype: INT32, shape: [-1, 4], min: 0}\n"
    with pytest.raises(ModelLoadError, match="config gives input 'x' datatype INT32, the model "
                       "has FP32"):
        Repository(make_repo(tmp_path, config=config)).load("tiny")


def test_predict_refuses_a_value_outside_the_range_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_repo(tmp_path / "repo", config=X.format(values="finite: true"))
    np.save(tmp_path / "x.npy", np.array([[0, np.nan, 0, 0]], np.float32))
    code, out, err = run_cli(["predict", str(tmp_path / "repo"), "--model", "tiny", "--input",
                              str(tmp_path / "x.npy")], capsys)
    assert code == 2
    assert "input 'x' holds NaN, but its config declares finite values" in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in out + err


def test_the_shipped_forecaster_refuses_prices_under_a_cent() -> None:
    """It forecasts from log price ratios with prices floored at 1e-6: a price of 0 or below
    got a made-up forecast."""
    examples = Path(__file__).resolve().parents[3] / "examples" / "finance" / "repository"
    inputs = Repository(examples).config("price-forecaster").inputs
    signature = Signature(tuple(t.spec() for t in inputs), ())
    signature.check_input("window", np.full((1, 12), 31.5, np.float32))
    for price in (0.0, -4.0):
        window = np.full((1, 12), 31.5, np.float32)
        window[0, 5] = price
        with pytest.raises(InputError, match=r"'window' holds -?\d.*values >= 0.01"):
            signature.check_input("window", window)
