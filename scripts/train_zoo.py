#!/usr/bin/env python
"""Train a zoo model on DigitScenes and write its checkpoint (CPU, a few minutes).

    python scripts/train_zoo.py digitscenes-resnet [--epochs N] [--out PATH]

The architecture comes from ``tpunlearn.zoo.ZOO[NAME]``. Training is seeded and runs on
two CPU threads; the checkpoint (fp16 state dict plus metadata, see ``tpunlearn.zoo``) is
written atomically to ``tpunlearn/weights/NAME.pt`` unless ``--out`` says otherwise.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tpunlearn import zoo
from tpunlearn.data import DigitScenes

TRAINERS = {"digitscenes-resnet"}


def _eval(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor, channels: int, bs: int = 250):
    """Per-digit recall and precision (sigmoid > 0.5) and the mean BCE loss."""
    model.eval()
    preds, loss = [], 0.0
    with torch.no_grad():
        for i in range(0, len(images), bs):
            x = images[i : i + bs].expand(-1, channels, -1, -1)
            logits = model(x)
            loss += float(F.binary_cross_entropy_with_logits(logits, targets[i : i + bs], reduction="sum"))
            preds.append(logits > 0)
    pred = torch.cat(preds).float()
    tp = (pred * targets).sum(0)
    recall = tp / targets.sum(0).clamp_min(1)
    precision = tp / pred.sum(0).clamp_min(1)
    exact = float((pred == targets).all(1).float().mean())
    return recall, precision, loss / targets.numel(), exact


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Light augmentation of grayscale scenes ``(B, 1, H, W)``: a small random rotation,
    shear and zoom-out of the whole scene (digits stay inside), then random contrast and
    brightness."""
    B = len(x)

    def u(lo: float, hi: float) -> torch.Tensor:
        return torch.empty(B).uniform_(lo, hi, generator=gen)

    angle = u(-1, 1) * math.radians(12)
    scale = 1 / u(0.9, 1.05)
    shear = u(-0.15, 0.15)
    theta = torch.zeros(B, 2, 3)
    theta[:, 0, 0] = torch.cos(angle) * scale
    theta[:, 0, 1] = -torch.sin(angle) * scale + shear
    theta[:, 1, 0] = torch.sin(angle) * scale
    theta[:, 1, 1] = torch.cos(angle) * scale
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    floor = x.amin(dim=(2, 3), keepdim=True)
    x = F.grid_sample(x - floor, grid, align_corners=False, padding_mode="zeros") + floor
    contrast = u(0.75, 1.25).view(B, 1, 1, 1)
    brightness = u(-0.08, 0.08).view(B, 1, 1, 1)
    return (x * contrast + brightness).clamp_(0, 1)


def train_digitscenes_resnet(name: str, epochs: int, seed: int, n_train: int, lr: float, batch_size: int):
    torch.manual_seed(seed)
    e = zoo.entry(name)
    channels, size = e.input_size[0], e.input_size[1]
    t0 = time.time()
    # n_train scenes from the train scans, built in 6000-scene chunks with seeds 0, 1, ...
    chunks = [
        DigitScenes("train", size=size, n_scenes=min(6000, n_train - k), seed=k // 6000, channels=channels)
        for k in range(0, n_train, 6000)
    ]
    x_train = torch.cat([c.images for c in chunks])
    y_train = torch.cat([c.multi_hot for c in chunks])
    val = DigitScenes("val", size=size, channels=channels)
    test = DigitScenes("test", size=size, channels=channels)
    print(f"data: {len(x_train)} train / {len(val)} val / {len(test)} test scenes in {time.time() - t0:.1f}s", flush=True)

    model = zoo.build(name)
    # timm zero-initialises each block's last BN (zero_init_last); with one block per stage
    # that stalls the first epochs, so start those BNs at 1 like the others
    for m in model.modules():
        if hasattr(m, "bn2") and hasattr(m, "conv2"):
            torch.nn.init.ones_(m.bn2.weight)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: timm.create_model({e.arch!r}, **{e.kwargs}) -> {n_params:,} params", flush=True)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    steps_per_epoch = math.ceil(len(x_train) / batch_size)
    total = epochs * steps_per_epoch
    warmup = min(steps_per_epoch, total // 10)

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        return 0.5 * lr * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    gen = torch.Generator().manual_seed(seed)
    step = 0
    for epoch in range(epochs):
        model.train()
        t = time.time()
        order = torch.randperm(len(x_train), generator=gen)
        run = 0.0
        for b in range(steps_per_epoch):
            idx = order[b * batch_size : (b + 1) * batch_size]
            x = x_train[idx]
            x = _augment(x, gen).expand(-1, channels, -1, -1)
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            loss = F.binary_cross_entropy_with_logits(model(x), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            run += loss.item() * len(idx)
            step += 1
        recall, precision, vloss, exact = _eval(model, val.images, val.multi_hot, channels)
        print(
            f"epoch {epoch + 1:2d}/{epochs}  train loss {run / len(x_train):.4f}  val loss {vloss:.4f}  "
            f"val min recall {float(recall.min()):.3f}  min precision {float(precision.min()):.3f}  "
            f"exact {exact:.3f}  ({time.time() - t:.1f}s)",
            flush=True,
        )

    recall, precision, tloss, exact = _eval(model, test.images, test.multi_hot, channels)
    seconds = time.time() - t0
    print(f"\ntest ({len(test)} scenes): loss {tloss:.4f}, exact-set accuracy {exact:.3f}")
    print("digit  positives  recall  precision")
    for d in range(10):
        print(f"{d:5d}  {int(test.multi_hot[:, d].sum()):9d}  {float(recall[d]):.4f}  {float(precision[d]):.4f}")
    print(f"trained in {seconds:.0f}s")

    ckpt = {
        "format": zoo.FORMAT,
        "name": name,
        "timm_name": e.arch,
        "timm_kwargs": dict(e.kwargs),
        "state_dict": {
            k: (v.detach().half() if torch.is_floating_point(v) else v.detach()).contiguous()
            for k, v in model.state_dict().items()
        },
        "class_names": list(e.class_names),
        "input_size": list(e.input_size),
        "task": e.task,
        "train": {
            "data": "DigitScenes",
            "epochs": epochs,
            "seed": seed,
            "lr": lr,
            "batch_size": batch_size,
            "optimizer": "AdamW(weight_decay=0.05, none on norms/biases), cosine LR, 1-epoch warmup",
            "augment": "rotation +-12 deg, shear +-0.15, zoom 0.9-1.05, contrast 0.75-1.25, brightness +-0.08",
            "n_train": len(x_train),
            "n_params": n_params,
            "n_test": len(test),
            "test_recall": [round(float(v), 4) for v in recall],
            "test_precision": [round(float(v), 4) for v in precision],
            "test_exact": round(exact, 4),
            "seconds": round(seconds, 1),
            "torch": str(torch.__version__),
        },
    }
    return ckpt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name", choices=sorted(TRAINERS))
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--out", type=Path, default=None, help="checkpoint path (default tpunlearn/weights/NAME.pt)")
    p.add_argument("--n-train", type=int, default=24000, help="training scenes (default 24000)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    out = (args.out or zoo.weights_path(args.name)).resolve()
    ckpt = train_digitscenes_resnet(args.name, args.epochs, args.seed, args.n_train, args.lr, args.batch_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(ckpt, f)
        torch.load(tmp, weights_only=True)  # the checkpoint must hold plain types and tensors only
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
