"""The text-classification task: classification (cross-entropy, accuracy, macro-F1) of token
id sequences, exported as ONNX whose batch and sequence dims are both symbolic."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from surge.tasks.base import Flip
from surge.tasks.classification import Classification

if TYPE_CHECKING:
    import torch
    from torch import nn

    from surge.train.config import TrainConfig
    from surge.train.publish import Published

OUTPUT = "logits"


class TextClassification(Classification):
    """Token ids INT64 [N, L] -> logits [N, classes]; scored against class ids [N]. The export
    also writes `<name>-text`, a pipeline from UTF-8 text to the top labels.

    Exports `model.onnx` only (`export.formats` and `export.torch_name` are for image models): a
    served batch is padded to its own longest text, so the sequence dim must stay symbolic, which
    torch.export's `.pt2` of these models does not keep.
    """

    name = "text-classification"

    def flip(self) -> Flip | None:
        return None  # text has no left and right to mirror

    def publish(self, model: nn.Module, config: TrainConfig, metrics: dict[str, Any],
                example: torch.Tensor) -> Published:
        import torch

        from surge.train.publish import (
            Published,
            serving_config,
            target,
            verify,
            write_config_once,
            write_metrics,
        )
        from surge.zoo.minilm import export_sequence_onnx
        from surge_examples.text.pipelines import HANG_MIN_MS, classifier_pipeline, write_entry

        repo, name, model_dir, version = target(config)
        model = model.eval().cpu()
        input_name, output_name = config.model.input_name, config.model.output_name
        path = export_sequence_onnx(model, (example,), model_dir / str(version) / "model.onnx",
                                    [input_name], [output_name])
        model_config = serving_config(config, name, hang_min_ms=HANG_MIN_MS)
        model_config.parameters["dataset"] = config.data.dataset
        write_config_once(model_dir, model_config)
        write_metrics(model_dir, metrics, version)
        write_entry(repo, classifier_pipeline(f"{name}-text", name, int(example.shape[1])),
                    replace=False)
        # Checked at the traced length and at a shorter one: the sequence dim is really symbolic.
        for length in (example.shape[1], max(2, example.shape[1] // 4)):
            tokens = example[:, :length].contiguous()
            with torch.inference_mode():
                expected = model(tokens).numpy()
            verify(repo, name, version, input_name, tokens.numpy(), expected)
        return Published(repo, name, version, (path,))
