"""Repository entries for the text applications: the served configs of the sentence encoder and
the text-in pipelines in front of the models (`kind: pipeline`, `docs/applications/`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from surge.repository.config import CONFIG_FILE, parse_config

# The tokenizer files the model's package ships, found wherever the package is installed.
MINILM_TOKENIZER = "surge.zoo.minilm:tokenizer_file"
MAX_LENGTH = 256  # all-MiniLM-L6-v2 was trained on at most 256 tokens (sentence_bert_config.json)
# A batch's compute grows with its longest text, which the hang detector's per-batch-size estimate
# does not see: a batch of long documents after short sentences is slow, not hung.
HANG_MIN_MS = 60_000.0
TEXT_INPUT = {"name": "text", "datatype": "BYTES", "shape": [-1, 1]}


def tokenize_step(outputs: list[str], max_length: int = MAX_LENGTH) -> dict[str, Any]:
    return {"name": "tokenize", "processor": "text.tokenize",
            "inputs": {"text": "text"}, "outputs": {name: name for name in outputs},
            "params": {"tokenizer": MINILM_TOKENIZER, "max_length": max_length,
                       "outputs": outputs}}


def encoder_config(name: str, dataset: str = "20newsgroups-tokens") -> dict[str, Any]:
    """The ONNX sentence encoder: token ids in, normalised embedding out."""
    return {"name": name, "max_batch_size": 64,
            "batching": {"enabled": True, "max_queue_delay_ms": 2.0},
            "hang_min_ms": HANG_MIN_MS,
            "parameters": {"task": "embedding", "dataset": dataset}}


def embedding_pipeline(name: str, encoder: str, texts: str = "20newsgroups-text"
                       ) -> dict[str, Any]:
    """text BYTES [-1, 1] -> tokenize -> the encoder -> embedding FP32 [-1, 384]; `texts` (the
    pipeline's `parameters.dataset`) loads it in `surge bench` and `surge tune`."""
    return {"name": name, "kind": "pipeline", "max_batch_size": 64,
            "parameters": {"dataset": texts},
            "inputs": [TEXT_INPUT],
            "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}],
            "steps": [tokenize_step(["input_ids", "attention_mask"]),
                      {"name": "encode", "model": encoder,
                       "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask"},
                       "outputs": {"embedding": "embedding"}}]}


def classifier_pipeline(name: str, classifier: str, max_length: int, k: int = 3,
                        texts: str = "reuters-r8-text") -> dict[str, Any]:
    """text BYTES [-1, 1] -> tokenize -> the classifier -> its `labels` and scores, best k first."""
    return {"name": name, "kind": "pipeline", "max_batch_size": 64,
            "parameters": {"dataset": texts},
            "inputs": [TEXT_INPUT],
            "outputs": [{"name": "labels", "datatype": "BYTES", "shape": [-1, k]},
                        {"name": "scores", "datatype": "FP32", "shape": [-1, k]}],
            "steps": [tokenize_step(["input_ids"], max_length),
                      {"name": "classify", "model": classifier,
                       "inputs": {"input_ids": "input_ids"}, "outputs": {"logits": "logits"}},
                      {"name": "topk", "processor": "labels.topk", "params_from": classifier,
                       "params": {"k": k}, "inputs": {"logits": "logits"},
                       "outputs": {"labels": "labels", "scores": "scores"}}]}


def write_entry(repo: Path, config: dict[str, Any], replace: bool = True) -> Path:
    """`repo/<name>/config.yaml`, validated as `surge serve` will read it; with `replace`
    false an existing (perhaps hand-tuned) config is kept."""
    parse_config(config, f"{config['name']}/{CONFIG_FILE}")
    path = Path(repo) / config["name"] / CONFIG_FILE
    if path.exists() and not replace:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def import_minilm(repo: Path, encoder: str = "minilm", pipeline: str = "minilm-text") -> Path:
    """Write all-MiniLM-L6-v2 as `encoder` (ONNX, version 1) and its text pipeline into `repo`;
    return the ONNX file."""
    from surge.zoo.minilm import export_minilm_onnx

    path = export_minilm_onnx(Path(repo) / encoder / "1" / "model.onnx")
    write_entry(repo, encoder_config(encoder), replace=False)
    write_entry(repo, embedding_pipeline(pipeline, encoder), replace=False)
    return path
