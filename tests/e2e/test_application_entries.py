"""The recommendation and finance repository entries under examples/: trained models with their
tuned serving configurations, loaded as `surge serve` loads them and scored on their data; the
forecaster against the last-price forecast; the values each entry's inputs may hold."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from surge.errors import InputError
from surge.evaluate.harness import EvalDataset, evaluate, load_dataset
from surge.repository import Repository
from surge.runtimes import RunnerOptions, load_runner
from surge.tasks import DataOptions, get_task
from surge.tasks.forecasting import regression_report
from surge_examples.recommendation.data import CANDIDATES, SimulatedClicks

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FINANCE = Repository(EXAMPLES / "finance" / "repository")
RECOMMENDATION = Repository(EXAMPLES / "recommendation" / "repository")
# (variant, max batch, queue delay ms, instances, threads) as the docs give them
TUNED = {
    "credit-mlp": ("int8-dynamic", 64, 5.0, 1, 1),
    "credit-gbm": (None, 64, 2.0, 1, 1),
    "price-forecaster": ("int8-dynamic", 64, 0.0, 1, 2),
    "dlrm": (None, 200, 0.0, 2, 1),
}


def test_every_entry_loads_with_its_tuned_configuration() -> None:
    for repo, names in ((FINANCE, ["credit-gbm", "credit-mlp", "price-forecaster"]),
                        (RECOMMENDATION, ["dlrm"])):
        assert sorted(repo.model_names()) == names
        for name in names:
            config = repo.config(name)
            tuned = (config.variant, config.max_batch_size, config.batching.max_queue_delay_ms,
                     config.instances, config.threads)
            assert tuned == TUNED[name], name
            assert repo.load(name).signature.input_names, name
    # max batch counts candidates: the tuned value must hold a whole 100-candidate request
    assert RECOMMENDATION.config("dlrm").max_batch_size >= CANDIDATES


def test_forecaster_beats_the_last_price_on_2008_to_2010() -> None:
    dataset = load_dataset("stock-prices")
    report = evaluate(FINANCE.load("price-forecaster"), dataset, "forecasting", metric="mape")
    naive = regression_report(dataset.labels, dataset.inputs["window"][:, -1])
    assert naive.mape == pytest.approx(0.08757, abs=1e-4)  # the baseline in the docs table
    assert report.details.mape == pytest.approx(0.08740, abs=1e-4)
    assert report.details.mape < naive.mape
    assert report.details.mae < naive.mae


def _score(repo: Repository, ref: str, dataset: EvalDataset, task: str) -> Any:
    """The task's report of `ref` (`name@original`: the version file, not the tuned variant)."""
    name, _, variant = ref.partition("@")
    if variant != "original":
        return evaluate(repo.load(ref), dataset, task).details
    runner = load_runner(repo.model_file(name, 1), RunnerOptions(intra_op_threads=1))
    outputs = runner.run(dataset.inputs)
    return get_task(task).score(dataset, outputs, next(iter(outputs)), None, None)


def test_credit_entries_score_their_documented_auc() -> None:
    dataset = load_dataset("hmda-credit")
    aucs = {ref: _score(FINANCE, ref, dataset, "tabular-classification").auc
            for ref in ("credit-gbm", "credit-mlp@original", "credit-mlp")}
    # credit-mlp serves its tuned int8-dynamic variant, quantized on a VNNI CPU with int8
    # weights: without VNNI, ONNX Runtime's u8s8 products saturate and it scored 0.7788, until
    # its weights were served as uint8 there (surge/runtimes/int8_weights.py)
    assert aucs == pytest.approx({"credit-gbm": 0.7710, "credit-mlp@original": 0.8294,
                                  "credit-mlp": 0.8307}, abs=5e-4)


def test_dlrm_entry_and_its_table_variants_rank_as_documented() -> None:
    dataset = SimulatedClicks().evaluation("user", DataOptions())
    ndcg = {ref: _score(RECOMMENDATION, ref, dataset, "ranking").ndcg_at_k
            for ref in ("dlrm", "dlrm@int8-dynamic", "dlrm@int8-tables", "dlrm@fp16-tables")}
    # int8-dynamic scales activations per call, so its figure moves with the batches (0.7666 to
    # 0.7692 seen); the others are fixed functions of each row
    dynamic = ndcg.pop("dlrm@int8-dynamic")
    assert ndcg["dlrm"] - 0.005 < dynamic < ndcg["dlrm"]
    assert ndcg == pytest.approx({"dlrm": 0.7711, "dlrm@int8-tables": 0.7700,
                                  "dlrm@fp16-tables": 0.7711}, abs=5e-4)


def test_entries_refuse_values_their_engines_would_answer_silently() -> None:
    """ONNX's Gather reads an id of -1 as the table's last row and the int8-dynamic credit
    network turns a NaN into a plausible score: the entries' configs refuse both."""
    dlrm = RECOMMENDATION.load("dlrm")
    rows = {"item": np.array([4, 4]), "category": np.array([2, 2]),
            "dense": np.zeros((2, 2), np.float32)}
    scores = dlrm.runner.run({"user": np.array([-1, 1999]), **rows})["probability"]
    assert scores[0] == scores[1]  # the engine alone: -1 is user 1999
    with pytest.raises(InputError, match=re.escape(
            "input 'user' holds -1, but its config declares values in [0, 1999]")):
        dlrm.signature.validate_inputs({"user": np.array([-1, 1999]), **rows})
    credit = FINANCE.load("credit-mlp")
    assert credit.variant == "int8-dynamic"
    columns = {spec.name: np.ones(1, np.float32) for spec in credit.signature.inputs}
    columns["lvrat"] = np.array([np.nan], np.float32)
    assert np.isfinite(credit.runner.run(columns)["probability"]).all()
    with pytest.raises(InputError, match="input 'lvrat' holds NaN, but its config declares "
                       "finite values"):
        credit.signature.validate_inputs(columns)
