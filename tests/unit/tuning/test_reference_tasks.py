"""Tuning with a task scored against the original (embeddings): the original is its own
reference, so it scores perfectly and its variants are scored against its outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper

from surge.evaluate.harness import EvalDataset
from surge.repository import Repository
from surge.tuning import Load, Slo
from surge.tuning.space import ORIGINAL
from surge.tuning.tune import TuneOptions, TuningReport, _evaluate_all
from tests.unit.tiny_models import make_repo


def test_the_original_is_scored_against_itself(tmp_path: Path) -> None:
    repo = Repository(make_repo(tmp_path / "repo"))
    x = np.random.default_rng(0).random((40, 4), dtype=np.float32)
    dataset = EvalDataset("rows", {"x": x})
    options = TuneOptions(data="rows", task="embedding", slo=Slo(100.0, Load(concurrency=4)))
    report = TuningReport("tiny", "embedding", "rows", 100.0, "4 clients", 4, None, 1.0, None)
    results = _evaluate_all(repo, "tiny", [ORIGINAL], dataset, options, None, report)
    assert report.variants[0].metric == pytest.approx(100.0)
    assert report.variants[0].accepted
    np.testing.assert_allclose(results[ORIGINAL].outputs["y"], 2 * x + 1, rtol=1e-6)


def write_negating_variant(repo_root: Path, name: str) -> None:
    """variants/neg of `name`: y = -x, so its outputs tell it from the original's 2x + 1."""
    graph = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["y"])], "neg",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    variant = repo_root / name / "variants" / "neg"
    variant.mkdir(parents=True)
    onnx.save(model, variant / "model.onnx")
    (variant / "variant.yaml").write_text(yaml.safe_dump({"method": "neg"}))


def test_the_original_is_the_version_files_though_the_config_selects_a_variant(
        tmp_path: Path) -> None:
    # A tune before this one left `variant: neg` in the config: the original the tune scores
    # (and profiles) must still be the version files, not the variant the config serves.
    root = make_repo(tmp_path / "repo")
    write_negating_variant(root, "tiny")
    config = root / "tiny" / "config.yaml"
    config.write_text(config.read_text() + "variant: neg\n")
    repo = Repository(root)
    x = np.random.default_rng(0).random((40, 4), dtype=np.float32)
    dataset = EvalDataset("rows", {"x": x})
    options = TuneOptions(data="rows", task="embedding", slo=Slo(100.0, Load(concurrency=4)))
    report = TuningReport("tiny", "embedding", "rows", 100.0, "4 clients", 4, None, 1.0, None)
    results = _evaluate_all(repo, "tiny", [ORIGINAL, "neg"], dataset, options, None, report)
    np.testing.assert_allclose(results[ORIGINAL].outputs["y"], 2 * x + 1, rtol=1e-6)
    np.testing.assert_allclose(results["neg"].outputs["y"], -x, rtol=1e-6)
    assert results["neg"].metric < results[ORIGINAL].metric


def test_the_original_profiled_is_the_version_files_too(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import surge.tuning.tune as tune
    from surge.runtimes import RunnerOptions

    root = make_repo(tmp_path / "repo")
    write_negating_variant(root, "tiny")
    config = root / "tiny" / "config.yaml"
    config.write_text(config.read_text() + "variant: neg\n")
    x = np.ones((1, 4), dtype=np.float32)
    outputs: dict[str, np.ndarray] = {}

    def profiled(factory, model, variant, *args, **kwargs):  # type: ignore[no-untyped-def]
        outputs[variant] = factory(RunnerOptions(intra_op_threads=1)).run({"x": x})["y"]

    monkeypatch.setattr(tune, "profile_variant", profiled)
    options = TuneOptions(data="rows", task="embedding", slo=Slo(100.0, Load(concurrency=4)))
    tune._profile_all(Repository(root), "tiny", [ORIGINAL, "neg"], options, None)
    np.testing.assert_allclose(outputs[ORIGINAL], 2 * x + 1, rtol=1e-6)
    np.testing.assert_allclose(outputs["neg"], -x, rtol=1e-6)
