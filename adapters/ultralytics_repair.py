"""Repair of a pruned YOLO detector through ultralytics' own ``DetectionTrainer``, the pruned module kept.

``YOLO.train()`` rebuilds the network from its YAML and copies only the tensors whose shapes
match, which silently undoes a pruning. Here the trainer is handed the pruned ``DetectionModel``
itself (the way torch-pruning's YOLOv8 example does: ``trainer.model`` is set, so its
``setup_model`` has nothing to build), and:

* it trains a copy; the FP32 EMA that ultralytics would ship is loaded back into the caller's
  model (ultralytics' own checkpoints are half precision, and none is written: ``save`` is off);
* the parameter count and every tensor shape are asserted after training (a :class:`PlanError`
  when they changed);
* mask-mode channels (``plan.zero_ops()``) are zeroed again after every optimizer step, before
  the EMA reads the weights, and once more at the end;
* AMP is off, validation and plots are off, its logging and progress bars are silenced, and its
  run folder is a temp folder (no ``runs/`` in the caller's cwd).

What it optimises (:data:`OBJECTIVES`): ultralytics' detection loss on the retained classes with
the forget class's boxes dropped from every batch, so no anchor is assigned to them, and

* ``negatives``: the forget boxes' anchors are background, every score column gets its usual
  loss (the forget class's column is pushed down everywhere);
* ``masked``: the forget class's score column gets no loss at all (only the retained ones train);
* ``+distil`` (either objective): a distillation term toward the original model's class scores on
  the retained classes, every anchor (BCE to the original's sigmoid, ``original`` in eval mode,
  no grad).
"""
from __future__ import annotations

import contextlib
import copy
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from tpunlearn.data.yolo import quiet
from tpunlearn.errors import DataError, PlanError, UsageError

from .ultralytics_io import labels_cache_in_ours

OBJECTIVES = ("negatives", "masked", "negatives+distil", "masked+distil")
DEFAULT_OBJECTIVE = "negatives+distil"
DISTIL_GAIN = 1.0  # weight of the distillation term, in units of ultralytics' cls loss gain
# ultralytics' augmentation settings that a repair takes over from the model's own training run
AUGMENT_KEYS = ("hsv_h", "hsv_s", "hsv_v", "degrees", "translate", "scale", "shear", "perspective", "flipud",
                "fliplr", "mosaic", "mixup", "copy_paste")


def train_pruned(model: nn.Module, data: str, imgsz: int, forget: Sequence[int], *,
                 original: nn.Module | None = None, epochs: int = 1, lr: float = 1e-4, zero_ops: Any = None,
                 seed: int = 0, objective: str = DEFAULT_OBJECTIVE, batch: int = 32, fraction: float = 1.0,
                 freeze_norms: bool = True, progress: bool = False) -> dict[str, Any]:
    """Fine-tune the pruned ``model`` in place with ultralytics' trainer on the ``train`` split of the
    dataset YAML ``data``; return a summary (epochs, steps, images, losses, seconds, parameter counts).

    ``fraction`` is ultralytics' own (a share of the training images). ``freeze_norms`` keeps the
    BatchNorm statistics those of the full training run (as :func:`tpunlearn.repair.repair` does).
    """
    if objective not in OBJECTIVES:
        raise UsageError(f"unknown repair objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    if epochs < 0 or lr <= 0:
        raise UsageError(f"repair needs epochs >= 0 and lr > 0, got epochs={epochs}, lr={lr}")
    distil = objective.endswith("+distil")
    if distil and original is None:
        raise UsageError(f"the {objective!r} repair distils from the original model: pass original=")
    n_before = _n_params(model)
    summary: dict[str, Any] = {"trainer": "ultralytics DetectionTrainer (the pruned module itself)",
                               "objective": objective, "epochs": epochs, "lr": lr, "params_before": n_before}
    if epochs == 0:
        return {**summary, "steps": 0, "images": 0, "params_after": n_before, "seconds": 0.0}
    t0 = time.perf_counter()
    work = copy.deepcopy(model).float()
    teacher = original if distil else None
    with tempfile.TemporaryDirectory(prefix="tpunlearn-repair-") as tmp, _eval_mode(teacher):
        train_yaml = _train_only_yaml(data, Path(tmp))
        overrides = _overrides(model, train_yaml, imgsz, epochs, lr, seed, batch, fraction, Path(tmp))
        with quiet():  # its argument table and device banner
            trainer = _trainer_class()(overrides=overrides)
        trainer.setup(work, forget=[int(c) for c in forget], objective=objective, teacher=teacher,
                      zero_ops=zero_ops or {}, freeze_norms=freeze_norms, progress=progress)
        try:
            with quiet(), labels_cache_in_ours():
                trainer.train()
        except (FileNotFoundError, RuntimeError) as exc:
            if isinstance(exc, RuntimeError) and "out of memory" not in str(exc).lower() and \
                    "no images" not in str(exc).lower():
                raise
            raise DataError(f"repair could not train on {data}: {str(exc).splitlines()[0]}") from None
        finally:
            trainer.close_bar()
        trained = trainer.ema.ema if trainer.ema is not None else work
    _load_back(model, trained, zero_ops or {})
    losses = trainer.losses
    tail = max(1, len(losses) // 10)
    images = len(trainer.train_loader.dataset) * epochs
    return {**summary, "steps": trainer.steps, "images": images, "batch": batch,
            "optimised": _optimised(objective, forget), "data": str(data),
            "loss_first": round(sum(losses[:tail]) / tail, 4) if losses else None,
            "loss_last": round(sum(losses[-tail:]) / tail, 4) if losses else None,
            "loss_items_last": {k: round(float(v), 4) for k, v in (trainer.last_items or {}).items()},
            "params_after": _n_params(model), "seconds": round(time.perf_counter() - t0, 2),
            "weights": "FP32 EMA of ultralytics' trainer", "norms": "frozen" if freeze_norms else "trained"}


def _optimised(objective: str, forget: Sequence[int]) -> str:
    what = {"negatives": "ultralytics' detection loss; forget-class boxes removed from the labels (background)",
            "masked": "ultralytics' detection loss; forget-class boxes out of the assignment, their score column "
                      "given no loss"}[objective.split("+")[0]]
    if objective.endswith("+distil"):
        what += "; plus distillation toward the original model's class scores on the retained classes"
    return f"{what} (forget classes {list(map(int, forget))})"


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@contextlib.contextmanager
def _eval_mode(module: nn.Module | None) -> Iterator[None]:
    """The original model in eval mode for the block (it is only read, under no_grad), then as it was."""
    was = module.training if module is not None else False
    try:
        if module is not None:
            module.eval()
        yield
    finally:
        if module is not None:
            module.train(was)


def _load_back(model: nn.Module, trained: nn.Module, zero_ops: Any) -> None:
    """The trained weights into ``model`` (FP32), after checking that no shape changed."""
    from tpunlearn.plan import zero_channels

    before = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    after = {k: tuple(v.shape) for k, v in trained.state_dict().items()}
    if before != after or _n_params(trained) != _n_params(model):
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        raise PlanError(f"ultralytics' trainer changed the pruned model ({_n_params(model)} -> "
                        f"{_n_params(trained)} parameters; first changed tensor: {changed[0] if changed else '?'})")
    device = next(model.parameters()).device
    model.load_state_dict({k: v.detach().float().to(device) if torch.is_floating_point(v) else v.to(device)
                           for k, v in trained.state_dict().items()})
    zero_channels(model, zero_ops)
    model.eval()


def _overrides(model: nn.Module, data: str, imgsz: int, epochs: int, lr: float, seed: int, batch: int,
               fraction: float, tmp: Path) -> dict[str, Any]:
    """The trainer's arguments: AdamW at ``lr``, no warm-up, no weight decay, FP32, nothing saved or
    validated, the model's own augmentation settings (its ``train_args``) and a temp run folder."""
    from ultralytics.cfg import DEFAULT_CFG_DICT

    from .ultralytics_io import device_arg

    args = getattr(model, "args", None)
    own = {k: args[k] for k in AUGMENT_KEYS if isinstance(args, dict) and k in args}
    fixed = {"model": _model_name(model), "data": str(data), "imgsz": int(imgsz), "epochs": int(epochs),
             "batch": int(batch), "nbs": int(batch), "device": device_arg(model), "workers": 0, "seed": int(seed),
             "deterministic": True, "project": str(tmp), "name": "repair", "exist_ok": True, "plots": False,
             "val": False, "save": False, "amp": False, "pretrained": False, "cache": False, "verbose": False,
             "optimizer": "AdamW", "lr0": float(lr), "lrf": 1.0, "momentum": 0.9, "weight_decay": 0.0,
             "warmup_epochs": 0.0, "cls_pw": 0.0, "fraction": float(fraction), "patience": 0, "close_mosaic": 10}
    return {**{k: DEFAULT_CFG_DICT[k] for k in AUGMENT_KEYS}, **own, **fixed}


def _train_only_yaml(data: str, tmp: Path) -> str:
    """A dataset YAML whose ``val`` is its ``train`` split (never validated: only the trainer needs one),
    absolute paths, so ultralytics reads neither the user's val split nor anything relative to the cwd."""
    import yaml

    from tpunlearn.data.yolo import read_dataset, split_images

    parsed = read_dataset(Path(data), split="train")
    split_images(parsed, "train")
    train = parsed["train"]
    train = [str(t) for t in train] if isinstance(train, (list, tuple)) else str(train)
    names = {int(k): str(v) for k, v in dict(enumerate(parsed["names"]) if isinstance(parsed["names"], list)
                                              else parsed["names"]).items()}
    out = tmp / "repair-data.yaml"
    out.write_text(yaml.safe_dump({"train": train, "val": train, "names": names}, sort_keys=False))
    return str(out)


def _model_name(model: nn.Module) -> str:
    """What the trainer's ``model`` argument names (never built: the pruned module is handed over)."""
    cfg = getattr(model, "yaml", None)
    name = cfg.get("yaml_file") if isinstance(cfg, dict) else None
    return str(name) if name else "yolov5n.yaml"


def _trainer_class() -> type:
    """A ``DetectionTrainer`` that trains the module it is handed and never writes a checkpoint."""
    from ultralytics.models.yolo.detect import DetectionTrainer

    class PrunedTrainer(DetectionTrainer):
        model: Any  # the module handed over (ultralytics types it as the name of a weights file)
        def setup(self, model: nn.Module, *, forget: list[int], objective: str, teacher: nn.Module | None,
                  zero_ops: Any, freeze_norms: bool, progress: bool) -> None:
            """Hand over the pruned module (``setup_model`` then builds nothing) and the repair's settings."""
            self.model = model
            self.forget, self.objective, self.teacher = forget, objective, teacher
            self.zero_ops, self.freeze_norms = zero_ops, freeze_norms
            self.losses: list[float] = []
            self.last_items: dict[str, Any] | None = None
            self.steps = 0
            self.bar: Any = None
            self.add_callback("on_train_batch_end", _record)
            self.add_callback("on_train_start", lambda tr: tr.open_bar(progress))

        def set_model_attributes(self) -> None:
            super().set_model_attributes()
            # the criterion that trains retained classes only (DetectionModel.loss uses it when set)
            self.model.criterion = _retained_loss(self.model, self.forget, self.objective, self.teacher)

        def _model_train(self) -> None:
            super()._model_train()
            if self.freeze_norms:
                for m in self.model.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()

        def optimizer_step(self) -> None:
            """ultralytics' step, then the mask-mode zeros, then the EMA (which so never sees them regrow)."""
            from tpunlearn.plan import zero_channels

            ema, self.ema = self.ema, None
            try:
                super().optimizer_step()
            finally:
                self.ema = ema
            zero_channels(self.model, self.zero_ops)
            if self.ema is not None:
                self.ema.update(self.model)

        def validate(self) -> tuple[dict[str, Any], None]:
            return {}, None  # a repair is judged by tpunlearn's evaluation, not in the loop

        def save_model(self) -> bool:
            return False  # the FP32 EMA goes back into the caller's model; no half-precision file

        def final_eval(self) -> None:
            return None

        def _clear_memory(self, threshold: float | None = None) -> None:
            if self.device.type != "cpu":  # on CPU it is a full gc.collect() per epoch and nothing more
                super()._clear_memory(threshold)

        def save_metrics(self, metrics: dict[str, Any]) -> None:
            return None

        def open_bar(self, progress: bool) -> None:
            from tqdm.auto import tqdm

            total = len(self.train_loader) * self.epochs
            self.bar = tqdm(total=total, desc="repair", unit="batch", disable=not progress, leave=False)

        def close_bar(self) -> None:
            if self.bar is not None:
                self.bar.close()

    return PrunedTrainer


def _record(trainer: Any) -> None:
    """Per batch: the loss, the step and image counts, the progress bar."""
    items = trainer.loss_items
    if items:
        trainer.last_items = {k: float(v) for k, v in items.items()}
        trainer.losses.append(float(sum(trainer.last_items.values())))
    trainer.steps += 1
    if trainer.bar is not None:
        trainer.bar.update(1)


def _retained_loss(model: nn.Module, forget: list[int], objective: str, teacher: nn.Module | None) -> Any:
    """ultralytics' ``v8DetectionLoss`` on retained targets (see the module docstring)."""
    from ultralytics.utils.loss import v8DetectionLoss

    class RetainedLoss(v8DetectionLoss):
        forget: torch.Tensor
        retained: list[int]
        teacher: nn.Module | None
        hyp: Any  # ultralytics' training arguments (a namespace)
        def loss(self, preds: dict[str, torch.Tensor], batch: dict[str, Any]) -> tuple[torch.Tensor, dict]:
            batch = _without(batch, self.forget)
            bs = preds["boxes"].shape[0]
            _, loss, items = self.get_assigned_targets_and_loss(preds, batch)
            if self.teacher is None:
                return loss * bs, items
            kd = self.distil_loss(self.teacher, preds["scores"], batch["img"])
            return torch.cat([loss, kd.view(1)]) * bs, {**items, "kd_loss": kd.detach()}

        def __deepcopy__(self, memo: dict[int, Any]) -> RetainedLoss:
            return self  # ultralytics' EMA copies the model, criterion included: never the original model in it

        def distil_loss(self, teacher: nn.Module, scores: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
            """BCE of the retained score columns to the original's sigmoid, normalised like the cls loss."""
            with torch.no_grad():
                out = teacher(images.to(next(teacher.parameters()).device))
                target = self.parse_output(out)["scores"][:, self.retained].sigmoid().to(scores.device)
            bce = self.bce(scores[:, self.retained], target.to(scores.dtype))
            return DISTIL_GAIN * self.hyp.cls * bce.sum() / target.sum().clamp(min=1.0)

    crit = RetainedLoss(model)
    crit.forget = torch.tensor(sorted(set(forget)), dtype=torch.long)
    crit.retained = [c for c in range(crit.nc) if c not in set(forget)]
    crit.teacher = teacher  # read in place, never moved or copied (it is the caller's model)
    if objective.startswith("masked"):
        weights = torch.ones(crit.nc, device=crit.device)
        weights[crit.forget.to(crit.device)] = 0.0
        crit.class_weights = weights.view(1, 1, -1)
    return crit


def _without(batch: dict[str, Any], forget: torch.Tensor) -> dict[str, Any]:
    """The batch with the forget classes' boxes dropped (they join no assignment)."""
    cls = batch["cls"].view(-1)
    keep = ~torch.isin(cls.long(), forget.to(cls.device))
    if bool(keep.all()):
        return batch
    return {**batch, "cls": batch["cls"][keep], "bboxes": batch["bboxes"][keep], "batch_idx": batch["batch_idx"][keep]}



SILENCED_LOGIT = -20.0  # sigmoid(-20) ~ 2e-9: below any confidence floor (ultralytics validates from 0.001)


def silence_forget(model: nn.Module, forget: Sequence[int], logit: float = SILENCED_LOGIT) -> list[str]:
    """The forget classes' rows of the class branch's last 1x1 conv at every scale (``cv3[i][-1]``) set to
    weight 0 and bias ``logit``: their scores never pass a confidence floor. An output-level edit, shapes
    and ``nc`` kept; the features before it are untouched. Returns the convs edited."""
    from tpunlearn.calibrate import silence

    from .ultralytics_io import detect_head

    names = {id(m): n for n, m in model.named_modules()}
    layers = []
    for branch in detect_head(model).cv3:
        conv = cast(nn.Sequential, branch)[-1]
        if not isinstance(conv, nn.Conv2d) or conv.bias is None:
            raise PlanError(f"the Detect head's class output {names.get(id(conv), '?')} is not a biased Conv2d")
        layers.append(names[id(conv)])
    return silence(model, layers, forget, logit)  # the same row edit the family's calibration makes
