"""evaluate() and the in-process profiler on the tiny 2x+1 model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from rich.progress import Progress

from surge.errors import ConfigError
from surge.evaluate.harness import EvalDataset, evaluate, load_dataset, run_dataset
from surge.evaluate.metrics import MetricError
from surge.evaluate.profile import (
    ProfileReport,
    batch_inputs,
    default_batch_sizes,
    default_settings,
    profile_variant,
)
from surge.repository import Repository
from surge.runtimes import RunnerOptions
from tests.unit.tiny_models import make_repo


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Repository:
    return Repository(make_repo(tmp_path_factory.mktemp("repo")))


def _dataset(n: int = 50) -> EvalDataset:
    x = np.random.default_rng(0).random((n, 4), dtype=np.float32)
    labels = x.argmax(axis=1)
    labels[:5] = (labels[:5] + 1) % 4  # 5 of 50 wrong on purpose -> 90% accuracy
    return EvalDataset("synthetic", {"x": x}, labels)


def test_classification_accuracy_through_the_runner(tiny: Repository) -> None:
    report = evaluate(tiny.load("tiny"), _dataset(), "classification", batch_size=7)
    assert report.metric == pytest.approx(90.0)
    assert report.count == 50
    assert report.model == "tiny"
    # outputs are 2x+1 of the inputs, concatenated in order across batches of 7
    np.testing.assert_allclose(report.outputs["y"], 2 * _dataset().inputs["x"] + 1, rtol=1e-6)


def test_batches_never_exceed_the_models_max(tiny: Repository) -> None:
    loaded = tiny.load("tiny")  # max_batch_size 8 in its config
    seen: list[int] = []
    run_dataset(loaded.runner, _dataset(20), batch_size=256,
                on_batch=lambda out, part: seen.append(part.stop - part.start))
    assert seen == [8, 8, 4]


def test_an_empty_dataset_is_refused_before_scoring(tiny: Repository) -> None:
    """Its outputs had no arrays, and scoring them raised KeyError: 'y' (a traceback)."""
    empty = EvalDataset("empty", {"x": np.zeros((0, 4), np.float32)}, np.zeros(0, np.int64))
    for task in ("classification", "embedding"):
        with pytest.raises(MetricError, match="dataset 'empty' has no samples"):
            evaluate(tiny.load("tiny"), empty, task, reference=np.zeros((0, 4), np.float32))


def test_embedding_fidelity_against_a_reference(tiny: Repository) -> None:
    data = _dataset()
    reference = 2 * data.inputs["x"] + 1
    perfect = evaluate(tiny.load("tiny"), data, "embedding", reference=reference)
    assert perfect.metric == pytest.approx(100.0)
    skewed = evaluate(tiny.load("tiny"), data, "embedding", reference=reference[::-1].copy())
    assert skewed.metric < 99.0


def test_detection_scores_the_decoded_outputs(tiny: Repository) -> None:
    x = np.zeros((3, 4), dtype=np.float32)
    gt = {"images": [{"id": i} for i in (10, 11, 12)], "categories": [{"id": 1, "name": "box"}],
          "annotations": [{"image_id": i, "category_id": 1, "bbox": [0, 0, 3, 3]}
                          for i in (10, 11, 12)]}
    data = EvalDataset("boxes", {"x": x}, ground_truth=gt, image_ids=np.array([10, 11, 12]))

    def decoder(outputs: dict[str, np.ndarray], ids: np.ndarray) -> list[dict]:
        # y = 2*0 + 1 = 1 -> a 3x3 box at (0, 0) when y[0] == 1: exactly the ground truth
        return [{"image_id": int(i), "category_id": 1, "bbox": [0, 0, 3 * y[0], 3], "score": 0.9}
                for i, y in zip(ids, outputs["y"], strict=True)]

    report = evaluate(tiny.load("tiny"), data, "detection", batch_size=2, decoder=decoder)
    assert report.metric_name == "mAP"
    assert report.metric == pytest.approx(100.0)
    # A subset is scored against its own images only, not against the whole ground truth.
    first_two = data.subset(2)
    assert {im["id"] for im in first_two.ground_truth["images"]} == {10, 11}
    assert evaluate(tiny.load("tiny"), first_two, "detection", decoder=decoder).metric == \
        pytest.approx(100.0)
    # without a decoder the outputs must be boxes, scores and labels
    with pytest.raises(MetricError, match=r"needs outputs boxes/scores/labels .* are \['y'\]"):
        evaluate(tiny.load("tiny"), data, "detection")


def test_the_headline_metric_can_be_chosen(tiny: Repository) -> None:
    x = np.zeros((2, 4), dtype=np.float32)
    gt = {"images": [{"id": 1}, {"id": 2}], "categories": [{"id": 1, "name": "box"}],
          "annotations": [{"image_id": i, "category_id": 1, "bbox": [0, 0, 10, 10]}
                          for i in (1, 2)]}
    data = EvalDataset("boxes", {"x": x}, ground_truth=gt, image_ids=np.array([1, 2]))

    def decoder(outputs: dict[str, np.ndarray], ids: np.ndarray) -> list[dict]:
        # IoU 0.6 with the ground truth: a hit at IoU 0.5, a miss at 0.75 and above
        return [{"image_id": int(i), "category_id": 1, "bbox": [0, 0, 10, 6], "score": 0.9}
                for i in ids]

    model = tiny.load("tiny")
    default = evaluate(model, data, "detection", decoder=decoder)
    at_50 = evaluate(model, data, "detection", decoder=decoder, metric="mAP50")
    assert (default.metric_name, at_50.metric_name) == ("mAP", "mAP50")
    assert at_50.metric == pytest.approx(100.0)
    assert default.metric == pytest.approx(100.0 * default.details.map)
    assert default.metric < 50.0
    with pytest.raises(MetricError, match="metric 'map50' is not one of mAP, mAP50, mAP75"):
        evaluate(model, data, "detection", decoder=decoder, metric="map50")


def test_missing_targets_and_unknown_task_are_clear(tiny: Repository) -> None:
    unlabeled = EvalDataset("u", {"x": np.zeros((2, 4), np.float32)})
    with pytest.raises(MetricError, match="has no labels"):
        evaluate(tiny.load("tiny"), unlabeled, "classification")
    with pytest.raises(ConfigError, match="unknown task 'segmentation'"):
        evaluate(tiny.load("tiny"), unlabeled, "segmentation")
    with pytest.raises(MetricError, match="lacks model input"):
        evaluate(tiny.load("tiny"), EvalDataset("w", {"z": np.zeros((2, 4))}), "embedding")


def test_load_dataset_from_npz(tmp_path: Path) -> None:
    path = tmp_path / "val.npz"
    np.savez(path, x=np.ones((3, 4), np.float32), labels=np.array([0, 1, 2]))
    data = load_dataset(path)
    assert (len(data), list(data.inputs), data.labels.tolist()) == (3, ["x"], [0, 1, 2])
    with pytest.raises(ConfigError, match="dataset 'nowhere.csv': expected one of"):
        load_dataset("nowhere.csv")


def test_a_dataset_of_the_wrong_shape_is_refused_before_the_engine_sees_it(
        tiny: Repository) -> None:
    wrong = EvalDataset("w", {"x": np.zeros((2, 5), np.float32)}, np.zeros(2, np.int64))
    with pytest.raises(MetricError, match=r"dataset 'w' does not fit the model: input 'x' "
                                          r"expects FP32 \[-1, 4\], got FP32 \[1, 5\]"):
        evaluate(tiny.load("tiny"), wrong, "classification")


def test_a_file_that_is_no_dataset_is_refused_naming_it(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(ConfigError, match=f"dataset '{garbage}' cannot be read"):
        load_dataset(garbage)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, x=np.array([{"a": 1}], dtype=object), labels=np.zeros(1))
    with pytest.raises(ConfigError, match="cannot be read"):
        load_dataset(pickled)


def test_profiler_measures_every_setting_and_batch(tiny: Repository, tmp_path: Path) -> None:
    def factory(options: RunnerOptions):  # noqa: ANN202
        return tiny.load("tiny", options=options).runner

    with (tmp_path / "log").open("w") as log, Progress(console=Console(file=log)) as progress:
        report = profile_variant(factory, "tiny", "original", [1, 4], [(1, 1), (2, 1)],
                                 duration_s=0.02, progress=progress)
    assert "profile tiny@original" in (tmp_path / "log").read_text()
    assert [(p.instances, p.batch_size) for p in report.points] == [(1, 1), (1, 4), (2, 1), (2, 4)]
    assert all(p.throughput > 0 and p.latency.count >= 5 for p in report.points)
    assert ProfileReport.load(report.save(tmp_path / "p.json")) == report


def test_profile_batches_are_made_of_real_rows_when_given(tiny: Repository) -> None:
    signature = tiny.load("tiny").signature
    rows = np.arange(12, dtype=np.float64).reshape(3, 4)  # 3 rows, float64: cast to FP32
    batch = batch_inputs(signature, 5, {"x": rows})["x"]
    assert batch.dtype == np.float32
    assert batch.tolist() == [*rows.tolist(), *rows[:2].tolist()]  # repeated past the end
    assert batch_inputs(signature, 2, {"other": rows})["x"].shape == (2, 4)  # names differ


def test_profiler_runs_the_samples_it_is_given(tiny: Repository) -> None:
    seen: list[np.ndarray] = []

    class Recording:
        def __init__(self, runner: object) -> None:
            self.runner = runner

        def __getattr__(self, name: str) -> object:
            return getattr(self.runner, name)

        def run(self, inputs: dict[str, np.ndarray]) -> object:
            seen.append(inputs["x"])
            return self.runner.run(inputs)  # type: ignore[attr-defined]

    rows = np.full((2, 4), 7.0, np.float32)
    profile_variant(lambda options: Recording(tiny.load("tiny", options=options).runner),  # type: ignore[arg-type,return-value]
                    "tiny", "original", [3], [(1, 1)], duration_s=0.01, samples={"x": rows})
    assert seen
    assert all(x.shape == (3, 4) and (x == 7.0).all() for x in seen)


def test_default_grids() -> None:
    assert default_batch_sizes(48) == [1, 2, 4, 8, 16, 32, 48]
    assert default_settings(2) == [(1, 1), (1, 2), (2, 1)]


def test_load_detection_split_directory(tmp_path: Path) -> None:
    split = tmp_path / "val"
    split.mkdir()
    np.save(split / "images.npy", np.zeros((2, 8, 8), np.uint8))
    gt = {"images": [{"id": 1}, {"id": 2}], "categories": [{"id": 1, "name": "a"}],
          "annotations": [{"image_id": 2, "category_id": 1, "bbox": [1, 1, 2, 2]}]}
    (split / "annotations.json").write_text(__import__("json").dumps(gt))
    data = load_dataset(split, input_name="image")
    assert data.inputs["image"].shape == (2, 8, 8)
    assert data.image_ids.tolist() == [1, 2]
    assert data.ground_truth == gt
    (split / "annotations.json").unlink()
    with pytest.raises(ConfigError, match="needs images.npy and annotations.json"):
        load_dataset(split)
