"""Zoo models on GlyphScenes, each trained by its family's own recipe (used by train_zoo.py).

DigitScenes' zoo models were trained by tpunlearn's own loops; these are trained the way a
user of each library would train them, so that tpunlearn's defaults meet models it did not
shape:

* ``glyphscenes-resnet``: timm ``resnet18`` (one BasicBlock per stage, widths 32-256, as
  digitscenes-resnet), multi-label over the 24 classes, trained with timm's optimizer and
  scheduler (``create_optimizer_v2`` AdamW, ``CosineLRScheduler`` with a one-epoch warm-up)
  and timm's ``BinaryCrossEntropy`` on [0, 1] tensors with light Gaussian noise, 12 epochs of
  24000 scenes (20 epochs of 6000 overfitted: train loss 0.007, test recall mean 0.69, worst
  0.17). This is the classifier that ships (test recall and precision per class in its
  training record).
* (tried and dropped; the code is in git history, commit 26d8487) timm ``mobilenetv2_050`` with
  timm's full recipe (``create_transform`` with RandAugment, BCE with ``pos_weight``, EMA): 12
  epochs of 6000 scenes gave recall 0.52-0.98 but precision 0.11-0.23 (nothing beyond the base
  rate), and its multi-class fallback stayed at chance. The smaller resnet without augmentation
  learns: the augmentation and MobileNet's 32x downsampling of 64-pixel scenes were the trouble.
* ``glyphscenes-yolov5``: ultralytics' own trainer (``YOLO("yolov5n.yaml").train``) on the
  scenes written as an ultralytics dataset, ultralytics' default hyper-parameters except
  left-right flips (a mirrored letter is another glyph).

* ``glyphscenes-deeplabv3``: the tiny torchvision DeepLabV3 of digitscenes-deeplabv3 over 25
  classes, trained with torchvision's segmentation reference recipe (references/segmentation:
  SGD momentum 0.9, weight decay 1e-4, PolynomialLR power 0.9, cross-entropy plus 0.5 x the aux
  head's when there is one), no flips, through train_zoo.py's shared segmenter loop. Trained on one
  shared CPU core within a 40-minute budget (bf16 autocast, 2 epochs of 12000 scenes), so it is
  far less trained than the DigitScenes one (20 epochs of 24000 on a GPU): its record says how well.
"""
from __future__ import annotations

import time
from typing import Any

import torch

from tpunlearn import zoo
from tpunlearn.data.glyphscenes import GlyphScenes

RESNET_DEFAULTS = {"epochs": 12, "n_train": 24000, "batch_size": 64, "lr": 3e-3}


def _tensors(scenes: GlyphScenes) -> tuple[torch.Tensor, torch.Tensor]:
    """All scenes as uint8 images and float multi-hot labels, made once (the loop reads them in place)."""
    images = torch.empty(len(scenes), 3, *scenes.scene(0).image.shape[-2:], dtype=torch.uint8)
    labels = torch.zeros(len(scenes), len(scenes.class_names))
    for i in range(len(scenes)):
        scene = scenes.scene(i)
        images[i] = (scene.image.clamp(0, 1) * 255).round().to(torch.uint8)
        labels[i, list(scene.labels)] = 1.0
    return images, labels


@torch.no_grad()
def _tensor_test(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per-class recall and precision at logit > 0 (the adapter's multi-label decision rule)."""
    from tpunlearn.evaluate import multilabel_precision, multilabel_recall

    model.eval()
    logits = torch.cat([model(images[i:i + 250].float() / 255) for i in range(0, len(images), 250)])
    return multilabel_recall(logits, labels), multilabel_precision(logits, labels)


def train_glyphscenes_resnet(name: str, epochs: int, seed: int, n_train: int, lr: float,
                             batch_size: int, exclude_labels: tuple[int, ...] = ()) -> dict[str, Any]:
    """timm's optimizer, scheduler and BCE on GlyphScenes tensors in [0, 1] (what the timm adapter feeds
    a zoo model); returns the ``tpunlearn-zoo/1`` checkpoint dict (fp16). ``exclude_labels``' columns
    are masked out of the BCE (timm's ``weight``): the target-level reference of scripts/train_reference.py."""
    from timm.loss import BinaryCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler

    torch.manual_seed(seed)
    t0 = time.time()
    images, labels = _tensors(GlyphScenes("train", size=64, n_scenes=n_train, seed=seed))
    val, test = _tensors(GlyphScenes("val", size=64, n_scenes=500)), _tensors(GlyphScenes("test", size=64))
    model = zoo.build(name)
    steps = n_train // batch_size
    optimizer = create_optimizer_v2(model, "adamw", lr=lr, weight_decay=1e-4)
    scheduler = CosineLRScheduler(optimizer, t_initial=epochs * steps, warmup_t=steps, warmup_lr_init=lr / 20,
                                  lr_min=lr / 100, t_in_epochs=False)
    weight = torch.ones(labels.shape[1])
    weight[list(exclude_labels)] = 0.0
    weight *= labels.shape[1] / max(1.0, float(weight.sum()))  # the kept classes' loss scale as in the zoo
    loss_fn, gen = BinaryCrossEntropy(smoothing=0.0, weight=weight), torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(n_train, generator=gen)
        for b in range(steps):
            idx = order[b * batch_size:(b + 1) * batch_size]
            x = images[idx].float() / 255
            x = x + 0.03 * torch.randn(x.shape, generator=gen)
            loss = loss_fn(model(x), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step_update(epoch * steps + b + 1)
        recall, precision = _tensor_test(model, *val)
        print(f"epoch {epoch + 1:2d}/{epochs}  loss {loss.item():.4f}  val recall min {float(recall.min()):.3f} "
              f"mean {float(recall.mean()):.3f} precision min {float(precision.min()):.3f} "
              f"({time.time() - t0:.0f}s)", flush=True)
    recall, precision = _tensor_test(model, *test)
    seconds = time.time() - t0
    print(f"test recall min {float(recall.min()):.4f} mean {float(recall.mean()):.4f}; precision min "
          f"{float(precision.min()):.4f}; {seconds:.0f}s")
    return zoo.checkpoint(name, model, {
        "data": "GlyphScenes", "epochs": epochs, "seed": seed, "lr": lr, "batch_size": batch_size,
        "recipe": "timm create_optimizer_v2 adamw wd 1e-4, CosineLRScheduler 1-epoch warm-up, timm "
                  "BinaryCrossEntropy, [0, 1] tensors + N(0, 0.03) noise",
        "n_train": n_train, "n_test": len(test[0]), "excluded_labels": list(exclude_labels),
        "n_params": sum(p.numel() for p in model.parameters()),
        "test_recall": [round(float(v), 4) for v in recall],
        "test_precision": [round(float(v), 4) for v in precision],
        "seconds": round(seconds, 1), "torch": str(torch.__version__),
    })


YOLO_DEFAULTS = {"epochs": 30, "n_train": 6000, "batch_size": 64}


def train_glyphscenes_yolov5(name: str, epochs: int, seed: int, n_train: int, batch_size: int,
                             workdir: Any = None) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """ultralytics' own trainer on GlyphScenes; returns ``(model, info, meta)`` for the yolov5 adapter's save."""
    import shutil
    import tempfile
    from pathlib import Path

    from ultralytics import YOLO
    from ultralytics import __version__ as ul_version

    from tpunlearn.data.writers import write_yolo_dataset

    e = zoo.entry(name)
    imgsz, counts = int(e.input_size[-1]), {"train": n_train, "val": 500, "test": 1000}
    t0 = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="tpunlearn-train-glyphs-", dir=workdir))
    try:
        splits = {split: GlyphScenes(split, size=imgsz, n_scenes=n, seed=seed) for split, n in counts.items()}
        data = write_yolo_dataset(tmp / "data", splits)
        hyp = {"fliplr": 0.0}  # ultralytics' defaults otherwise (mosaic, hsv, scale, translate)
        yolo = YOLO(e.arch)
        t1 = time.time()
        yolo.train(data=str(data), imgsz=imgsz, epochs=epochs, batch=batch_size, device="cpu", workers=0, seed=seed,
                   deterministic=True, project=str(tmp / "runs"), name="train", exist_ok=True, plots=False,
                   amp=False, pretrained=False, verbose=False, **hyp)
        train_seconds = time.time() - t1
        best = Path(yolo.trainer.save_dir) / "weights" / "best.pt"
        test = YOLO(str(best)).val(data=str(data), split="test", imgsz=imgsz, batch=32, device="cpu", workers=0,
                                   plots=False, verbose=False, project=str(tmp / "runs"), name="test")
        box = test.box
        ap50 = {e.class_names[int(c)]: round(float(box.ap50[i]), 4) for i, c in enumerate(box.ap_class_index)}
        print(f"test mAP50 {float(box.map50):.4f}  mAP50-95 {float(box.map):.4f}  min AP50 {min(ap50.values()):.4f}")
        _adapter, model, info = zoo.build_model(name, weights=best)
        model.args = {"task": "detect", "mode": "train", "model": e.arch, "data": "glyphs", "imgsz": imgsz,
                      "epochs": epochs, "batch": batch_size, "seed": seed, "deterministic": True, **hyp}
        meta = {"zoo": {"name": name, "train": {
            "data": "GlyphScenes (tpunlearn.data.writers.write_yolo_dataset)", "scenes": counts, "imgsz": imgsz,
            "epochs": epochs, "batch_size": batch_size, "seed": seed,
            "recipe": "ultralytics YOLO.train defaults (optimizer auto, mosaic, hsv, scale 0.5), fliplr 0",
            "n_params": sum(p.numel() for p in model.parameters()), "test_ap50": ap50,
            "test_map50": round(float(box.map50), 4), "test_map50_95": round(float(box.map), 4),
            "n_test": counts["test"], "train_seconds": round(train_seconds, 1),
            "seconds": round(time.time() - t0, 1), "torch": str(torch.__version__), "ultralytics": ul_version}}}
        return model, info, meta
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# glyphscenes-deeplabv3 on one CPU thread: a step of 16 scenes took 0.40 s on the idle machine and 2.8-3.4 s
# (fp32) or 0.7-1.7 s (bf16 autocast) with five engineers on its two cores, so 2 epochs of 12000 scenes (1500
# steps, bf16) take 20-40 minutes there. lr 0.05, not the reference's 0.02: from scratch on 2400 scenes (150
# steps), val loss 0.42 against 0.46
DEEPLAB_DEFAULTS = {"epochs": 2, "n_train": 12000, "batch_size": 16, "lr": 0.05}
DEEPLAB_RECIPE = ("torchvision references/segmentation/train.py: SGD momentum 0.9, weight decay 1e-4 (aux head "
                  "at 10x lr), PolynomialLR power 0.9 per step, per-pixel cross-entropy + 0.5 x aux head when "
                  "present; no flips (a mirrored letter is another glyph) and no resize/crop: fresh scenes instead")


def sgd_poly(model: torch.nn.Module, lr: float, steps_per_epoch: int, epochs: int) -> tuple[torch.optim.Optimizer,
                                                                                             Any]:
    """torchvision's segmentation reference optimizer: SGD (momentum 0.9, weight decay 1e-4; an aux head's
    parameters at 10x the learning rate) and ``PolynomialLR(power=0.9)`` over every step of training."""
    aux = [p for n, p in model.named_parameters() if n.startswith("aux_classifier.")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("aux_classifier.")]
    groups: list[dict[str, Any]] = [{"params": rest}] + ([{"params": aux, "lr": lr * 10}] if aux else [])
    opt = torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=1e-4)
    return opt, torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=steps_per_epoch * epochs, power=0.9)


def train_glyphscenes_deeplabv3(name: str, epochs: int, seed: int, n_train: int, lr: float, batch_size: int,
                                device: str = "cpu", n_val: int = 500, n_test: int = 1000,
                                amp: bool = True) -> tuple[Any, Any]:
    """torchvision's segmentation recipe (:func:`sgd_poly`) on GlyphScenes masks (0 background, ``c + 1`` for
    class ``c``), through train_zoo's shared segmenter loop; returns ``(model, info)`` for the adapter's save."""
    from train_zoo import SegmenterFit, train_segmenter  # the shared loop (this module is train_zoo's helper)

    t0 = time.time()
    size = int(zoo.entry(name).input_size[-1])
    train, val, test = (GlyphScenes(split, size=size, n_scenes=n, seed=seed if split == "train" else 0)
                        for split, n in (("train", n_train), ("val", n_val), ("test", n_test)))
    print(f"data: {len(train)} train / {len(val)} val / {len(test)} test GlyphScenes at {size}px in "
          f"{time.time() - t0:.0f}s", flush=True)
    fit = SegmenterFit(epochs, seed, lr, batch_size, sgd_poly, augment=None, aux_weight=0.5,
                       log_every=max(1, n_train // batch_size // 10), amp=amp)
    model, info = train_segmenter(name, (train.pixels, train.masks), (val.pixels, val.masks),
                                  (test.pixels, test.masks), fit, {
                                      "data": "GlyphScenes (masks: 0 background, c + 1 for class c), [0, 1] RGB",
                                      "recipe": DEEPLAB_RECIPE, "optimizer": "SGD momentum 0.9 wd 1e-4",
                                      "schedule": "PolynomialLR power 0.9 per step", "augment": "none"}, device)
    print(f"in all {time.time() - t0:.0f}s", flush=True)
    info.extra["zoo"]["train"]["seconds"] = round(time.time() - t0, 1)
    return model, info
