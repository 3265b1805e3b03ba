"""Text embeddings end to end: all-MiniLM-L6-v2 imported from its package, served as a pipeline
(UTF-8 text -> tokenizer -> ONNX encoder), answers tritonclient with the vectors of the
sentence-transformers recipe (mean pooling over the mask, L2 norm); the int8 variant made by
`surge optimize` keeps the cosine; the semantic-search example finds the right newsgroup."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from tests.integration.server.conftest import ServerProcess, start_server, triton_client

from surge.optimize import Int8DynamicConfig
from surge.optimize.pipeline import OptimizeOptions, optimize_model
from surge.repository import Repository
from surge_examples.text.corpus import corpus_file
from surge_examples.text.pipelines import import_minilm

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples" / "text"
SENTENCES = ["A man is eating food.", "Someone is having a meal.",
             "The new graphics card renders 3D scenes quickly.", "héllo wörld — ünïcode"]


def reference_embeddings(texts: list[str]) -> np.ndarray:
    """The sentence-transformers recipe written out with transformers: token states averaged
    over the attention mask, then L2-normalised."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from surge.zoo.minilm import minilm_dir

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir()))
    model = AutoModel.from_pretrained(str(minilm_dir())).eval()
    tokens = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.inference_mode():
        states = model(**tokens).last_hidden_state
    mask = tokens["attention_mask"].unsqueeze(-1).float()
    pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("text-repo")
    import_minilm(path)
    return path


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(repo, tmp_path_factory.mktemp("log") / "server.log")
    yield proc
    assert proc.stop() == 0, proc.output()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_served_text_embeddings_equal_the_sentence_transformers_recipe(
        server: ServerProcess, protocol: str) -> None:
    url = server.http.removeprefix("http://") if protocol == "http" else server.grpc
    extra = ["--grpc"] if protocol == "grpc" else []
    result = triton_client(str(EXAMPLES / "embed.py"), "--url", url, "--json", *extra, *SENTENCES)
    assert result.returncode == 0, result.stderr[-3000:] + server.output()[-2000:]
    served = np.array(json.loads(result.stdout), np.float32)
    expected = reference_embeddings(SENTENCES)
    assert served.shape == (4, 384)
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(served, expected, atol=2e-5)
    # the paraphrase pair is closer than an unrelated sentence
    assert served[0] @ served[1] > 0.5 > served[0] @ served[2]


def test_search_example_finds_the_newsgroup_of_a_query(server: ServerProcess) -> None:
    corpus = corpus_file("20newsgroups", "test")
    queries = ["nasa launched the space shuttle into orbit",
               "which team won the hockey playoffs in overtime"]
    result = triton_client(str(EXAMPLES / "search.py"), str(corpus), *queries, "--url",
                           server.http.removeprefix("http://"), "--docs", "120", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    hits = json.loads(result.stdout)
    assert [hit[0]["category"] for hit in hits] == ["sci.space", "rec.sport.hockey"]
    assert all(hit[0]["score"] > hit[-1]["score"] for hit in hits)


def test_int8_variant_keeps_the_cosine_on_newsgroup_documents(repo: Path,
                                                              tmp_path: Path) -> None:
    from surge.processors.text import tokenize

    tokens = tokenize({"text": np.array([[s.encode()] for s in SENTENCES], dtype=object)},
                      {"tokenizer": "surge.zoo.minilm:tokenizer_file",
                       "outputs": ["input_ids", "attention_mask"]})
    # Given calibration rows and no fine-tuning, `optimize` does not tokenize the newsgroups'
    # training split (about 10 s) for calibration rows that int8-dynamic never uses; the
    # variant is still checked on `check_rows` documents of the evaluation split.
    np.savez(tmp_path / "calib.npz", **tokens)
    options = OptimizeOptions(check_rows=64, calibration=tmp_path / "calib.npz",
                              finetune_epochs=0)
    [outcome] = optimize_model(repo, "minilm", {"int8-dynamic": Int8DynamicConfig()}, options)
    assert outcome.kept, outcome
    assert outcome.variant is not None
    assert outcome.variant.check.cosine is not None
    assert outcome.variant.check.cosine >= 0.98
    variant = Repository(repo).load("minilm@int8-dynamic")
    vectors = variant.runner.run(tokens)["embedding"]
    cosine = (vectors * reference_embeddings(SENTENCES)).sum(1) / np.linalg.norm(vectors, axis=1)
    assert cosine.min() > 0.97


def test_bench_loads_the_text_pipeline_with_corpus_texts(server: ServerProcess) -> None:
    from surge.bench import run_bench

    report = run_bench(server.http, "minilm-text", 2, 3.0, warmup_s=0.5,
                       dataset="20newsgroups-text")
    run = report.runs[0]
    assert run.throughput > 0
    assert not run.errors, run.errors
