"""Train the default `fashion` model on Fashion-MNIST and write it into a model repository.

    python recipes/train_fashion.py --out examples/repository --epochs 6

Reads top to bottom: setup -> train -> validate -> export.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from surge.data.fashion_mnist import load_fashion_mnist, to_model_input
from surge.export import export_onnx
from surge.zoo.fashion import fashion_cnn


def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    model.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(images), 1000):
            x = torch.from_numpy(to_model_input(images[start:start + 1000]))
            correct += int((model(x).argmax(1).numpy() == labels[start:start + 1000]).sum())
    return correct / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("examples/repository"))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    # setup
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    train_x, train_y = load_fashion_mnist("train")
    test_x, test_y = load_fashion_mnist("test")
    model = fashion_cnn()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps = args.epochs * (len(train_x) // args.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)

    # train
    for epoch in range(args.epochs):
        model.train()
        order = rng.permutation(len(train_x))
        started = time.perf_counter()
        for start in range(0, len(order) - args.batch_size + 1, args.batch_size):
            idx = order[start:start + args.batch_size]
            x = torch.from_numpy(to_model_input(train_x[idx]))
            if rng.random() < 0.5:  # horizontal flip: clothing is left/right symmetric
                x = torch.flip(x, dims=[3])
            loss = loss_fn(model(x), torch.from_numpy(train_y[idx]))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        # validate
        acc = accuracy(model, test_x, test_y)
        print(f"epoch {epoch + 1}: loss {loss.item():.4f} test accuracy {acc:.4f} "
              f"({time.perf_counter() - started:.0f}s)", flush=True)

    # export
    model.eval()
    version_dir = args.out / "fashion" / "1"
    export_onnx(model, (torch.zeros(1, 1, 28, 28),), version_dir / "model.onnx",
                ["image"], ["logits"])
    torch_dir = args.out / "fashion-torch" / "1"
    torch_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(torch_dir / "model.safetensors"))
    (args.out / "fashion" / "metrics.json").write_text(
        json.dumps({"test_accuracy": acc, "epochs": args.epochs, "seed": args.seed}, indent=2) + "\n"
    )
    print(f"wrote {version_dir / 'model.onnx'} and {torch_dir / 'model.safetensors'}")


if __name__ == "__main__":
    main()
