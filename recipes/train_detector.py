"""Train the `detector` (CenterNet-style) on Fashion-MNIST canvases and write it into a repository.

    surge data fashion-detection data/fashion-detection
    python recipes/train_detector.py --data data/fashion-detection --out examples/repository

Reads top to bottom: setup -> train -> validate (score threshold chosen on validation) -> export.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_file

from surge.data.fashion_mnist import FASHION_CLASSES
from surge.detection.coco import detections_to_coco, load_split, to_coco
from surge.detection.export import export_detector
from surge.detection.model import CenterNet, Detector, centernet
from surge.detection.training import CenterNetLoss, hflip, load_tensors
from surge.evaluate.metrics import best_f1_threshold, coco_map


def predict(model: Detector, images: np.ndarray, batch: int = 250) -> tuple[np.ndarray, ...]:
    model.eval()
    parts = []
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            parts.append([t.numpy() for t in model(torch.from_numpy(images[start:start + batch]))])
    return tuple(np.concatenate(p) for p in zip(*parts, strict=True))


def validate(net: CenterNet, val_dir: Path, limit: int | None) -> dict[str, float]:
    """mAP on the validation canvases and the score threshold that maximises F1 there."""
    split = load_split(val_dir)
    gt = to_coco(split)
    if limit:
        gt["images"] = gt["images"][:limit]
        gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] <= limit]
    detections = detections_to_coco(*predict(Detector(net), split.images[:limit]))
    report = coco_map(gt, detections)
    best = best_f1_threshold(gt, detections, thresholds=np.arange(0.05, 0.95, 0.025).tolist())
    net.train()
    return {"map50": report.map50, "map": report.map, "f1": best.f1,
            "score_threshold": round(best.score_threshold, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("data/fashion-detection"))
    parser.add_argument("--out", type=Path, default=Path("examples/repository"))
    parser.add_argument("--name", default="detector")
    parser.add_argument("--width", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init", type=Path, default=None,
                        help="start from these Detector weights (.safetensors) instead of scratch")
    args = parser.parse_args()

    # setup
    torch.manual_seed(args.seed)
    # One thread per process: on a shared 2-core machine, oversubscribed OpenMP threads
    # spin against each other (measured 8x slower than one thread under load).
    torch.set_num_threads(args.threads)
    images, targets = load_tensors(args.data / "train")
    net = centernet(width=args.width)
    if args.init is not None:
        Detector(net).load_state_dict(load_file(str(args.init)))
    loss_fn = CenterNetLoss(len(FASHION_CLASSES))
    optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    steps_per_epoch = len(images) // args.batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch, pct_start=0.15)
    generator = torch.Generator().manual_seed(args.seed)
    history = []

    # train
    started = time.perf_counter()
    for epoch in range(args.epochs):
        net.train()
        order = torch.randperm(len(images), generator=generator)
        epoch_started, losses = time.perf_counter(), []
        for step in range(steps_per_epoch):
            index = order[step * args.batch_size:(step + 1) * args.batch_size]
            flip = torch.rand(len(index), generator=generator) < 0.5
            x, y = hflip(images[index], targets[index], flip)
            loss = loss_fn(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
            if step % 100 == 0:
                print(f"epoch {epoch + 1} step {step}/{steps_per_epoch} loss {losses[-1]:.3f}",
                      flush=True)
        seconds = time.perf_counter() - epoch_started
        record = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "epoch_s": seconds,
                  "samples_per_s": steps_per_epoch * args.batch_size / seconds,
                  **validate(net, args.data / "val", 500)}
        history.append(record)
        print(json.dumps(record), flush=True)
    train_seconds = time.perf_counter() - started

    # validate on the whole validation split: the served score threshold is chosen here
    final = validate(net, args.data / "val", None)
    print("validation", json.dumps(final), flush=True)

    # export
    model_dir = args.out / args.name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    detector = Detector(net).eval()
    export_detector(detector, model_dir / "1" / "model.onnx")
    # The same weights for PyTorch (the `<name>-torch` torch_factory twin the optimizer's
    # bf16/fp16-torch/prune variants start from).
    twin = args.out / f"{args.name}-torch"
    (twin / "1").mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in detector.state_dict().items()},
              str(twin / "1" / "model.safetensors"))
    summary = {"init": str(args.init) if args.init else None, "width": args.width,
               "epochs": args.epochs, "batch_size": args.batch_size,
               "lr": args.lr, "threads": args.threads, "seed": args.seed,
               "train_seconds": train_seconds, "history": history, "validation": final}
    (model_dir / "training.json").write_text(json.dumps(summary, indent=2))
    print(yaml.safe_dump({"exported": str(model_dir), "train_seconds": round(train_seconds)}))


if __name__ == "__main__":
    main()
