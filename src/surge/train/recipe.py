"""The training recipe. Reads top to bottom: setup -> train -> validate -> checkpoint -> export.

Run it in one process (`run(config)`), or under torchrun (`surge train --nproc N`), where
each process finds its rank in the environment.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from surge.train import checkpoint as ckpt
from surge.train.config import TrainConfig
from surge.train.data import Split, eval_shard, load_dataset, steps_per_epoch, train_batches
from surge.train.distributed import (
    DistState,
    all_reduce_sum,
    barrier,
    init_distributed,
    set_threads,
    shutdown,
)
from surge.train.parallel import (
    DataParallelPlan,
    LossFn,
    PipelinePlan,
    build_model,
    data_parallel_plan,
    pipeline_plan,
    trains_channels_last,
)
from surge.train.precision import Precision, make_precision
from surge.train.publish import Published, publish, publish_detector
from surge.train.runlog import RunLog

EVAL_BATCH = 1000


@dataclass(frozen=True)
class TrainResult:
    """What a finished run reports (on every rank; `published` only on rank 0)."""

    epochs: int
    best_accuracy: float
    best_epoch: int
    history: list[dict[str, Any]]
    resumed_from: int
    published: Published | None


def run(config: TrainConfig, resume: bool = False) -> TrainResult:
    """Train in this process; join the process group first when torchrun started us."""
    state = init_distributed(config.device)
    try:
        # An elastic restart (torchrun --max-restarts) always continues from the last checkpoint.
        return Recipe(config, state).run(resume or state.restart_count > 0)
    finally:
        shutdown()


class Recipe:
    """One training run on one rank."""

    def __init__(self, config: TrainConfig, state: DistState) -> None:
        self.config = config
        self.state = state
        self.pipelined = config.parallelism == "pipeline"

    # -- setup ---------------------------------------------------------------------------------
    def setup(self, resume: bool) -> None:
        config, state = self.config, self.state
        set_threads(config.threads, state)
        self.train_split, self.test_split = load_dataset(
            config.data, config.model.input_shape, config.seed)
        self.steps = steps_per_epoch(self.train_split, config.batch_size)
        self.loss_fn = make_loss(config)
        self.precision: Precision = make_precision(config.precision, state.device)
        model = build_model(config.model, config.seed)
        self.plan: DataParallelPlan | PipelinePlan = (
            pipeline_plan(model, config.pipeline, config.model.input_shape, config.batch_size,
                          state, self.loss_fn, self.precision, self.train_split.inputs.dtype)
            if self.pipelined else
            data_parallel_plan(model, config.parallelism, state, self.loss_fn, self.precision,
                               config.model.channels_last)
        )
        self.optimizer = make_optimizer(self.plan.module, config)
        self.scheduler = make_schedule(self.optimizer, config, self.steps * config.epochs)
        self.trainer = ckpt.TrainerState(world_size=state.world_size,
                                         parallelism=config.parallelism)
        self.checkpoint_dir = Path(config.checkpoint.dir)
        self.resumed_from = self.restore() if resume else 0
        self.log = RunLog(Path(config.log_dir), state.is_main, self.trainer.history)
        self._eval_model: nn.Module | None = None

    def restore(self) -> int:
        """Load the newest complete checkpoint; return the epochs it had done (0: none)."""
        path = ckpt.latest_checkpoint(self.checkpoint_dir)
        if path is None:
            return 0
        saved = ckpt.load_checkpoint(path, self.config.parallelism, self.state)
        ckpt.load_model_state(self.plan.module, saved.weights, self.config.parallelism)
        ckpt.restore_optimizer(saved.bundle, self.plan.module, self.optimizer, self.scheduler,
                               saved.trainer.step, self.precision.scaler, self.config.parallelism)
        self.trainer = saved.trainer
        self.trainer.world_size = self.state.world_size
        return saved.trainer.epoch

    # -- the run -------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> TrainResult:
        self.setup(resume)
        config = self.config
        if self.resumed_from:
            self.log.say(f"resumed from {self.checkpoint_dir} at epoch {self.resumed_from}")
        layout = (", channels-last"
                  if trains_channels_last(config.model.channels_last, config.parallelism)
                  else "")
        self.log.say(
            f"training {config.model.builder}: {config.parallelism} on {self.state.world_size} "
            f"process(es), {config.precision}{layout}, {self.steps} steps/epoch of "
            f"{config.batch_size}"
        )
        for epoch in range(self.resumed_from, config.epochs):
            train_loss, samples_per_s, seconds = self.train_epoch(epoch)
            weights = self.full_weights()
            val_loss, val_accuracy = self.validate(weights)
            self.record(epoch + 1, train_loss, val_loss, val_accuracy, samples_per_s, seconds)
            if val_accuracy > self.trainer.best_metric:
                self.keep_best(weights, val_accuracy, epoch + 1)
            if (epoch + 1) % config.checkpoint.interval == 0 or epoch + 1 == config.epochs:
                self.save(weights)
        published = self.export()
        barrier(self.state)
        return TrainResult(config.epochs, self.trainer.best_metric, self.trainer.best_epoch,
                           self.trainer.history, self.resumed_from, published)

    # -- train ---------------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> tuple[float, float, float]:
        """One pass over the training set; returns (mean loss, samples/s, seconds)."""
        state, config = self.state, self.config
        replicas, rank = (state.world_size, state.rank) if self._data_parallel else (1, 0)
        batches = train_batches(self.train_split, config.batch_size, epoch, config.seed,
                                replicas, rank, config.data.flip)
        self.plan.module.train()
        loss_sum, loss_count = 0.0, 0.0
        started = time.perf_counter()
        with self.log.progress() as progress:
            task = progress.add_task(f"epoch {epoch + 1}/{config.epochs}", total=self.steps,
                                     status="")
            for inputs, labels in batches:
                loss = self.plan.step(inputs.to(state.device), labels.to(state.device))
                self.optimizer_step()
                if loss is not None:
                    loss_sum, loss_count = loss_sum + loss, loss_count + 1
                status = f"loss {loss:.4f}" if loss is not None else ""
                progress.update(task, advance=1, status=status)
        seconds = time.perf_counter() - started
        loss_sum, loss_count = all_reduce_sum([loss_sum, loss_count], state)
        samples_per_s = self.steps * config.batch_size / seconds
        return loss_sum / max(loss_count, 1), samples_per_s, seconds

    @property
    def _data_parallel(self) -> bool:
        return self.config.parallelism in ("ddp", "fsdp")

    def optimizer_step(self) -> None:
        # With fp16 the scaler skips steps whose gradients overflowed; otherwise a plain step.
        self.precision.scaler.step(self.optimizer)
        self.precision.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.trainer.step += 1

    def full_weights(self) -> dict[str, torch.Tensor]:
        weights = ckpt.full_model_state(self.plan.module, self.config.parallelism, self.state)
        if self.pipelined:
            # Tracing turns non-persistent buffers (e.g. input normalization constants) into
            # stage state; the model's own state dict does not hold them.
            keep = self.eval_model().state_dict().keys()
            weights = {k: v for k, v in weights.items() if k in keep}
        return weights

    # -- validate ------------------------------------------------------------------------------
    def validate(self, weights: dict[str, torch.Tensor]) -> tuple[float, float]:
        """fp32 loss and metric of the full model, each rank scoring a shard of the test set.

        The metric is accuracy, or for detection COCO mAP@0.5 on the whole validation split
        (scored on rank 0). A fresh unwrapped copy scores them: pipeline stages are traced graphs
        and FSDP shards are partial, and the exported model is exactly this fp32 module.
        """
        model = self.eval_model()
        model.load_state_dict(weights)
        shard = eval_shard(self.test_split, self.state.world_size, self.state.rank)
        if self.config.task == "detection":
            loss_sum = _detection_loss_sum(model, shard, self.loss_fn, self.state.device)
            map50 = _map50(model, self.test_split) if self.state.is_main else 0.0
            loss_sum, map50, count = all_reduce_sum([loss_sum, map50, len(shard)], self.state)
            return loss_sum / count, map50
        loss_sum, correct = _score(model, shard, self.state.device)
        loss_sum, correct, count = all_reduce_sum([loss_sum, correct, len(shard)], self.state)
        return loss_sum / count, correct / count

    def eval_model(self) -> nn.Module:
        if self._eval_model is None:
            self._eval_model = build_model(self.config.model, self.config.seed).to(
                self.state.device)
        return self._eval_model.eval()

    # -- checkpoint ----------------------------------------------------------------------------
    def record(self, epoch: int, train_loss: float, val_loss: float, val_accuracy: float,
               samples_per_s: float, seconds: float) -> None:
        record = {
            "epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
            self.metric_key: val_accuracy, "samples_per_s": samples_per_s, "epoch_s": seconds,
            "lr": self.optimizer.param_groups[0]["lr"], "world_size": self.state.world_size,
            "parallelism": self.config.parallelism, "precision": self.config.precision,
            "attempt": self.state.restart_count, "resumed_from": self.resumed_from,
        }
        self.trainer.history.append(record)
        self.trainer.epoch = epoch
        self.log.epoch(record, self.trainer.history)

    @property
    def metric_key(self) -> str:
        return "val_map50" if self.config.task == "detection" else "val_accuracy"

    def keep_best(self, weights: dict[str, torch.Tensor], accuracy: float, epoch: int) -> None:
        self.trainer.best_metric, self.trainer.best_epoch = accuracy, epoch
        if self.state.is_main:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            ckpt.save_weights(weights, self.checkpoint_dir / ckpt.BEST)

    def save(self, weights: dict[str, torch.Tensor]) -> None:
        bundle = ckpt.optimizer_bundle(self.plan.module, self.optimizer, self.scheduler,
                                       self.precision.scaler, self.config.parallelism)
        path = ckpt.save_checkpoint(self.checkpoint_dir, self.trainer, weights, bundle, self.state)
        self.log.say(f"checkpoint {path}")

    # -- export --------------------------------------------------------------------------------
    def export(self) -> Published | None:
        """Rank 0 exports the best epoch's weights into the model repository."""
        config = self.config
        if config.export.repo is None or not self.state.is_main:
            return None
        from safetensors.torch import load_file

        model = build_model(config.model, config.seed)
        model.load_state_dict(load_file(str(self.checkpoint_dir / ckpt.BEST)))
        detection = config.task == "detection"
        metric = "val_map50" if detection else "test_accuracy"
        metrics = {
            metric: self.trainer.best_metric, "epochs": config.epochs,
            "best_epoch": self.trainer.best_epoch, "seed": config.seed,
            "precision": config.precision, "parallelism": config.parallelism,
            "world_size": self.state.world_size,
            "train_seconds": sum(h["epoch_s"] for h in self.trainer.history),
        }
        published = (publish_detector(model, config, metrics) if detection
                     else publish(model, config, metrics))
        self.log.say(
            f"exported {published.name} version {published.version} "
            f"({'mAP@0.5' if detection else 'accuracy'} "
            f"{self.trainer.best_metric:.4f}, epoch {self.trainer.best_epoch}) to {published.repo}"
        )
        return published


def _score(model: nn.Module, split: Split, device: torch.device) -> tuple[float, float]:
    loss_sum, correct = 0.0, 0.0
    with torch.inference_mode():
        for start in range(0, len(split), EVAL_BATCH):
            inputs = split.inputs[start:start + EVAL_BATCH].to(device)
            labels = split.labels[start:start + EVAL_BATCH].to(device)
            logits = model(inputs).float()
            loss_sum += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
            correct += float((logits.argmax(dim=1) == labels).sum())
    return loss_sum, correct


def _detection_loss_sum(model: nn.Module, split: Split, loss_fn: LossFn,
                        device: torch.device) -> float:
    """Sum over the canvases of the per-batch mean detection loss, weighted by batch size."""
    loss_sum = 0.0
    with torch.inference_mode():
        for start in range(0, len(split), EVAL_BATCH):
            inputs = split.inputs[start:start + EVAL_BATCH].to(device)
            targets = split.labels[start:start + EVAL_BATCH].to(device)
            loss_sum += float(loss_fn(model(inputs).float(), targets)) * len(inputs)
    return loss_sum


def _map50(net: nn.Module, split: Split) -> float:
    """COCO mAP@0.5 of the decoded detections on the whole validation split."""
    from surge.detection.coco import detections_to_coco
    from surge.detection.model import CenterNet, Detector
    from surge.detection.training import unpack_targets
    from surge.evaluate.metrics import coco_map

    assert isinstance(net, CenterNet)
    detector = Detector(net).eval()
    device = next(net.parameters()).device
    parts: list[list[torch.Tensor]] = []
    with torch.inference_mode():
        for start in range(0, len(split), EVAL_BATCH):
            outputs = detector(split.inputs[start:start + EVAL_BATCH].to(device))
            parts.append([t.cpu() for t in outputs])
    boxes, scores, labels = (torch.cat(p).numpy() for p in zip(*parts, strict=True))
    gt_boxes, gt_labels = unpack_targets(split.labels)
    return coco_map(_coco_truth(split.inputs.shape, gt_boxes, gt_labels),
                    detections_to_coco(boxes, scores, labels)).map50


def _coco_truth(shape: torch.Size, boxes: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """COCO ground truth of padded boxes [N, M, 4] and labels [N, M] (-1 = padding)."""
    from surge.data.fashion_mnist import FASHION_CLASSES
    from surge.detection.coco import categories

    n, height, width = shape
    images = [{"id": i + 1, "width": width, "height": height} for i in range(n)]
    annotations: list[dict[str, Any]] = []
    for image, slot in zip(*torch.nonzero(labels >= 0, as_tuple=True), strict=True):
        x1, y1, x2, y2 = (float(v) for v in boxes[image, slot])
        annotations.append({
            "id": len(annotations) + 1, "image_id": int(image) + 1,
            "category_id": int(labels[image, slot]) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
            "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
        })
    return {"images": images, "annotations": annotations,
            "categories": categories(FASHION_CLASSES)}


def make_loss(config: TrainConfig) -> LossFn:
    """Cross-entropy with label smoothing, or CenterNet's loss for detection."""
    if config.task == "detection":
        from surge.detection.training import CenterNetLoss

        return CenterNetLoss(int(config.model.kwargs.get("classes", 10)))
    return nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)


def make_optimizer(module: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    options = config.optimizer
    if options.name == "sgd":
        return torch.optim.SGD(module.parameters(), lr=options.lr, momentum=options.momentum,
                               weight_decay=options.weight_decay)
    return torch.optim.AdamW(module.parameters(), lr=options.lr,
                             weight_decay=options.weight_decay)


def make_schedule(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int) -> Any:
    schedule = config.schedule
    if schedule.name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.optimizer.lr, total_steps=total_steps,
            pct_start=schedule.warmup_fraction)
    if schedule.name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)

