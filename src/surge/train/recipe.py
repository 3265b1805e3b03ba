"""The training recipe. Reads top to bottom: setup -> train -> validate -> checkpoint -> export.

Run it in one process (`run(config)`), or under torchrun (`surge train --nproc N`), where
each process finds its rank in the environment.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from surge.errors import ConfigError, SurgeError
from surge.tasks import Task, TrainMetric, get_task
from surge.train import checkpoint as ckpt
from surge.train.config import TrainConfig
from surge.train.data import (
    check_model_fits,
    check_validation,
    eval_shard,
    export_example,
    load_dataset,
    steps_per_epoch,
    train_batches,
)
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
    PipelinePlan,
    build_model,
    data_parallel_plan,
    pipeline_plan,
    trains_channels_last,
)
from surge.train.precision import Precision, make_precision
from surge.train.publish import Published, check_target
from surge.train.runlog import RunLog


class DivergedError(SurgeError):
    """The loss or the weights became NaN or infinite: the run stops before it checkpoints or
    exports them."""


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
        self.task: Task = get_task(config.task)
        self.metric: TrainMetric = self.task.trained_metric()

    # -- setup ---------------------------------------------------------------------------------
    def setup(self, resume: bool) -> None:
        config, state = self.config, self.state
        set_threads(config.threads, state)
        self.train_split, self.test_split = load_dataset(
            config.data, config.model.input_shape, config.seed)
        self.steps = steps_per_epoch(self.train_split, config.batch_size)
        check_validation(self.test_split)
        self.task.check_targets(self.train_split, "the training split's")
        self.task.check_targets(self.test_split, "the validation split's")
        self.precision: Precision = make_precision(config.precision, state.device)
        model = build_model(config.model, config.seed)
        check_model_fits(model, config, self.train_split, self.test_split)
        self.loss_fn = self.task.loss(model, config.label_smoothing)
        self.plan: DataParallelPlan | PipelinePlan = (
            pipeline_plan(model, config.pipeline, config.model.input_shape, config.batch_size,
                          state, self.loss_fn, self.precision, self.train_split.inputs.dtype)
            if self.pipelined else
            data_parallel_plan(model, config.parallelism, state, self.loss_fn, self.precision,
                               config.model.channels_last)
        )
        self.optimizer = make_optimizer(self.plan.module, config)
        self.scheduler = make_schedule(self.optimizer, config, self.steps * config.epochs)
        self.trainer = ckpt.TrainerState(
            world_size=state.world_size, parallelism=config.parallelism,
            model={"builder": config.model.builder, "kwargs": config.model.kwargs},
            optimizer=config.optimizer.name)
        self.checkpoint_dir = Path(config.checkpoint.dir)
        self._eval_model: nn.Module | None = None
        self.resumed_from = self.restore() if resume else self.start_over()
        self.log = RunLog(Path(config.log_dir), state.is_main, self.trainer.history,
                          (self.metric.record, self.metric.label))

    def restore(self) -> int:
        """Load the newest complete checkpoint; return the epochs it had done (0: none, only
        after an elastic restart)."""
        path = ckpt.latest_checkpoint(self.checkpoint_dir)
        if path is None:
            if self.state.restart_count == 0:
                # Asked to resume, not an elastic restart before the first checkpoint: a
                # mistyped checkpoint.dir must not retrain from scratch unnoticed.
                raise ConfigError(f"resume: no checkpoint in {self.checkpoint_dir} (no "
                                  f"{ckpt.LATEST} there)")
            return 0
        saved = ckpt.load_checkpoint(path, self.config, self.state)
        expected = self.eval_model().state_dict()
        ckpt.check_weights_fit(path, saved.weights, expected, self.config.model,
                               saved.trainer.model)
        ckpt.check_best(path, saved.trainer, expected)
        ckpt.load_model_state(self.plan.module, saved.weights, self.config.parallelism)
        ckpt.restore_optimizer(saved.bundle, self.plan.module, self.optimizer, self.scheduler,
                               saved.trainer.step, self.precision.scaler, self.config.parallelism)
        ckpt.restore_best(path, self.state)
        self.trainer = saved.trainer
        self.trainer.world_size = self.state.world_size
        return saved.trainer.epoch

    def start_over(self) -> int:
        """A new run: forget an earlier run's `latest.json` in checkpoint.dir, which an elastic
        restart of this run (--max-restarts) would otherwise resume from."""
        if self.state.is_main:
            (self.checkpoint_dir / ckpt.LATEST).unlink(missing_ok=True)
        return 0

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
            self.check_finite_weights(weights, epoch)
            val_loss, val_accuracy = self.validate(weights)
            self.record(epoch + 1, train_loss, val_loss, val_accuracy, samples_per_s, seconds)
            if self.improves(val_accuracy):
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
                                replicas, rank, self.task.flip() if config.data.flip else None)
        self.plan.module.train()
        loss_sum, loss_count = 0.0, 0.0
        started = time.perf_counter()
        with self.log.progress() as progress:
            task = progress.add_task(f"epoch {epoch + 1}/{config.epochs}", total=self.steps,
                                     status="")
            for index, (inputs, labels) in enumerate(batches):
                loss = self.plan.step(inputs.to(state.device), labels.to(state.device))
                self.check_finite_loss(loss, epoch, index)
                self.optimizer_step()
                if loss is not None and math.isfinite(loss):
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

    def check_finite_loss(self, loss: float | None, epoch: int, index: int) -> None:
        """Stop at the first NaN or infinite loss, before its optimizer step. With fp16 the
        GradScaler skips such steps itself (and lowers its scale), so training goes on."""
        if loss is None or math.isfinite(loss) or self.precision.scaler.is_enabled():
            return
        raise DivergedError(
            f"epoch {epoch + 1}, step {index + 1}/{self.steps} (step {self.trainer.step + 1} of "
            f"the run): the training loss is {loss}; {self.diverged_advice()}")

    def check_finite_weights(self, weights: dict[str, torch.Tensor], epoch: int) -> None:
        bad = next((k for k, v in weights.items()
                    if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
        if bad is not None:
            raise DivergedError(f"epoch {epoch + 1}: weight {bad} holds NaN or infinite "
                                   f"values; {self.diverged_advice()}")

    def diverged_advice(self) -> str:
        latest = ckpt.latest_checkpoint(self.checkpoint_dir)
        kept = f"the last checkpoint is {latest}" if latest else "no checkpoint was written"
        return (f"training stopped without checkpointing or exporting this epoch ({kept}); "
                f"lower optimizer.lr ({self.config.optimizer.lr:g}) or look for NaN or "
                "infinite values in the data")

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
        """fp32 loss and metric of the full model: each rank scores a shard of the validation
        split, or rank 0 the whole split for a metric that is not a mean over samples (mAP).

        A fresh unwrapped copy scores them: pipeline stages are traced graphs and FSDP shards are
        partial, and the exported model is exactly this fp32 module.
        """
        model = self.eval_model()
        model.load_state_dict(weights)
        device, split = self.state.device, self.test_split
        shard = eval_shard(split, self.state.world_size, self.state.rank)
        loss_sum = self.task.validation_loss_sum(model, shard, self.loss_fn, device)
        if self.metric.per_sample:
            weighted = self.task.validation_metric(model, shard, device) * len(shard)
        else:
            weighted = (self.task.validation_metric(model, split, device) * len(split)
                        if self.state.is_main else 0.0)
        loss_sum, weighted, count = all_reduce_sum([loss_sum, weighted, len(shard)], self.state)
        return loss_sum / count, weighted / count

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
        return self.metric.record

    def improves(self, value: float) -> bool:
        if self.trainer.best_epoch == 0:
            return True
        best = self.trainer.best_metric
        return value > best if self.metric.higher_is_better else value < best

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
        best = self.checkpoint_dir / ckpt.BEST
        try:
            check_target(config)  # checked before training too; the version may be new since
        except ConfigError as exc:
            raise ConfigError(f"{exc}; the trained weights are kept in {best}") from None
        model = build_model(config.model, config.seed)
        model.load_state_dict(ckpt.read_weights(best, self.checkpoint_dir))
        metrics = {
            self.metric.published: self.trainer.best_metric, "epochs": config.epochs,
            "best_epoch": self.trainer.best_epoch, "seed": config.seed,
            "precision": config.precision, "parallelism": config.parallelism,
            "world_size": self.state.world_size,
            "train_seconds": sum(h["epoch_s"] for h in self.trainer.history),
        }
        try:
            published = self.task.publish(model, config, metrics,
                                          export_example(self.test_split))
        except OSError as exc:  # a repository that went read-only, or a full disk
            raise ConfigError(
                f"cannot export into export.repo {config.export.repo} ({exc.strerror or exc}); "
                f"the trained weights are kept in {best}: free or fix it, then run again with "
                "--resume (it exports without training again)") from None
        self.log.say(
            f"exported {published.name} version {published.version} ({self.metric.label} "
            f"{self.trainer.best_metric:.4f}, epoch {self.trainer.best_epoch}) to {published.repo}"
        )
        return published


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

