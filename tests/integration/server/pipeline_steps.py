"""A processor for the pipelines of the server tests, named as `pipeline_steps:row_sum` (the
server subprocess gets this directory on PYTHONPATH); no heavy imports, for the front ends."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def row_sum(inputs: dict[str, np.ndarray], params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """total [N, 1] = the sum of each row of y."""
    return {"total": inputs["y"].sum(axis=1, keepdims=True).astype(np.float32)}
