"""A text processor for the generate extension's tests, named as `text_steps:shout` (the server
subprocess gets this directory on PYTHONPATH); no heavy imports, for the front ends."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def shout(inputs: dict[str, np.ndarray], params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """shout [N, 1] = the text in capitals; length [N, 1] = its length in characters."""
    texts = [bytes(item).decode() for item in inputs["text"].reshape(-1)]
    loud = np.array([text.upper().encode() for text in texts], dtype=object).reshape(-1, 1)
    length = np.array([len(text) for text in texts], dtype=np.int64).reshape(-1, 1)
    return {"shout": loud, "length": length}
