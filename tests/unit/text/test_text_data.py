"""The text plugin's pieces: the corpus reader, the tokenized splits, the classifiers and the
export whose sequence dim stays symbolic (with its text-in pipeline)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from surge.errors import ConfigError
from surge.repository import Repository
from surge.tasks import DataOptions, get_dataset, get_task, resolve_builder
from surge.train.config import parse_train_config
from surge_examples.text.corpus import read_corpus
from surge_examples.text.data import TextCorpus
from surge_examples.text.model import BagClassifier
from surge_examples.text.task import TextClassification

HEADER = "Category\tText\nd\tstring\nclass\t\n"
TRAIN = [("earn", "net profit rose per share"), ("acq", "company agreed to buy the firm"),
         ("earn", "quarterly dividend declared"), ("crude", "oil prices fell")]


@pytest.fixture
def corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    rows = "".join(f"{c}\t{t}\n" for c, t in TRAIN)
    (tmp_path / "reuters-r8-train.tab").write_text(HEADER + rows + "\n")
    (tmp_path / "reuters-r8-test.tab").write_text(HEADER + "acq\tthe bank bought shares\n")
    monkeypatch.setenv("SURGE_TEXT_CORPUS_DIR", str(tmp_path))
    return tmp_path


def test_corpus_files_read_as_categories_and_texts(corpus: Path) -> None:
    documents = read_corpus("reuters-r8", "train")
    assert list(zip(documents.categories, documents.texts, strict=True)) == TRAIN
    (corpus / "reuters-r8-test.tab").write_text(HEADER + "no tab on this line\n")
    with pytest.raises(ConfigError, match=r"reuters-r8-test.tab:4: expected 'category<TAB>text'"):
        read_corpus("reuters-r8", "test")
    with pytest.raises(ConfigError, match="reuters-r52-train.tab not found"):
        read_corpus("reuters-r52", "train")
    with pytest.raises(ConfigError, match="unknown corpus 'imdb'"):
        read_corpus("imdb", "train")


def test_splits_are_token_ids_padded_to_the_length_with_sorted_class_ids(corpus: Path) -> None:
    dataset = get_dataset("Reuters_R8")  # registered by the plugin, names normalised
    assert isinstance(dataset, TextCorpus)
    train, test = dataset.training(DataOptions(input_shape=(8,)))
    assert train.inputs.shape == (4, 8)
    assert train.inputs.dtype == torch.int64
    assert (train.inputs[:, 0] == 101).all()  # [CLS]
    assert sorted(train.labels.tolist()) == [0, 1, 2, 2]  # acq, crude, earn, earn
    assert test.labels.tolist() == [0]
    # a classifier's evaluation set holds exactly its one input, under its name
    assert set(dataset.evaluation("tokens", DataOptions()).inputs) == {"tokens"}
    encoder_set = get_dataset("reuters-r8-tokens")
    evaluation = encoder_set.evaluation("input_ids", DataOptions())
    assert (encoder_set.name, set(evaluation.inputs)) == (
        "reuters-r8-tokens", {"input_ids", "attention_mask"})
    assert evaluation.inputs["input_ids"].shape == (1, 128)
    np.testing.assert_array_equal(evaluation.inputs["attention_mask"],
                                  evaluation.inputs["input_ids"] != 0)
    assert evaluation.class_names == ["acq", "crude", "earn"]


def test_unknown_test_categories_and_bad_shapes_are_config_errors(corpus: Path) -> None:
    (corpus / "reuters-r8-test.tab").write_text(HEADER + "ship\ta tanker sank\n")
    with pytest.raises(ConfigError, match=r"categories \['ship'\] are not in training"):
        TextCorpus("reuters-r8").training(DataOptions())
    with pytest.raises(ConfigError, match=r"model.input_shape must be \[L\]"):
        TextCorpus("reuters-r8").training(DataOptions(input_shape=(8, 8)))


def test_bag_classifier_ignores_padding() -> None:
    torch.manual_seed(0)
    model = BagClassifier(vocab=50, dim=8, hidden=8, classes=3).eval()
    ids = torch.tensor([[1, 7, 9, 2]])
    padded = torch.cat([ids, torch.zeros(1, 6, dtype=torch.int64)], dim=1)
    torch.testing.assert_close(model(ids), model(padded))


def test_minilm_classifier_keeps_its_encoder_frozen_and_in_eval_mode() -> None:
    model = get_task("text-classification")  # the plugin's task by name
    assert isinstance(model, TextClassification)
    assert model.flip() is None
    from surge_examples.text.model import minilm_classifier

    classifier = minilm_classifier(hidden=16, classes=3).train()
    assert not classifier.encoder.training
    assert classifier.head.training
    assert not any(p.requires_grad for p in classifier.encoder.parameters())
    ids = torch.tensor([[101, 7592, 2088, 102, 0, 0]])
    with torch.inference_mode():
        torch.testing.assert_close(classifier.eval()(ids), classifier(ids[:, :4]))


def test_export_keeps_the_sequence_dim_symbolic_and_writes_the_text_pipeline(
        tmp_path: Path) -> None:
    config = parse_train_config({
        "task": "text-classification",
        "model": {"builder": "text-bag", "kwargs": {"vocab": 200, "dim": 8, "hidden": 8,
                                                     "classes": 3},
                  "input_name": "input_ids", "output_name": "logits", "input_shape": [12]},
        "data": {"dataset": "reuters-r8"},
        "export": {"repo": str(tmp_path), "name": "topics", "labels": ["a", "b", "c"]},
    }, "recipe")
    assert resolve_builder("text-bag") == "surge_examples.text.model:bag_classifier"
    torch.manual_seed(0)
    model = BagClassifier(vocab=200, dim=8, hidden=8, classes=3)
    example = torch.randint(1, 200, (2, 12))
    published = TextClassification().publish(model, config, {"test_accuracy": 0.5}, example)
    assert published.files == (tmp_path / "topics" / "1" / "model.onnx",)
    runner = Repository(tmp_path).load("topics").runner
    assert runner.signature.inputs[0].shape == (-1, -1)
    for length in (3, 40):
        ids = np.random.default_rng(length).integers(1, 200, (2, length))
        with torch.inference_mode():
            expected = model.eval()(torch.from_numpy(ids)).numpy()
        np.testing.assert_allclose(runner.run({"input_ids": ids})["logits"], expected,
                                   rtol=1e-4, atol=1e-5)
    pipeline = yaml.safe_load((tmp_path / "topics-text" / "config.yaml").read_text())
    assert pipeline["kind"] == "pipeline"
    assert [s["name"] for s in pipeline["steps"]] == ["tokenize", "classify", "topk"]
    assert pipeline["steps"][0]["params"]["max_length"] == 12
    assert Repository(tmp_path).config("topics").parameters == {
        "task": "text-classification", "dataset": "reuters-r8"}


def test_text_rows_make_bench_payloads_for_a_text_pipeline(corpus: Path) -> None:
    from surge.bench.payload import InputSpec, sample_inputs

    held_out = get_dataset("reuters-r8-text").evaluation("text", DataOptions())
    assert held_out.inputs["text"].tolist() == [[b"the bank bought shares"]]
    assert held_out.labels.tolist() == [0]  # acq, first of the training classes
    sets = sample_inputs([InputSpec("text", "BYTES", (-1, 1))], variants=1,
                         dataset="reuters-r8-text")
    assert sets[0]["text"].tolist() == [[b"the bank bought shares"]]
