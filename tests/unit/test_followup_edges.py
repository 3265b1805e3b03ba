"""Loose ends: generated datasets whose sizes are refused before anything is drawn, option
objects checked where they are built, and a dataset that does not fit the model said so."""

from __future__ import annotations

from pathlib import Path

import pytest

import surge.tasks.data
from surge.errors import ConfigError
from surge.tasks import DataOptions
from surge.tuning.space import Load, Slo
from surge.tuning.tune import TuneOptions
from surge_examples.recommendation.data import SimulatedClicks
from surge_examples.text.data import TextCorpus
from tests.cli_runner import run_cli

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
GIB = 1 << 30


@pytest.fixture
def one_gib(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine of 1 GiB, so that the sizes refused are the same everywhere."""
    monkeypatch.setattr(surge.tasks.data, "memory_bytes", lambda: GIB)


@pytest.mark.parametrize("key", ["train_size", "test_size"])
def test_simulated_clicks_past_memory_are_refused_before_drawing(one_gib: None, key: str) -> None:
    """A MemoryError traceback from the allocator, after the world was made."""
    options = DataOptions(**{key: 10**13})
    with pytest.raises(ConfigError, match=f"data.{key} 10,000,000,000,000: .* of simulated "
                                          "impressions, more than this machine's 1.0 GiB"):
        SimulatedClicks().check(options)
    with pytest.raises(ConfigError, match=f"data.{key} 10,000,000,000,000"):
        SimulatedClicks().training(options)


def test_surge_train_refuses_simulated_clicks_past_memory(capsys: pytest.CaptureFixture[str],
                                                          one_gib: None) -> None:
    code, _, err = run_cli(["train", str(RECIPES / "dlrm.yaml"), "parallelism=none",
                            "data.train_size=10000000000000"], capsys)
    assert code == 2
    assert "data.train_size 10,000,000,000,000" in err
    assert "Traceback" not in err


def test_more_candidate_lists_than_simulated_users_are_refused() -> None:
    """numpy's 'Cannot take a larger sample than population' traceback."""
    with pytest.raises(ConfigError, match="data.test_size 2,001: the candidate lists are one "
                                          "per simulated user, and there are 2,000"):
        SimulatedClicks().evaluation("features", DataOptions(test_size=2001))


def test_token_ids_longer_than_memory_holds_are_refused(tmp_path: Path, one_gib: None,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """model.input_shape [10**15]: a MemoryError traceback from the [N, L] id array."""
    header = "Category\tText\nd\tstring\nclass\t\n"
    for split in ("train", "test"):
        (tmp_path / f"reuters-r8-{split}.tab").write_text(header + "acq\tthe bank bought\n")
    monkeypatch.setenv("SURGE_TEXT_CORPUS_DIR", str(tmp_path))
    options = DataOptions(input_shape=(10**15,))
    with pytest.raises(ConfigError, match="model.input_shape length 1,000,000,000,000,000: "
                                          ".* of token ids for 1 documents"):
        TextCorpus("reuters-r8").evaluation("ids", options)


# -- options checked where built ---------------------------------------------------------------
def _tune_options(**fields: object) -> TuneOptions:
    values: dict[str, object] = {"data": "fashion-mnist", "task": "classification",
                                 "slo": Slo(50.0, Load(concurrency=1)), **fields}
    return TuneOptions(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(("fields", "message"), [
    ({"data": 5}, "--data 5: give a dataset name or file"),
    ({"data": "  "}, "--data '  ': give a dataset name or file"),
    ({"protocol": "ftp"}, "--protocol 'ftp': use http, http-json, grpc"),
    ({"slo": 50}, "slo 50: give an instance of Slo"),
    ({"accuracy": 1.0}, "accuracy 1.0: give an instance of AccuracyBudget"),
    ({"write_config": "no"}, "write_config 'no': give True or False"),
    ({"step": ""}, "--step '': name a model step"),
])
def test_tune_options_of_the_wrong_kind_are_refused_where_built(fields: dict[str, object],
                                                                 message: str) -> None:
    """Accepted, then failed after the variants were made or on the first served run."""
    with pytest.raises(ConfigError, match=message):
        _tune_options(**fields)


def test_tune_options_take_a_dataset_path_as_the_report_saves_it() -> None:
    assert _tune_options(data=Path("rows.npz")).data == "rows.npz"


@pytest.mark.parametrize(("fields", "message"), [
    ({"tolerance": -1}, "tolerance -1: give a Tolerance"),
    ({"tolerance": "max_abs=1"}, "tolerance 'max_abs=1': give a Tolerance"),
    ({"tolerance": {"max_abs": -1.0}}, "give a Tolerance"),
    ({"check_rows": 0}, "--check-rows 0: give a whole number >= 1"),
    ({"check_rows": True}, "--check-rows True: give a whole number >= 1"),
    ({"finetune_epochs": -1}, "--finetune-epochs -1: give a whole number >= 0"),
    ({"exclude": "Conv_0"}, "--exclude 'Conv_0': give a tuple of ONNX node names"),
    ({"calibration": 5}, "--calib 5: give the path of a .npy or .npz file"),
    ({"keep_failed": "yes"}, "--keep-failed 'yes': give True or False"),
])
def test_optimize_options_of_the_wrong_kind_are_refused_where_built(
        fields: dict[str, object], message: str) -> None:
    from surge.optimize.pipeline import OptimizeOptions

    with pytest.raises(ConfigError, match=message):
        OptimizeOptions(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(("bound", "message"), [
    ({"max_abs": -1.0}, "tolerance 'max_abs=-1.0': '-1.0' is not a number >= 0"),
    ({"mean_abs": float("nan")}, "tolerance 'mean_abs=nan': 'nan' is not a number >= 0"),
    ({"max_accuracy_drop": float("inf")}, "'accuracy_drop=inf': 'inf' is not a number >= 0"),
    ({"min_top1": 2.0}, "tolerance 'top1=2.0': top1 is a share, at most 1"),
])
def test_tolerance_bounds_are_refused_as_the_command_line_refuses_them(
        bound: dict[str, float], message: str) -> None:
    """A negative bound rejected every variant it checked, silently as 'outside tolerance'."""
    from surge.optimize import Tolerance
    from surge.optimize.pipeline import OptimizeOptions

    with pytest.raises(ConfigError, match=message):
        OptimizeOptions(tolerance=Tolerance(**bound))


def test_optimize_options_take_a_calibration_path_and_a_list_of_nodes() -> None:
    from surge.optimize.pipeline import OptimizeOptions

    options = OptimizeOptions(calibration="calib.npz", exclude=["Conv_0"])  # type: ignore[arg-type]
    assert options.calibration == Path("calib.npz")
    assert options.exclude == ("Conv_0",)


# -- a dataset that does not fit the model -----------------------------------------------------
class _ColumnModel:
    """A model of two feature columns (only its signature is read before the check)."""

    def __init__(self) -> None:
        from surge.runtimes.base import Signature, TensorSpec

        self.signature = Signature(
            (TensorSpec("pirat", "FP32", (-1,)), TensorSpec("hirat", "FP32", (-1,))),
            (TensorSpec("p", "FP32", (-1, 1)),))


def test_an_image_set_given_to_a_column_model_is_said_not_to_fit() -> None:
    """A one-array dataset keys its array by the model's first input: the message said the
    image set 'has ['pirat']', the model's own column, as if the data held it."""
    import numpy as np

    from surge.evaluate.harness import run_dataset
    from surge.evaluate.metrics import MetricError
    from surge.tasks import EvalDataset

    images = EvalDataset("fashion-mnist", {"pirat": np.zeros((3, 1, 28, 28), np.float32)})
    with pytest.raises(MetricError) as caught:
        run_dataset(_ColumnModel(), images)  # type: ignore[arg-type]
    assert str(caught.value) == (
        "dataset 'fashion-mnist' lacks model input(s) ['hirat']: the model takes ['pirat', "
        "'hirat'], the dataset holds one array, float32 [3, 1, 28, 28]; give a dataset with an "
        "array for each model input")


def test_a_dataset_of_other_columns_names_them_with_their_shapes() -> None:
    import numpy as np

    from surge.evaluate.harness import run_dataset
    from surge.evaluate.metrics import MetricError
    from surge.tasks import EvalDataset

    columns = EvalDataset("d", {"pirat": np.zeros(4, np.float32), "x": np.zeros(4, np.int64)})
    with pytest.raises(MetricError, match=r"lacks model input\(s\) \['hirat'\]: the model takes "
                                          r".* the dataset holds 'pirat' float32 \[4\], 'x' "
                                          r"int64 \[4\]"):
        run_dataset(_ColumnModel(), columns)  # type: ignore[arg-type]
