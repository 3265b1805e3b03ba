"""Object detection, COCO style: a served model outputs boxes, scores and labels; decoded into
COCO results and scored by COCO mAP.

The task trains any network that says how it learns and how it is served (`DetectionModel`):
its loss on packed box targets, and the module that wraps it with its decoding.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from surge.errors import ModelLoadError
from surge.evaluate.metrics import MetricError
from surge.tasks.base import EVAL_BATCH, Decoder, Flip, LossFn, Task, TrainMetric
from surge.tasks.coco import detections_to_coco, hflip, truth_from_targets
from surge.tasks.coco_metrics import CocoReport, coco_map
from surge.tasks.data import EvalDataset, Split
from surge.trusted import import_object

if TYPE_CHECKING:
    import torch
    from torch import nn

    from surge.train.config import TrainConfig
    from surge.train.publish import Published

BOXES, SCORES, LABELS = "boxes", "scores", "labels"


@runtime_checkable
class DetectionModel(Protocol):
    """What the detection task needs from a network it trains."""

    def detection_loss(self) -> LossFn:
        """loss(raw outputs, packed targets [N, M, 5]) -> scalar."""
        ...

    def detector(self) -> nn.Module:
        """This network wrapped with its decoding: input -> boxes [N, K, 4] (x1, y1, x2, y2
        pixels), scores [N, K], labels [N, K]; it shares this network's weights."""
        ...

    def detector_factory(self) -> tuple[str, dict[str, Any]]:
        """The trusted 'package.module:factory' and kwargs that build `detector()` for the
        torch_factory engine."""
        ...


def boxes_scores_labels(outputs: Mapping[str, np.ndarray], ids: np.ndarray) -> list[dict[str, Any]]:
    """The default decoder: outputs boxes, scores and labels as COCO results."""
    try:
        return detections_to_coco(outputs[BOXES], outputs[SCORES], outputs[LABELS], ids)
    except KeyError:
        raise MetricError(f"detection needs outputs boxes/scores/labels or a 'decoder' "
                          f"parameter; model outputs are {list(outputs)}") from None


def _detection_model(model: Any) -> DetectionModel:
    if not isinstance(model, DetectionModel):
        raise ModelLoadError(f"task detection trains a model with detection_loss(), detector() "
                             f"and detector_factory(), not {type(model).__name__}")
    return model


class Detection(Task):
    """Boxes scored against COCO ground truth."""

    name = "detection"
    metrics: ClassVar[dict[str, str]] = {"mAP": "map", "mAP50": "map50", "mAP75": "map75"}
    train_metric = TrainMetric(record="val_map50", published="val_map50", label="mAP@0.5",
                               per_sample=False)

    def score(self, dataset: EvalDataset, outputs: Mapping[str, np.ndarray], output: str,
              reference: np.ndarray | None, decoder: Decoder | None) -> CocoReport:
        if dataset.image_ids is None or dataset.ground_truth is None:
            raise MetricError(f"dataset {dataset.name!r} has no image_ids/COCO ground truth")
        detections = (decoder or boxes_scores_labels)(outputs, dataset.image_ids)
        return coco_map(dataset.ground_truth, detections)

    def decoder(self, parameters: Mapping[str, Any]) -> Decoder | None:
        """The model's `parameters.decoder` ('package.module:function', trusted like a
        factory), else boxes/scores/labels outputs as they are."""
        spec = parameters.get("decoder")
        if not spec:
            return boxes_scores_labels
        decoder: Decoder = import_object(str(spec), "parameters.decoder", callable_only=True)
        return decoder

    # -- training ------------------------------------------------------------------------------
    def loss(self, model: nn.Module, label_smoothing: float) -> LossFn:
        return _detection_model(model).detection_loss()

    def flip(self) -> Flip | None:
        return hflip

    def validation_metric(self, model: nn.Module, split: Split, device: torch.device) -> float:
        """COCO mAP@0.5 of the decoded detections on the whole split."""
        import torch

        detector = _detection_model(model).detector().eval()
        parts: list[list[torch.Tensor]] = []
        with torch.inference_mode():
            for start in range(0, len(split), EVAL_BATCH):
                outputs = detector(split.inputs[start:start + EVAL_BATCH].to(device))
                parts.append([t.cpu() for t in outputs])
        boxes, scores, labels = (torch.cat(p).numpy() for p in zip(*parts, strict=True))
        classes = int(split.labels[..., 4].max().item()) + 1 if len(split) else 1
        truth = truth_from_targets(tuple(split.inputs.shape), split.labels,
                                   [str(i) for i in range(max(classes, 1))])
        return coco_map(truth, detections_to_coco(boxes, scores, labels)).map50

    def publish(self, model: nn.Module, config: TrainConfig, metrics: dict[str, Any],
                example: torch.Tensor) -> Published:
        from surge.tasks.detection_export import publish_detector

        return publish_detector(_detection_model(model), config, metrics, example)
