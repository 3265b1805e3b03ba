"""`detection.boxes` (the serving post-processing) on the outputs and params it used to answer
wrongly: zero-score padding kept at threshold 0, labels given as one string."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from surge.errors import ConfigError
from surge.processors import resolve


def _outputs(scores: list[list[float]]) -> dict[str, np.ndarray]:
    found = np.asarray(scores, np.float32)
    return {"boxes": np.arange(found.size * 4, dtype=np.float32).reshape(*found.shape, 4),
            "scores": found, "labels": np.zeros(found.shape, np.int64)}


def test_padding_is_not_a_detection_at_threshold_0() -> None:
    # A detector that pads its K rows with score 0 got them back as K - 1 boxes of class 0.
    out = resolve("detection.boxes").run(_outputs([[0.7, 0.0, 0.0], [0.0, 0.0, 0.0]]),
                                         {"score_threshold": 0.0, "labels": ["shirt"]})
    assert out["count"].tolist() == [1, 0]
    assert out["labels"].tolist() == [[b"shirt", b"", b""], [b"", b"", b""]]
    assert not out["boxes"][0, 1:].any()


def test_nan_and_negative_scores_are_never_kept() -> None:
    out = resolve("detection.boxes").run(_outputs([[np.nan, -0.5, 0.8, -np.inf]]),
                                         {"score_threshold": 0.0})
    assert out["count"].tolist() == [1]
    assert out["scores"][0].tolist() == pytest.approx([0.8, 0.0, 0.0, 0.0])


@pytest.mark.parametrize("labels", ["shirt,shoe", {"0": "shirt"}, 3])
def test_labels_that_are_not_a_list_are_refused(labels: Any) -> None:
    # "shirt,shoe" named class 1 b"h", its second character
    processor = resolve("detection.boxes")
    assert processor.describe is not None
    with pytest.raises(ConfigError, match="params.labels must be a list of class names"):
        processor.describe({"score_threshold": 0.5, "labels": labels})
    with pytest.raises(ConfigError, match="params.labels must be a list"):
        processor.run(_outputs([[0.9]]), {"score_threshold": 0.5, "labels": labels})


@pytest.mark.parametrize("threshold", [float("nan"), -0.1, 1.5, "0.5", True, None, float("inf")])
def test_thresholds_outside_0_to_1_are_refused(threshold: Any) -> None:
    with pytest.raises(ConfigError, match="score_threshold must be a number in"):
        resolve("detection.boxes").run(_outputs([[0.9]]), {"score_threshold": threshold})
