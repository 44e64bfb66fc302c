"""Train the bundled zoo on Fashion-MNIST, deterministically, on CPU.

    python scripts/train_zoo.py [NAME ...]

Reads the Debian package dataset-fashion-mnist (MIT), trains each zoo model for its fixed
number of epochs with a fixed seed, evaluates on the 10k test set and writes
edgeq/models/zoo/NAME.pt (state_dict) and NAME.json (training record).
"""
from __future__ import annotations

import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from edgeq.models.zoo import FASHION_MEAN, FASHION_STD, ZOO, ZooEntry  # noqa: E402
from edgeq.preprocess import preprocess_uint8  # noqa: E402
from pack_fashion_mnist import load_raw  # noqa: E402

SEED = 0


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and a shift of up to 2 pixels (pad + crop)."""
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    pad = F.pad(x, (2, 2, 2, 2), mode="replicate")
    dx, dy = torch.randint(0, 5, (2,), generator=gen).tolist()
    return pad[..., dy: dy + x.shape[-2], dx: dx + x.shape[-1]]


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), 500):
            correct += (model(x[i: i + 500]).argmax(1) == y[i: i + 500]).sum().item()
    return correct / len(x)


def train(entry: ZooEntry) -> dict:
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(2)
    prep = lambda imgs: torch.from_numpy(preprocess_uint8(  # noqa: E731
        imgs, entry.input_size, entry.in_chans, FASHION_MEAN, FASHION_STD))
    train_x, train_y = load_raw("train")
    test_x, test_y = load_raw("test")
    xtr, ytr = prep(train_x), torch.from_numpy(train_y.astype(np.int64))
    xte, yte = prep(test_x), torch.from_numpy(test_y.astype(np.int64))

    model = timm.create_model(entry.timm_name, **entry.create_kwargs())
    opt = torch.optim.AdamW(model.parameters(), lr=entry.lr, weight_decay=0.05)
    steps_per_epoch = len(xtr) // entry.batch_size
    total = steps_per_epoch * entry.epochs
    warmup = steps_per_epoch // 2
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup)
                                              * 0.5 * (1 + math.cos(math.pi * s / total)))
    gen = torch.Generator().manual_seed(SEED)
    start = time.time()
    for epoch in range(entry.epochs):
        model.train()
        order = torch.randperm(len(xtr), generator=gen)
        running = 0.0
        for step in range(steps_per_epoch):
            idx = order[step * entry.batch_size: (step + 1) * entry.batch_size]
            loss = F.cross_entropy(model(augment(xtr[idx], gen)), ytr[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += loss.item()
        print(f"{entry.name} epoch {epoch + 1}/{entry.epochs} loss {running / steps_per_epoch:.4f} "
              f"({time.time() - start:.0f}s)", flush=True)
    train_seconds = time.time() - start
    top1 = evaluate(model, xte, yte)
    print(f"{entry.name}: test top-1 {top1:.4f} in {train_seconds:.0f}s", flush=True)
    torch.save(model.state_dict(), entry.checkpoint)
    record = {
        "model": entry.name, "timm_name": entry.timm_name, "input_size": entry.input_size,
        "in_chans": entry.in_chans, "epochs": entry.epochs, "lr": entry.lr,
        "batch_size": entry.batch_size, "seed": SEED, "test_top1_torch": round(top1, 4),
        "train_seconds": round(train_seconds, 1), "torch": torch.__version__,
        "timm": timm.__version__, "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "dataset": "Fashion-MNIST (Debian dataset-fashion-mnist, MIT)",
    }
    entry.card.write_text(json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    names = sys.argv[1:] or list(ZOO)
    for name in names:
        train(ZOO[name])
