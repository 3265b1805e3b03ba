"""The recommendation application at small size: `surge train` fits the DLRM on simulated
clicks and exports it with one input per feature column; the ranking task scores it against
the simulator's known preferences; served, one request scores a user against N candidates as
one request of N batch items, and too many candidates, a missing column or an id outside its
table get a clear 400."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from tests.integration.server.conftest import ServerProcess, start_server

from surge.evaluate.harness import evaluate
from surge.repository import Repository
from surge.tasks import DataOptions
from surge.tasks.ranking import ranking_report
from surge_examples.recommendation.data import SimulatedClicks

ROOT = Path(__file__).resolve().parents[2]
MAX_CANDIDATES = 128


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("dlrm")
    recipe = yaml.safe_load((ROOT / "recipes" / "dlrm.yaml").read_text())
    recipe.update(epochs=2, parallelism="none", device="cpu", log_dir=str(tmp / "run"),
                  checkpoint={"dir": str(tmp / "run" / "ckpt")})
    recipe["data"].update(train_size=30_000, test_size=4_000)
    recipe["export"].update(repo=str(tmp / "repo"), max_batch_size=MAX_CANDIDATES)
    path = tmp / "dlrm.yaml"
    path.write_text(yaml.safe_dump(recipe))
    done = subprocess.run([sys.executable, "-c", "from surge.cli import main; main()", "train",
                           str(path)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr + done.stdout
    return tmp / "repo"


def test_trained_model_ranks_far_better_than_chance_and_below_the_oracle(repo: Path) -> None:
    loaded = Repository(repo).load("dlrm")
    assert loaded.runner.signature.input_names == ["user", "item", "category", "dense"]
    columns, labels, truth = SimulatedClicks().lists(DataOptions(test_size=60))
    dataset = SimulatedClicks().evaluation("user", DataOptions(test_size=60))
    report = evaluate(loaded, dataset, "ranking", metric="auc")
    oracle = ranking_report(labels, truth)
    chance = ranking_report(labels, np.random.default_rng(0).random(len(truth)))
    # 30k impressions teach popularity and price, not yet each user's taste
    assert report.details.auc > chance.auc + 0.05
    assert report.details.ndcg_at_k > chance.ndcg_at_k + 0.05
    assert report.details.auc <= oracle.auc + 0.02  # the known preferences bound what it learns


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(repo, tmp_path_factory.mktemp("log") / "server.log")
    yield proc
    assert proc.stop() == 0, proc.output()


def _body(columns: dict[str, np.ndarray], drop: str | None = None) -> dict:
    inputs = []
    for name, array in columns.items():
        if name != drop:
            datatype = "INT64" if array.dtype == np.int64 else "FP32"
            inputs.append({"name": name, "datatype": datatype, "shape": list(array.shape),
                           "data": array.reshape(-1).tolist()})
    return {"inputs": inputs}


def _candidates(count: int) -> dict[str, np.ndarray]:
    columns, _, _ = SimulatedClicks().lists(DataOptions(test_size=2))
    return {k: v[:count] for k, v in columns.items()}


def _batch_items(server: ServerProcess) -> tuple[float, float]:
    """(sum of items over computed batches, batches computed) for the model."""
    text = httpx.get(server.metrics, timeout=10).text
    total = re.search(r'surge_batch_size_sum\{model="dlrm"\} (\S+)', text)
    count = re.search(r'surge_batch_size_count\{model="dlrm"\} (\S+)', text)
    return (float(total.group(1)) if total else 0.0, float(count.group(1)) if count else 0.0)


def test_one_request_scores_a_user_against_n_candidates_in_one_batch(
        server: ServerProcess, repo: Path) -> None:
    columns = _candidates(100)
    before = _batch_items(server)
    response = httpx.post(f"{server.http}/v2/models/dlrm/infer", json=_body(columns), timeout=30)
    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    assert output["shape"] == [100, 1]
    expected = Repository(repo).load("dlrm").runner.run(columns)["probability"]
    np.testing.assert_allclose(np.array(output["data"]).reshape(100, 1), expected, atol=1e-5)
    after = _batch_items(server)
    assert (after[0] - before[0], after[1] - before[1]) == (100.0, 1.0)  # 100 items, 1 batch


def test_more_candidates_than_max_batch_get_400(server: ServerProcess) -> None:
    columns = _candidates(MAX_CANDIDATES + 1)
    response = httpx.post(f"{server.http}/v2/models/dlrm/infer", json=_body(columns), timeout=30)
    assert response.status_code == 400
    assert f"batch size {MAX_CANDIDATES + 1} exceeds the model's max {MAX_CANDIDATES}" in \
        response.json()["error"]


def test_a_missing_feature_column_gets_400_naming_it(server: ServerProcess) -> None:
    response = httpx.post(f"{server.http}/v2/models/dlrm/infer",
                          json=_body(_candidates(10), drop="category"), timeout=30)
    assert response.status_code == 400
    assert "missing input(s) ['category']" in response.json()["error"]


def test_the_export_declares_its_tables_and_a_negative_id_gets_400(server: ServerProcess,
                                                                   repo: Path) -> None:
    config = Repository(repo).config("dlrm")
    assert config.inputs is not None
    declared = {t.name: (t.min, t.max, t.finite) for t in config.inputs}
    # the recipe's tables: 2,000 users, 1,000 items, 20 categories; dense values finite
    assert declared == {"user": (0, 1999, False), "item": (0, 999, False),
                        "category": (0, 19, False), "dense": (None, None, True)}
    columns = _candidates(5)
    columns["item"] = columns["item"].copy()
    columns["item"][2] = -1
    response = httpx.post(f"{server.http}/v2/models/dlrm/infer", json=_body(columns), timeout=30)
    assert response.status_code == 400
    assert response.json()["error"] == ("input 'item' holds -1, but its config declares values "
                                        "in [0, 999]")
    good = httpx.post(f"{server.http}/v2/models/dlrm/infer", json=_body(_candidates(5)),
                      timeout=30)
    assert good.status_code == 200, good.text
