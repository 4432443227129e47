"""The unlearning methods the comparison benchmarks run, each behind one small interface.

A method is a callable ``method(task, forget, seed) -> Outcome``: it gets the original
model (never modified) and the task's data, and returns the unlearned model with the wall
time it took. A table row is one entry of :data:`CLASSIFICATION` (or a task's own list).

* ``Original``: the model as it is.
* ``Retrain``: the zoo recipe from scratch on the training scenes without the forget
  digits (the instance-level baseline; classification only: the zoo's recipe is known).
* ``FineTune``: a few epochs on the retained training scenes (norms train too).
* ``SSD``: Selective Synaptic Dampening (Foster et al., AAAI 2024). Diagonal importances
  are batch-mean squared gradients of the training loss on the forget scenes and on all
  training scenes; parameters with ``forget > alpha * full`` are scaled by
  ``min(lambda * full / forget, 1)``. The paper's defaults: ``lambda = 1``, ``alpha = 10``.
* ``SalUn`` (Fan et al., ICLR 2024), from the original model: the gradient saliency of the
  forget loss keeps the most salient half of the weights trainable, then a short fine-tune with
  the forget labels relabelled on their samples and true labels elsewhere
  (:mod:`tpunlearn.erase`'s ``salun``, with SalUn's own threshold 0.5; its budget scaled to this
  model: ``steps`` batches of 64).
* ``Graph``: :func:`tpunlearn.unlearn` with given settings (last layer only, without
  balance, mask mode, physical), optionally followed by the erase stage
  (:func:`tpunlearn.erase.erase`) and :func:`tpunlearn.repair.repair`.
* ``Reference``: a target-level retrained model (the zoo recipe with the forget labels masked
  out of the loss, scripts/train_reference.py), loaded from its checkpoint or trained here.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

import tpunlearn as tu
from tpunlearn.erase import EraseSpec, erase
from tpunlearn.repair import repair


@dataclass
class Task:
    """What every method needs to know about one model and its data."""

    name: str
    model: nn.Module  # the original, eval mode; never modified
    example_inputs: torch.Tensor
    loss: Callable[[Any, Any], torch.Tensor]  # (output, batch) -> training loss
    batches: Callable[[Sequence[int], str, int], Iterable[Any]]  # (forget, "forget"|"retain"|"all", seed)
    unlearn_kwargs: dict[str, Any] = field(default_factory=dict)  # target, ignored layers, output transform...
    scoring: Callable[[int], Iterable[Any]] | None = None  # seed -> (images, multi_hot) batches for scoring
    retrain: Callable[[Sequence[int], int], nn.Module] | None = None  # (forget, seed) -> model from scratch
    reference: Callable[[Sequence[int], int], tuple[nn.Module, float]] | None = None  # -> (model, training s)
    kind: str = "multilabel"  # how the erase stage and SalUn read the output
    guard: Iterable[Any] | None = None  # held-out (never trained on) batches for the features erase's guard


@dataclass
class Outcome:
    model: nn.Module
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)


class Original:
    name = "Original"

    def __call__(self, task: Task, forget: Sequence[int], seed: int) -> Outcome:
        return Outcome(task.model, 0.0)


class Retrain:
    name = "Retrain without the forget scenes"

    def __call__(self, task: Task, forget: Sequence[int], seed: int) -> Outcome:
        if task.retrain is None:
            raise NotImplementedError(f"no retraining recipe for {task.name}")
        t0 = time.perf_counter()
        model = task.retrain(forget, seed)
        return Outcome(model, time.perf_counter() - t0)


class TrainAll:
    """Control for ``Retrain``: the same recipe and budget on every scene (forget ones too),
    trained once per seed, so that the cost of the budget and the cost of dropping the
    forget scenes can be told apart."""

    name = "Train from scratch on all scenes (control)"

    def __init__(self) -> None:
        self._models: dict[int, tuple[nn.Module, float]] = {}

    def __call__(self, task: Task, forget: Sequence[int], seed: int) -> Outcome:
        if task.retrain is None:
            raise NotImplementedError(f"no training recipe for {task.name}")
        if seed not in self._models:
            t0 = time.perf_counter()
            self._models[seed] = (task.retrain((), seed), time.perf_counter() - t0)
        model, seconds = self._models[seed]
        return Outcome(model, seconds)


class FineTune:
    def __init__(self, epochs: int = 2, lr: float = 1e-3) -> None:
        self.epochs, self.lr = epochs, lr
        self.name = f"Fine-tune on retained scenes ({epochs} epochs, lr {lr:g})"

    def __call__(self, task: Task, forget: Sequence[int], seed: int) -> Outcome:
        t0 = time.perf_counter()
        model = copy.deepcopy(task.model)
        info = repair(model, task.batches(forget, "retain", seed), task.loss, epochs=self.epochs, lr=self.lr,
                      seed=seed, freeze_norms=False, progress=False)
        return Outcome(model, time.perf_counter() - t0, info)


class SSD:
    def __init__(self, alpha: float = 10.0, lam: float = 1.0) -> None:
        self.alpha, self.lam = alpha, lam
        self.name = f"SSD (alpha {alpha:g}, lambda {lam:g})"

    def __call__(self, task: Task, forget: Sequence[int], seed: int) -> Outcome:
        t0 = time.perf_counter()
        model = copy.deepcopy(task.model)
        full = importances(model, task.batches(forget, "all", seed), task.loss)
        forget_imp = importances(model, task.batches(forget, "forget", seed), task.loss)
        seconds_importance = time.perf_counter() - t0
        changed = 0
        with torch.no_grad():
            for name, p in model.named_parameters():
                f, d = forget_imp[name], full[name]
                select = f > self.alpha * d
                scale = (self.lam * d / f.clamp(min=1e-30)).clamp(max=1.0)
                p[select] *= scale[select]
                changed += int(select.sum())
        return Outcome(model, time.perf_counter() - t0,
                       {"importance_s": seconds_importance, "parameters_dampened": changed})


def importances(model: nn.Module, batches: Iterable[Any],
                loss_fn: Callable[[Any, Any], torch.Tensor]) -> dict[str, torch.Tensor]:
    """Batch-mean squared gradients of the loss per parameter (SSD's diagonal Fisher)."""
    total = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    count = 0
    model.eval()
    for batch in batches:
        model.zero_grad(set_to_none=True)
        loss_fn(model(batch[0]), batch).backward()
        for n, p in model.named_parameters():
            if p.grad is not None:
                total[n] += p.grad.detach() ** 2
        count += 1
    model.zero_grad(set_to_none=True)
    return {n: v / max(count, 1) for n, v in total.items()}


class Reference:
    """The target-level retrained reference: every scene kept, the forget labels masked out of the loss."""

    name = "Retrain, target-level (forget labels masked; reference)"

    def __call__(self, task: Task, forget: Sequence[int], seed: int) -> Outcome:
        if task.reference is None:
            raise NotImplementedError(f"no reference recipe for {task.name}")
        model, seconds = task.reference(forget, seed)
        return Outcome(model, seconds, {"reference": True})


class SalUn:
    """SalUn from the original model (no pruning): saliency mask, then relabelled fine-tuning."""

    def __init__(self, steps: int = 200, lr: float = 1e-4) -> None:
        self.steps, self.lr = steps, lr
        self.name = f"SalUn (mask 0.5, {steps} steps, lr {lr:g})"

    def __call__(self, task: Task, forget: Sequence[int], seed: int) -> Outcome:
        t0 = time.perf_counter()
        model = copy.deepcopy(task.model)
        info = erase(model, task.model, task.batches(forget, "all", seed), forget,
                     spec=EraseSpec("salun", steps=self.steps, lr=self.lr), task=task.kind, seed=seed)  # type: ignore[arg-type]
        return Outcome(model, time.perf_counter() - t0, {"erase": info})


class Graph:
    """tpunlearn's own request, with ``settings`` for :func:`tpunlearn.unlearn`, optionally followed by the
    erase stage (``erase``: a method of :mod:`tpunlearn.erase`) and a repair fine-tune."""

    def __init__(self, name: str, repair_epochs: int = 0, repair_lr: float = 1e-4, erase: EraseSpec | None = None,
                 **settings: Any) -> None:
        self.name, self.settings = name, settings
        self.repair_epochs, self.repair_lr, self.erase = repair_epochs, repair_lr, erase

    def __call__(self, task: Task, forget: Sequence[int], seed: int) -> Outcome:
        assert task.scoring is not None
        t0 = time.perf_counter()
        res = tu.unlearn(task.model, task.scoring(seed), forget, example_inputs=task.example_inputs, progress=False,
                         **{**task.unlearn_kwargs, **self.settings})
        request_s = time.perf_counter() - t0
        info: dict[str, Any] = {"request_s": request_s, "timings_s": res.report["timings_s"],
                                "removed_channels": res.report["removed_channels"], "plan": res.plan}
        seconds = request_s
        if self.erase is not None:
            info["pre_repair_model"] = copy.deepcopy(res.model)  # the pruned basis for the fixed probe (untimed)
            t1 = time.perf_counter()
            spec = self.erase if self.erase.guard is not None else replace(self.erase, guard=task.guard)
            info["erase"] = erase(res.model, task.model, task.batches(forget, "all", seed), forget, spec=spec,
                                  task=task.kind, plan=res.plan, seed=seed)  # type: ignore[arg-type]
            info["erase_s"] = time.perf_counter() - t1
            seconds += info["erase_s"]
        if self.repair_epochs:
            info["pre_repair_model"] = copy.deepcopy(res.model)  # the basis a probe reads the features in (untimed)
            t1 = time.perf_counter()
            info["repair"] = repair(res.model, task.batches(forget, "retain", seed), task.loss,
                                    epochs=self.repair_epochs, lr=self.repair_lr, plan=res.plan, seed=seed,
                                    progress=False)
            seconds += time.perf_counter() - t1
        return Outcome(res.model, seconds, info)


ERASE_ROWS = {"distill": EraseSpec("distill"), "project": EraseSpec("project"), "salun": EraseSpec("salun"),
              "features": EraseSpec("features"),
              # what the retained guard holds back: the same method left to run its 100 steps
              "features, no guard": EraseSpec("features", retain_drop=1.0)}


def erase_methods() -> list[Any]:
    """The rows "Graph + erase(METHOD)", one per erase candidate, with the stage's own defaults."""
    return [Graph(f"Graph(beta), physical + erase({name})", erase=spec) for name, spec in ERASE_ROWS.items()]


def classification_methods(repair_epochs: int = 1) -> list[Any]:
    """The rows of the classification table, in order."""
    return [
        Original(),
        TrainAll(),
        Retrain(),
        FineTune(),
        SSD(),
        SalUn(),
        Graph("Last layer only (sigma 1)", sigma=1),
        Graph("Graph without balance", balanced=False),
        Graph("Graph(beta), mask (paper's zeroing)", mode="mask"),
        Graph("Graph(beta), physical (ours)"),
        Graph(f"Graph(beta), physical + repair ({repair_epochs} epoch)", repair_epochs=repair_epochs),
        *erase_methods(),
        Reference(),  # last: its checkpoint is often still training (scripts/train_reference.py) when a run starts
    ]
