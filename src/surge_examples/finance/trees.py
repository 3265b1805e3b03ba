"""A gradient-boosted tree model (LightGBM) for the credit data, converted to ONNX so Surge
serves it beside the neural model: the same column inputs, the same `probability` output.

    python -m surge_examples.finance.trees REPO [--name credit-gbm]
"""

from __future__ import annotations

import argparse
import json
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from surge.repository.config import CONFIG_FILE, ModelConfig, write_config
from surge.tasks import DataOptions
from surge.tasks.tabular import Column, binary_report, pack
from surge_examples.finance.data import HmdaCredit

OUTPUT = "probability"
BATCH = "batch"
OPSET = 15


@dataclass(frozen=True)
class TreeParams:
    trees: int = 300
    learning_rate: float = 0.03
    leaves: int = 15
    min_child_samples: int = 20
    seed: int = 0


def train_lightgbm(features: np.ndarray, labels: np.ndarray, params: TreeParams) -> Any:
    import lightgbm

    model = lightgbm.LGBMClassifier(
        n_estimators=params.trees, learning_rate=params.learning_rate, num_leaves=params.leaves,
        min_child_samples=params.min_child_samples, random_state=params.seed, verbose=-1,
        deterministic=True, n_jobs=1)
    model.fit(features, labels)
    return model


def tree_onnx(model: Any, features: int) -> onnx.ModelProto:
    """The converter's graph: `features` FP32 [N, features] -> label, probabilities [N, 2]."""
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return onnxmltools.convert_lightgbm(
            model, initial_types=[("features", FloatTensorType([None, features]))],
            zipmap=False, target_opset=OPSET)


def with_columns(graph_model: onnx.ModelProto, columns: Sequence[Column]) -> onnx.ModelProto:
    """Put one FP32 [N] input per column in front of the tree graph and make its only output
    `probability` FP32 [N, 1] (P(positive)), as the neural model answers."""
    graph = graph_model.graph
    probabilities = next(o.name for o in graph.output if "prob" in o.name)
    axes = helper.make_tensor("unsqueeze_axes", TensorProto.INT64, [1], [1])
    front = [helper.make_node("Unsqueeze", [c.name, "unsqueeze_axes"], [f"{c.name}_2d"])
             for c in columns]
    front.append(helper.make_node("Concat", [f"{c.name}_2d" for c in columns], ["features"],
                                  axis=1))
    back = [helper.make_node("Slice", [probabilities, "slice_start", "slice_end", "slice_axes"],
                             [OUTPUT])]
    constants = [axes, *(helper.make_tensor(n, TensorProto.INT64, [1], [v]) for n, v in
                         (("slice_start", 1), ("slice_end", 2), ("slice_axes", 1)))]
    nodes = [*front, *graph.node, *back]
    inputs = [helper.make_tensor_value_info(c.name, TensorProto.FLOAT, [BATCH]) for c in columns]
    output = helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [BATCH, 1])
    new_graph = helper.make_graph(nodes, "credit_gbm", inputs, [output],
                                  [*graph.initializer, *constants])
    # The converter imports the default domain at the lowest version its own nodes need;
    # Unsqueeze and Slice with tensor arguments need 13 or later.
    opsets = [helper.make_opsetid(o.domain, OPSET if o.domain in ("", "ai.onnx") else o.version)
              for o in graph_model.opset_import]
    if not any(o.domain in ("", "ai.onnx") for o in opsets):
        opsets.append(helper.make_opsetid("", OPSET))
    made = helper.make_model(new_graph, opset_imports=opsets,
                             producer_name="surge_examples.finance")
    made.ir_version = graph_model.ir_version
    onnx.checker.check_model(made)
    return made


@dataclass(frozen=True)
class TreeExport:
    path: Path
    val_auc: float
    metrics: dict[str, float]


def export_trees(repo: Path, name: str = "credit-gbm", params: TreeParams | None = None,
                 options: DataOptions | None = None) -> TreeExport:
    """Train on the credit split, write `repo/name/1/model.onnx`, its config and metrics."""
    dataset = HmdaCredit()
    columns, labels, train, test = dataset.arrays(options or DataOptions())
    packed = pack(dataset.columns, columns)
    model = train_lightgbm(packed[train], labels[train], params or TreeParams())
    probabilities = model.predict_proba(packed[test])[:, 1]
    report = binary_report(labels[test], probabilities)
    graph = with_columns(tree_onnx(model, packed.shape[1]), dataset.columns)
    model_dir = Path(repo) / name
    path = model_dir / "1" / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(graph, str(path))
    if not (model_dir / CONFIG_FILE).exists():
        write_config(model_dir / CONFIG_FILE, ModelConfig(
            name=name, max_batch_size=256,
            parameters={"task": "tabular-classification", "dataset": dataset.name}))
    metrics = {"val_auc": report.auc, "val_f1": report.f1, "val_calibration": report.calibration}
    (model_dir / "metrics.json").write_text(json.dumps({**metrics, "version": 1,
                                                        "params": asdict(params or TreeParams())},
                                                       indent=2) + "\n")
    return TreeExport(path, report.auc, metrics)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", type=Path)
    parser.add_argument("--name", default="credit-gbm")
    args = parser.parse_args(argv)
    export = export_trees(args.repo, args.name)
    print(f"{export.path}: test AUC {export.val_auc:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
