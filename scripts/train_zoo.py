#!/usr/bin/env python
"""Train a zoo model on DigitScenes or GlyphScenes and write its checkpoint (CPU, minutes to an hour).

    python scripts/train_zoo.py digitscenes-resnet [--epochs N] [--out PATH]
    python scripts/train_zoo.py digitscenes-yolov5 [--epochs N] [--out PATH]
    python scripts/train_zoo.py digitscenes-deeplabv3 [--epochs N] [--device cpu|cuda] [--out PATH]
    python scripts/train_zoo.py glyphscenes-resnet | glyphscenes-yolov5 | glyphscenes-deeplabv3

The GlyphScenes models are trained by their library's own recipe (scripts/zoo_glyphs.py);
both segmenters go through one loop here (:func:`train_segmenter`, :class:`SegmenterFit`).

The architecture comes from ``tpunlearn.zoo.ZOO[NAME]``. Training is seeded and runs on
two CPU threads; the checkpoint (fp16, plus metadata, see ``tpunlearn.zoo``) is written
atomically to ``tpunlearn/weights/NAME.pt`` unless ``--out`` says otherwise.

``digitscenes-yolov5`` is trained by ultralytics itself (``YOLO("yolov5n.yaml").train``) on
DigitScenes written to disk as a YOLO dataset (``tpunlearn.data.write_yolo``, in a temp
folder), then saved through the yolov5 adapter (ultralytics checkpoint layout, fp16) with
its per-digit test AP50 recorded in the checkpoint.

``digitscenes-deeplabv3`` (torchvision DeepLabV3, the deeplabv3 adapter's
``deeplabv3_resnet_tiny``) learns per-pixel cross-entropy on DigitScenes masks (background
and ten digits), AdamW with a cosine LR; ``--device cuda`` trains on a GPU (a few minutes;
on 2 CPU cores it takes hours: the script prints an estimate after a few steps). Its
checkpoint is the adapter's ``tpunlearn-deeplabv3/1`` (fp16) with the per-class test IoU and
mIoU of the shipped weights under ``"zoo"``.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import tpunlearn
from tpunlearn import zoo
from tpunlearn.data import DigitScenes

try:
    import tpunlearn.adapters  # noqa: F401
except ModuleNotFoundError:
    # a checkout run with PYTHONPATH=. and not installed: the top-level adapters/ folder is
    # what the install maps to tpunlearn.adapters (pyproject's package-dir); find it there
    tpunlearn.__path__.append(str(Path(__file__).resolve().parents[1]))
    import tpunlearn.adapters  # noqa: F401

TRAINERS = {"digitscenes-resnet", "digitscenes-yolov5", "digitscenes-deeplabv3", "glyphscenes-resnet",
            "glyphscenes-yolov5", "glyphscenes-deeplabv3"}

# digitscenes-yolov5: defaults chosen so that training takes about 10 minutes on 2 shared CPU cores
YOLO_DEFAULTS = {"epochs": 20, "n_train": 6000, "batch_size": 64, "lr": None}


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


def _random_affine(u, degrees: float, zoom: tuple[float, float], shear: float) -> torch.Tensor:
    """Per-sample affine matrices ``(B, 2, 3)``: rotation, zoom and shear drawn from ``u(lo, hi)``
    in that order (the order fixes the random stream, so checkpoints stay reproducible)."""
    angle = u(-1, 1) * math.radians(degrees)
    scale = 1 / u(*zoom)
    shear_x = u(-shear, shear)
    theta = torch.zeros(len(angle), 2, 3)
    theta[:, 0, 0] = torch.cos(angle) * scale
    theta[:, 0, 1] = -torch.sin(angle) * scale + shear_x
    theta[:, 1, 0] = torch.sin(angle) * scale
    theta[:, 1, 1] = torch.cos(angle) * scale
    return theta


def _adamw_warmup_cosine(model: torch.nn.Module, lr: float, steps_per_epoch: int, epochs: int):
    """AdamW (weight decay 0.05, none on norms and biases) and its learning rate per step:
    linear warm-up over the first epoch (at most a tenth of training), then cosine to zero."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    total = epochs * steps_per_epoch
    warmup = min(steps_per_epoch, total // 10)

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        return 0.5 * lr * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return opt, lr_at


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Light augmentation of grayscale scenes ``(B, 1, H, W)``: a small random rotation,
    shear and zoom-out of the whole scene (digits stay inside), then random contrast and
    brightness."""
    B = len(x)

    def u(lo: float, hi: float) -> torch.Tensor:
        return torch.empty(B).uniform_(lo, hi, generator=gen)

    theta = _random_affine(u, degrees=12, zoom=(0.9, 1.05), shear=0.15)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    floor = x.amin(dim=(2, 3), keepdim=True)
    x = F.grid_sample(x - floor, grid, align_corners=False, padding_mode="zeros") + floor
    contrast = u(0.75, 1.25).view(B, 1, 1, 1)
    brightness = u(-0.08, 0.08).view(B, 1, 1, 1)
    return (x * contrast + brightness).clamp_(0, 1)


def _digit_scenes(split: str, n: int, size: int, channels: int) -> list[DigitScenes]:
    """``n`` scenes of ``split``, built in 6000-scene chunks with seeds 0, 1, ..."""
    return [DigitScenes(split, size=size, n_scenes=min(6000, n - k), seed=k // 6000, channels=channels)
            for k in range(0, n, 6000)]


def _classifier_data(e: zoo.ZooEntry, n_train: int, exclude: tuple[int, ...]):
    """Training images and multi-hot labels (scenes holding an ``exclude`` digit dropped), val and test."""
    channels, size = e.input_size[0], e.input_size[1]
    t0 = time.time()
    chunks = _digit_scenes("train", n_train, size, channels)
    x_train = torch.cat([c.images for c in chunks])
    y_train = torch.cat([c.multi_hot for c in chunks])
    if exclude:
        keep = y_train[:, list(exclude)].sum(1) == 0
        x_train, y_train = x_train[keep], y_train[keep]
    val = DigitScenes("val", size=size, channels=channels)
    test = DigitScenes("test", size=size, channels=channels)
    print(f"data: {len(x_train)} train / {len(val)} val / {len(test)} test scenes in {time.time() - t0:.1f}s",
          flush=True)
    return x_train, y_train, val, test


def label_weights(num_classes: int, exclude_labels: tuple[int, ...]) -> torch.Tensor:
    """Per-class BCE weights: 0 for ``exclude_labels`` (a target-level retrain: the scenes stay, those
    labels never reach the loss), 1 for every other class; the loss is renormalised to the kept ones."""
    weights = torch.ones(num_classes)
    weights[list(exclude_labels)] = 0.0
    return weights * (num_classes / max(1.0, float(weights.sum())))


def _fit_classifier(model: torch.nn.Module, x_train: torch.Tensor, y_train: torch.Tensor, val: DigitScenes,
                    channels: int, epochs: int, seed: int, lr: float, batch_size: int,
                    exclude_labels: tuple[int, ...] = ()) -> None:
    """AdamW with warm-up and cosine LR on augmented scenes, BCE per digit (``exclude_labels``' columns
    masked out of it); val numbers per epoch."""
    weights = label_weights(y_train.shape[1], exclude_labels)
    steps_per_epoch = math.ceil(len(x_train) / batch_size)
    opt, lr_at = _adamw_warmup_cosine(model, lr, steps_per_epoch, epochs)
    gen = torch.Generator().manual_seed(seed)
    step = 0
    for epoch in range(epochs):
        model.train()
        t = time.time()
        order = torch.randperm(len(x_train), generator=gen)
        run = 0.0
        for b in range(steps_per_epoch):
            idx = order[b * batch_size : (b + 1) * batch_size]
            x = _augment(x_train[idx], gen).expand(-1, channels, -1, -1)
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            loss = F.binary_cross_entropy_with_logits(model(x), y_train[idx], weight=weights)
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


def train_digitscenes_resnet(name: str, epochs: int, seed: int, n_train: int, lr: float, batch_size: int,
                             exclude: tuple[int, ...] = (), exclude_labels: tuple[int, ...] = ()):
    """The zoo classifier's recipe; ``exclude`` drops every scene holding one of those digits
    (the instance-level retrain of benchmarks/bench_compare.py), ``exclude_labels`` keeps every scene
    and masks those digits' columns out of the loss (the target-level reference,
    scripts/train_reference.py)."""
    torch.manual_seed(seed)
    e = zoo.entry(name)
    channels = e.input_size[0]
    t0 = time.time()
    x_train, y_train, val, test = _classifier_data(e, n_train, exclude)
    model = zoo.build(name)
    # timm zero-initialises each block's last BN (zero_init_last); with one block per stage
    # that stalls the first epochs, so start those BNs at 1 like the others
    for m in model.modules():
        if hasattr(m, "bn2") and hasattr(m, "conv2"):
            torch.nn.init.ones_(m.bn2.weight)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: timm.create_model({e.arch!r}, **{e.kwargs}) -> {n_params:,} params", flush=True)
    _fit_classifier(model, x_train, y_train, val, channels, epochs, seed, lr, batch_size, tuple(exclude_labels))

    recall, precision, tloss, exact = _eval(model, test.images, test.multi_hot, channels)
    seconds = time.time() - t0
    print(f"\ntest ({len(test)} scenes): loss {tloss:.4f}, exact-set accuracy {exact:.3f}")
    print("digit  positives  recall  precision")
    for d in range(10):
        print(f"{d:5d}  {int(test.multi_hot[:, d].sum()):9d}  {float(recall[d]):.4f}  {float(precision[d]):.4f}")
    print(f"trained in {seconds:.0f}s")
    record = {
        "data": "DigitScenes", "epochs": epochs, "seed": seed, "lr": lr, "batch_size": batch_size,
        "optimizer": "AdamW(weight_decay=0.05, none on norms/biases), cosine LR, 1-epoch warmup",
        "augment": "rotation +-12 deg, shear +-0.15, zoom 0.9-1.05, contrast 0.75-1.25, brightness +-0.08",
        "n_train": len(x_train), "n_params": n_params, "n_test": len(test),
        "excluded_scenes_of": list(exclude), "excluded_labels": list(exclude_labels),
        "test_recall": [round(float(v), 4) for v in recall],
        "test_precision": [round(float(v), 4) for v in precision],
        "test_exact": round(exact, 4), "seconds": round(seconds, 1), "torch": str(torch.__version__),
    }
    return zoo.checkpoint(name, model, record)


def _test_ap50(adapter, model: torch.nn.Module, info, spec: str) -> dict[str, float]:
    """Per-digit AP50 and ``"mAP50"`` of a detector on ``spec`` (ultralytics' validator)."""
    ev = adapter.evaluate(model, info, spec)
    return {**{n: m["ap50"] for n, m in ev.per_target.items()}, "mAP50": ev.summary["mAP50"]}


def _ultralytics_run(e: zoo.ZooEntry, data: Path, imgsz: int, epochs: int, seed: int, lr: float | None,
                     batch_size: int, tmp: Path) -> tuple[Path, dict]:
    """Train ``e.arch`` with ultralytics' own trainer; its best (else last) checkpoint and the settings."""
    from ultralytics import YOLO

    # ultralytics' augmentation defaults, except: no left-right flip (a mirrored digit is another
    # glyph or none), and no colour jitter of hue/saturation (the scenes are grey)
    hyp = {"fliplr": 0.0, "hsv_h": 0.0, "hsv_s": 0.0}
    kwargs = dict(data=str(data), imgsz=imgsz, epochs=epochs, batch=batch_size, device="cpu", workers=0,
                  seed=seed, deterministic=True, project=str(tmp / "runs"), name="train", exist_ok=True,
                  plots=False, val=True, amp=False, pretrained=False, cache=False, verbose=False, **hyp)
    if lr is not None:
        kwargs.update(optimizer="AdamW", lr0=lr)
    yolo = YOLO(e.arch)
    yolo.train(**kwargs)
    weights = Path(yolo.trainer.save_dir) / "weights"
    best = weights / "best.pt" if (weights / "best.pt").is_file() else weights / "last.pt"
    return best, {"optimizer": kwargs.get("optimizer", "auto"), **hyp}


def train_digitscenes_yolov5(name: str, epochs: int, seed: int, n_train: int, lr: float | None, batch_size: int,
                             workdir: Path | None = None) -> tuple[torch.nn.Module, object, dict]:
    """Train ``yolov5n.yaml`` on DigitScenes with ultralytics; return ``(model, info, meta)``.

    The model is ultralytics' ``best.pt`` (best val fitness), loaded back through the yolov5
    adapter; ``meta`` is the zoo record (training settings and test-split AP50 per digit).
    """
    import shutil

    from ultralytics import __version__ as ul_version

    from tpunlearn.adapters import get
    from tpunlearn.data import write_yolo

    e = zoo.entry(name)
    adapter = get("yolov5")
    imgsz = int(e.input_size[-1])
    counts = {"train": n_train, "val": 500, "test": 1000}
    t0 = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="tpunlearn-train-yolov5-", dir=workdir))
    try:
        data = write_yolo(tmp / "data", size=imgsz, seed=seed, n_scenes=counts)
        print(f"data: {counts} DigitScenes at {imgsz}px written to {data.parent} in {time.time() - t0:.1f}s",
              flush=True)
        t1 = time.time()
        best, settings = _ultralytics_run(e, data, imgsz, epochs, seed, lr, batch_size, tmp)
        train_seconds = time.time() - t1
        model, _ = adapter.build(str(best))
        # the checkpoint's train_args describe the run without the temp paths; data "digits" makes
        # the yolov5 adapter default to DigitScenes for this model and its pruned copies
        model.args = {"task": "detect", "mode": "train", "model": e.arch, "data": "digits", "imgsz": imgsz,
                      "epochs": epochs, "batch": batch_size, "seed": seed, "deterministic": True,
                      "optimizer": settings["optimizer"], "pretrained": False,
                      **{k: v for k, v in settings.items() if k != "optimizer"}}
        # fp16 round trip first: the recorded test AP is that of the weights that ship
        _, _, info = zoo.build_model(name, weights=best)
        probe = tmp / "probe.pt"
        adapter.save(model, info, probe)
        _, shipped, info = zoo.build_model(name, weights=probe)
        test = _test_ap50(adapter, shipped, info, f"digits:{counts['test']}")
        print(f"test AP50 ({counts['test']} scenes): " + ", ".join(f"{d}: {test[d]:.4f}" for d in e.class_names)
              + f"; mAP50 {test['mAP50']:.4f}")
        record = {
            "data": "DigitScenes (tpunlearn.data.write_yolo)", "data_seed": seed, "scenes": counts, "imgsz": imgsz,
            "epochs": epochs, "batch_size": batch_size, "seed": seed, "optimizer": settings["optimizer"], "lr0": lr,
            "augment": "ultralytics defaults (mosaic, scale 0.5, translate 0.1, hsv_v 0.4), fliplr 0, hsv_h 0, hsv_s 0",
            "checkpoint": best.name, "n_params": sum(p.numel() for p in model.parameters()),
            "test_ap50": {d: round(float(test[d]), 4) for d in e.class_names},
            "test_map50": round(float(test["mAP50"]), 4), "n_test": counts["test"],
            "train_seconds": round(train_seconds, 1), "seconds": round(time.time() - t0, 1),
            "torch": str(torch.__version__), "ultralytics": ul_version,
        }
        print(f"trained in {train_seconds:.0f}s ({time.time() - t0:.0f}s in all)")
        return shipped, info, {"zoo": {"name": name, "train": record}}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# digitscenes-deeplabv3: on one GPU a few minutes; on 2 CPU cores many hours (the script prints an estimate)
DEEPLAB_DEFAULTS = {"epochs": 20, "n_train": 24000, "batch_size": 64, "lr": 2e-3}


def _augment_segmentation(x: torch.Tensor, mask: torch.Tensor, gen: torch.Generator):
    """The same random affine map (rotation +-10 deg, shear +-0.1, zoom 0.9-1.1) for grayscale
    scenes ``(B, 1, H, W)`` (bilinear) and their class masks ``(B, H, W)`` (nearest, background
    outside), then random contrast and brightness of the images. Random numbers come from the
    CPU generator ``gen`` (same draws on every device)."""
    B, dev = len(x), x.device

    def u(lo: float, hi: float) -> torch.Tensor:
        return torch.empty(B).uniform_(lo, hi, generator=gen)

    theta = _random_affine(u, degrees=10, zoom=(0.9, 1.1), shear=0.1)
    contrast = u(0.75, 1.25).view(B, 1, 1, 1).to(dev)
    brightness = u(-0.08, 0.08).view(B, 1, 1, 1).to(dev)
    grid = F.affine_grid(theta.to(dev), list(x.shape), align_corners=False)
    floor = x.amin(dim=(2, 3), keepdim=True)
    x = F.grid_sample(x - floor, grid, align_corners=False, padding_mode="zeros") + floor
    mask = F.grid_sample(mask[:, None].float(), grid, mode="nearest", align_corners=False, padding_mode="zeros")
    return (x * contrast + brightness).clamp_(0, 1), mask[:, 0].long()


def _as_float(x: torch.Tensor) -> torch.Tensor:
    """Images as float in [0, 1] (uint8 tensors are divided by 255; float ones are returned as they are)."""
    return x.float() / 255.0 if x.dtype == torch.uint8 else x


def _segmentation_iou(model: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor, num_classes: int,
                      bs: int = 250) -> torch.Tensor:
    """Per-class IoU (NaN where a class is absent) of ``model`` on ``images`` ``(N, 1 or 3, H, W)``
    (float, or uint8 read as /255; grayscale is replicated to RGB)."""
    model.eval()
    C = num_classes
    cm = torch.zeros(C * C, dtype=torch.long, device=images.device)
    with torch.no_grad():
        for i in range(0, len(images), bs):
            pred = model(_as_float(images[i:i + bs]).expand(-1, 3, -1, -1))["out"].argmax(1)
            cm += torch.bincount((masks[i:i + bs].long() * C + pred).flatten(), minlength=C * C)
    from tpunlearn.evaluate import iou_from_confusion

    return iou_from_confusion(cm.reshape(C, C).cpu())


def _adamw_schedule(model: torch.nn.Module, lr: float, steps_per_epoch: int, epochs: int):
    """:func:`_adamw_warmup_cosine` as an optimizer and a per-step LR scheduler (the digits' recipe)."""
    opt, lr_at = _adamw_warmup_cosine(model, lr, steps_per_epoch, epochs)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_at(step) / lr)


@dataclass
class SegmenterFit:
    """How a segmentation zoo model is fitted: ``optimizer(model, lr, steps_per_epoch, epochs)`` returns an
    optimizer and a scheduler stepped once per batch; ``augment(x, mask, gen)`` (None: none) maps a float
    batch and its masks; ``aux_weight`` scales the aux head's cross-entropy (when the model has one)."""

    epochs: int
    seed: int
    lr: float
    batch_size: int
    optimizer: Callable[..., tuple[torch.optim.Optimizer, Any]] = _adamw_schedule
    augment: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None
    aux_weight: float = 0.0
    log_every: int = 0  # print the running loss every N steps (0: per epoch only)
    amp: bool = False  # bfloat16 autocast of the forward (the reference's --amp; on CPU, bf16 matmul units)


def _fit_segmenter(model: torch.nn.Module, x_train: torch.Tensor, m_train: torch.Tensor, x_val: torch.Tensor,
                   m_val: torch.Tensor, C: int, fit: SegmenterFit) -> None:
    """Per-pixel cross-entropy (+ aux head) under ``fit``'s optimizer and schedule; a time estimate after a
    few steps of the first epoch, val IoU per epoch."""
    dev = x_train.device
    steps_per_epoch = math.ceil(len(x_train) / fit.batch_size)
    opt, schedule = fit.optimizer(model, fit.lr, steps_per_epoch, fit.epochs)
    gen = torch.Generator().manual_seed(fit.seed)
    for epoch in range(fit.epochs):
        model.train()
        t = time.time()
        order = torch.randperm(len(x_train), generator=gen).to(dev)
        run, seen = 0.0, 0
        for b in range(steps_per_epoch):
            if epoch == 0 and b == 1:
                t_probe = time.time()
            idx = order[b * fit.batch_size:(b + 1) * fit.batch_size]
            if len(idx) < 2:  # BatchNorm (the ASPP pooling branch) needs two samples
                continue
            x, target = _as_float(x_train[idx]), m_train[idx].long()
            if fit.augment is not None:
                x, target = fit.augment(x, target, gen)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=fit.amp):
                out = model(x.expand(-1, 3, -1, -1))
            loss = F.cross_entropy(out["out"].float(), target)
            if fit.aux_weight and "aux" in out:
                loss = loss + fit.aux_weight * F.cross_entropy(out["aux"].float(), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            run, seen = run + loss.item() * len(idx), seen + len(idx)
            if epoch == 0 and b == min(11, steps_per_epoch - 1) and b > 1:
                per_step = (time.time() - t_probe) / (b - 1)
                print(f"timing: {per_step:.3f}s per step of {fit.batch_size} on {dev} -> about "
                      f"{per_step * fit.epochs * steps_per_epoch / 60:.1f} min for {fit.epochs} epochs of "
                      f"{len(x_train)} scenes (plus evaluation)", flush=True)
            if fit.log_every and (b + 1) % fit.log_every == 0:
                print(f"  epoch {epoch + 1} step {b + 1}/{steps_per_epoch}  loss {run / seen:.4f}  "
                      f"lr {opt.param_groups[0]['lr']:.2e}  ({time.time() - t:.0f}s)", flush=True)
        iou = _segmentation_iou(model, x_val, m_val, C)
        print(f"epoch {epoch + 1:2d}/{fit.epochs}  train loss {run / max(1, seen):.4f}  "
              f"val mIoU {float(iou[1:].nanmean()):.3f}  min class IoU "
              f"{float(iou[1:].nan_to_num(1).min()):.3f}  bg IoU {float(iou[0]):.3f}  ({time.time() - t:.1f}s)",
              flush=True)


def _shipped_iou(adapter, model: torch.nn.Module, info, e: zoo.ZooEntry, test: tuple[torch.Tensor, torch.Tensor],
                 dev: torch.device):
    """The fp16 weights that ship (saved and rebuilt) and their per-class IoU on ``test`` (images, masks)."""
    model.cpu().eval()
    with tempfile.TemporaryDirectory(prefix="tpunlearn-train-deeplabv3-") as tmp:
        probe = Path(tmp) / "probe.pt"
        adapter.save(model, info, probe, half=True)
        shipped, info = adapter.build(e.arch, weights=probe, zoo=e)
    shipped.to(dev)
    iou = _segmentation_iou(shipped, test[0].to(dev), test[1].to(dev), len(e.class_names))
    shipped.cpu().eval()
    return shipped, info, iou


def train_segmenter(name: str, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
                    test: tuple[torch.Tensor, torch.Tensor], fit: SegmenterFit, record: dict[str, Any],
                    device: str = "cpu"):
    """Train the deeplabv3-family zoo model ``name`` on ``(images, masks)`` tensors; return ``(model, info)``
    ready for ``get("deeplabv3").save(model, info, path, half=True)``. ``info.extra["zoo"]["train"]`` is
    ``record`` plus what every segmenter records: sizes, seconds, the per-class test IoU of the fp16
    weights that ship, mIoU over the object classes (and over all) and the worst class."""
    from tpunlearn.adapters import get

    torch.manual_seed(fit.seed)
    e, adapter = zoo.entry(name), get("deeplabv3")
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model, info = adapter.build(e.arch, zoo=e)  # a random model of the entry's configuration
    model.to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {e.arch} {e.kwargs} (torchvision DeepLabV3) -> {n_params:,} params, device {dev}", flush=True)
    t_train = time.time()
    _fit_segmenter(model, train[0].to(dev), train[1].to(dev), val[0].to(dev), val[1].to(dev), len(e.class_names),
                   fit)
    train_seconds = time.time() - t_train

    shipped, info, iou = _shipped_iou(adapter, model, info, e, test, dev)
    test_iou = {n: round(float(v), 4) for n, v in zip(e.class_names, iou, strict=True)}
    objects = {n: v for n, v in test_iou.items() if n != "background"}
    worst = min(objects, key=lambda n: objects[n] if objects[n] == objects[n] else 2.0)  # NaN (absent) last
    miou, miou_all = float(iou[1:].nanmean()), float(iou.nanmean())
    print(f"\ntest ({len(test[0])} scenes, fp16 weights): mIoU over the {len(objects)} object classes {miou:.4f}, "
          f"over all {len(test_iou)} classes {miou_all:.4f}, worst {worst} {objects[worst]:.4f}")
    print("class       IoU\n" + "\n".join(f"{n:10s}  {test_iou[n]:.4f}" for n in e.class_names))
    print(f"trained in {train_seconds:.0f}s")
    info.extra["zoo"] = {"name": name, "train": {
        **record, "epochs": fit.epochs, "seed": fit.seed, "lr": fit.lr, "batch_size": fit.batch_size,
        "loss": "per-pixel cross-entropy" + (f" + {fit.aux_weight} x aux head" if e.kwargs.get("aux_loss") else ""),
        "n_train": len(train[0]), "n_val": len(val[0]), "n_test": len(test[0]), "n_params": n_params,
        "device": str(dev), "amp": "bfloat16 autocast" if fit.amp else None, "test_iou": test_iou,
        "test_miou": round(miou, 4), "test_miou_all": round(miou_all, 4),
        "test_worst": {"class": worst, "iou": objects[worst]}, "train_seconds": round(train_seconds, 1),
        "torch": str(torch.__version__),
    }}
    return shipped, info


def train_digitscenes_deeplabv3(name: str, epochs: int, seed: int, n_train: int, lr: float, batch_size: int,
                                device: str = "cpu", n_val: int = 500, n_test: int = 1000):
    """The digits segmenter's recipe (AdamW, warm-up and cosine LR, affine and contrast augmentation) through
    :func:`train_segmenter`; returns its ``(model, info)``."""
    t0 = time.time()
    size = int(zoo.entry(name).input_size[-1])
    chunks = _digit_scenes("train", n_train, size, 1)
    train = torch.cat([c.images for c in chunks]), torch.cat([c.masks for c in chunks])
    del chunks
    val, test = (DigitScenes(s, size=size, n_scenes=n, channels=1) for s, n in (("val", n_val), ("test", n_test)))
    print(f"data: {len(train[0])} train / {len(val)} val scenes at {size}px in {time.time() - t0:.1f}s", flush=True)
    fit = SegmenterFit(epochs, seed, lr, batch_size, _adamw_schedule, _augment_segmentation, aux_weight=0.4)
    model, info = train_segmenter(name, train, (val.images, val.masks), (test.images, test.masks), fit, {
        "data": "DigitScenes (masks: 0 background, d + 1 for digit d)",
        "optimizer": "AdamW(weight_decay=0.05, none on norms/biases), cosine LR, 1-epoch warmup",
        "augment": "same affine for image and mask: rotation +-10 deg, shear +-0.1, zoom 0.9-1.1; "
                   "contrast 0.75-1.25, brightness +-0.08"}, device)
    info.extra["zoo"]["train"]["seconds"] = round(time.time() - t0, 1)
    return model, info


def _run_deeplabv3(args: argparse.Namespace, out: Path) -> str:
    from tpunlearn.adapters import get

    if args.name == "glyphscenes-deeplabv3":
        from zoo_glyphs import DEEPLAB_DEFAULTS as d
        from zoo_glyphs import train_glyphscenes_deeplabv3 as trainer
    else:
        d, trainer = DEEPLAB_DEFAULTS, train_digitscenes_deeplabv3
    model, info = trainer(args.name, args.epochs or d["epochs"], args.seed, args.n_train or d["n_train"],
                          args.lr if args.lr is not None else d["lr"], args.batch_size or d["batch_size"], args.device)
    get("deeplabv3").save(model, info, out, half=True)  # atomic
    os.chmod(out, 0o644)  # the atomic write makes 0600 files
    _, check = zoo.load(args.name, weights=out)  # the zoo loads what was written
    return f"sha256 {check['sha256'][:12]}, test mIoU over the object classes {check['test_miou']}"


def _run_yolov5(args: argparse.Namespace, out: Path) -> str:
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from tpunlearn.adapters import get

    if args.name == "glyphscenes-yolov5":
        from zoo_glyphs import YOLO_DEFAULTS as d
        from zoo_glyphs import train_glyphscenes_yolov5

        model, info, meta = train_glyphscenes_yolov5(args.name, args.epochs or d["epochs"], args.seed,
                                                     args.n_train or d["n_train"], args.batch_size or d["batch_size"],
                                                     args.workdir)
    else:
        d = YOLO_DEFAULTS
        model, info, meta = train_digitscenes_yolov5(
            args.name, args.epochs or d["epochs"], args.seed, args.n_train or d["n_train"],
            args.lr if args.lr is not None else d["lr"], args.batch_size or d["batch_size"], args.workdir)
    get("yolov5").save(model, info, out, meta=meta)  # atomic
    os.chmod(out, 0o644)  # the atomic write makes 0600 files
    torch.set_num_threads(args.threads)  # ultralytics changes it
    _, check = zoo.load(args.name, weights=out)  # the zoo loads what was written
    return f"sha256 {check['sha256'][:12]}, test mAP50 {check.get('test_map50')}"


def _run_timm(args: argparse.Namespace, out: Path) -> str:
    if args.name == "glyphscenes-resnet":
        from zoo_glyphs import RESNET_DEFAULTS as g
        from zoo_glyphs import train_glyphscenes_resnet

        ckpt = train_glyphscenes_resnet(args.name, args.epochs or g["epochs"], args.seed,
                                           args.n_train or g["n_train"], args.lr if args.lr is not None else g["lr"],
                                           args.batch_size or g["batch_size"])
    else:
        ckpt = train_digitscenes_resnet(args.name, args.epochs or 10, args.seed, args.n_train or 24000,
                                        args.lr if args.lr is not None else 3e-3, args.batch_size or 128)
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
    return "timm zoo checkpoint"


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name", choices=sorted(TRAINERS))
    p.add_argument("--epochs", type=int, default=None, help="default 10 (resnet), 20 (yolov5), 20 (deeplabv3)")
    p.add_argument("--out", type=Path, default=None, help="checkpoint path (default tpunlearn/weights/NAME.pt)")
    p.add_argument("--n-train", type=int, default=None,
                   help="training scenes (default 24000 (resnet), 6000 (yolov5), 24000 (deeplabv3))")
    p.add_argument("--lr", type=float, default=None,
                   help="default 3e-3 (resnet), 2e-3 (deeplabv3); yolov5: ultralytics' optimizer=auto unless given "
                        "(then AdamW lr0)")
    p.add_argument("--batch-size", type=int, default=None, help="default 128 (resnet), 64 (yolov5), 64 (deeplabv3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, the initialisation and the order")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--workdir", type=Path, default=None, help="yolov5: where the temp dataset and run go")
    p.add_argument("--device", default="cpu", help="deeplabv3: cpu (default) or cuda")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    torch.set_num_threads(args.threads)
    out = (args.out or zoo.weights_path(args.name)).resolve()
    family = zoo.entry(args.name).family
    runner = {"deeplabv3": _run_deeplabv3, "yolov5": _run_yolov5}.get(family, _run_timm)
    said = runner(args, out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, {said})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
