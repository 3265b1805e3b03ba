"""Text classifiers over WordPiece token ids INT64 [N, L] (0 = padding): both take the ids
alone and find the padding from them, so a client or pipeline sends one tensor.

- `text-bag` (`bag_classifier`): fastText-style, trained from scratch: token embeddings, their
  mean and max over the text, and a small MLP.
- `minilm-classifier` (`minilm_classifier`): the all-MiniLM-L6-v2 sentence encoder, frozen,
  with a trained MLP head on its normalised 384-d embedding.
"""

from __future__ import annotations

import torch
from torch import nn

PAD_ID = 0
VOCAB = 30522  # all-MiniLM-L6-v2's WordPiece vocabulary


def _head(features: int, hidden: int, classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(features, hidden), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(hidden, classes))


class BagClassifier(nn.Module):
    """Token embeddings -> [masked mean, masked max] -> MLP -> logits."""

    def __init__(self, vocab: int = VOCAB, dim: int = 96, hidden: int = 128, classes: int = 8,
                 dropout: float = 0.2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, padding_idx=PAD_ID)
        self.head = _head(2 * dim, hidden, classes, dropout)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = (input_ids != PAD_ID).unsqueeze(-1)
        states = self.embed(input_ids)
        mean = (states * mask).sum(1) / mask.sum(1).clamp(min=1)
        # -1e4 rather than -inf: the max of an all-padding row stays finite.
        peak = states.masked_fill(~mask, -1e4).amax(1)
        return self.head(torch.cat([mean, peak], dim=-1))


class MiniLMClassifier(nn.Module):
    """The frozen sentence encoder and a trained head. `train()` leaves the encoder in eval
    mode: its dropout would otherwise perturb features the head cannot adapt them to."""

    def __init__(self, hidden: int = 256, classes: int = 8, dropout: float = 0.1) -> None:
        super().__init__()
        from surge.zoo.minilm import minilm_encoder

        self.encoder = minilm_encoder().requires_grad_(False)
        self.head = _head(384, hidden, classes, dropout)

    def train(self, mode: bool = True) -> MiniLMClassifier:
        super().train(mode)
        self.encoder.eval()
        return self

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = (input_ids != PAD_ID).to(torch.int64)
        return self.head(self.encoder(input_ids, mask))


def bag_classifier(vocab: int = VOCAB, dim: int = 96, hidden: int = 128, classes: int = 8,
                   dropout: float = 0.2) -> BagClassifier:
    return BagClassifier(vocab, dim, hidden, classes, dropout)


def minilm_classifier(hidden: int = 256, classes: int = 8, dropout: float = 0.1) -> MiniLMClassifier:
    return MiniLMClassifier(hidden, classes, dropout)
