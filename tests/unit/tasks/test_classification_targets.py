"""What classification trains on, checked before the first step: class ids [N] (whole numbers
from 0) or class probabilities [N, classes]. Float ids failed deep inside cross-entropy, in
every rank, with a traceback ('expected scalar type Long')."""

from __future__ import annotations

import pytest
import torch

from surge.errors import ConfigError
from surge.tasks import get_task
from surge.tasks.data import Split

INPUTS = torch.zeros(3, 4)


@pytest.mark.parametrize(("labels", "message"), [
    (torch.tensor([0.0, 1.0, 2.5]), "labels are float32 values such as 0.0: classification "
                                    "trains on whole class ids"),
    (torch.tensor([0, -1, 2]), "labels hold -1: class ids start at 0"),
    (torch.zeros(3, 2, 2), r"labels have shape \[3, 2, 2\]"),
    (torch.zeros(3, 2, dtype=torch.int64), r"labels have shape \[3, 2\]"),
])
def test_labels_cross_entropy_cannot_take_are_refused_naming_the_split(
        labels: torch.Tensor, message: str) -> None:
    with pytest.raises(ConfigError, match=f"the training split's {message}"):
        get_task("classification").check_targets(Split(INPUTS, labels),
                                                  "the training split's")


@pytest.mark.parametrize("labels", [torch.tensor([0, 1, 9]),
                                    torch.softmax(torch.randn(3, 5), 1)])
def test_class_ids_and_class_probabilities_are_taken(labels: torch.Tensor) -> None:
    get_task("classification").check_targets(Split(INPUTS, labels), "the training split's")
