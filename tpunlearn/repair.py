"""A short repair fine-tune of a pruned model on retained data.

It trains the pruned module itself, in place: the default of every family's
``Adapter.repair`` (timm, DeepLab). A family's own trainer may rebuild the network from its
config (ultralytics' ``YOLO.train()`` does) and silently undo the pruning; the yolov5 family
therefore hands ultralytics' ``DetectionTrainer`` the pruned module itself instead
(adapters/ultralytics_repair.py) and asserts the parameter count after training. In mask mode
(and for ``coupled=zero`` groups) the zeroed channels are zeroed again after every step, so
training cannot regrow them.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sized
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from tpunlearn.errors import DataError, UsageError
from tpunlearn.plan import PrunePlan, zero_channels
from tpunlearn.torchutils import NORM_TYPES, model_device

LossFn = Callable[[Any, Any], torch.Tensor]  # (model output, batch) -> scalar loss


def repair(model: nn.Module, batches: Iterable[Any], loss_fn: LossFn, epochs: int = 1, lr: float = 1e-4,
           plan: PrunePlan | None = None, seed: int = 0, freeze_norms: bool = True,
           progress: bool = True) -> dict[str, Any]:
    """Fine-tune ``model`` in place for ``epochs`` passes over ``batches``; return a summary.

    ``batches`` must be re-iterable (a DataLoader) and yield ``(images, ...)`` tuples;
    ``loss_fn(output, batch)`` gives the loss. AdamW with a cosine decay over the run, no
    weight decay (a repair should move the weights little). ``freeze_norms`` keeps the
    normalisation layers in eval mode, so their running statistics stay those of the full
    training data: on the zoo classifier, updating them from a short run on a subset raised
    the retained loss instead of lowering it. The model is left in eval mode.
    """
    if epochs < 0 or lr <= 0:
        raise UsageError(f"repair needs epochs >= 0 and lr > 0, got epochs={epochs}, lr={lr}")
    if epochs == 0:
        return {"epochs": 0, "steps": 0, "loss_first": None, "loss_last": None}
    torch.manual_seed(seed)
    device = model_device(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    steps_per_epoch = len(batches) if isinstance(batches, Sized) else None
    total = epochs * steps_per_epoch if steps_per_epoch else None
    zero_ops = plan.zero_ops() if plan is not None else {}
    losses: list[float] = []
    step = 0
    model.train()
    if freeze_norms:
        for module in model.modules():
            if isinstance(module, NORM_TYPES):
                module.eval()
    bar = tqdm(total=total, desc="repair", unit="batch", disable=not progress, leave=False)
    try:
        for _epoch in range(epochs):
            seen = 0
            for batch in batches:
                images = (batch[0] if isinstance(batch, (tuple, list)) else batch).to(device)
                if total:
                    for group in opt.param_groups:
                        group["lr"] = 0.5 * lr * (1 + math.cos(math.pi * step / total))
                loss = loss_fn(model(images), batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                zero_channels(model, zero_ops)
                losses.append(float(loss.detach()))
                step += 1
                seen += 1
                bar.update(1)
            if seen == 0:
                raise DataError("repair got no batches: no retained samples to train on")
    finally:
        bar.close()
        model.eval()
    tail = max(1, len(losses) // 10)
    return {"epochs": epochs, "steps": step, "lr": lr,
            "loss_first": sum(losses[:tail]) / tail, "loss_last": sum(losses[-tail:]) / tail}
