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
* ``Graph``: :func:`tpunlearn.unlearn` with given settings (last layer only, without
  balance, mask mode, physical), optionally followed by :func:`tpunlearn.repair.repair`.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

import tpunlearn as tu
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


def importances(model: nn.Module, batches: Iterable[Any], loss_fn: Callable[[Any, Any], torch.Tensor]) -> dict[str, torch.Tensor]:
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


class Graph:
    """tpunlearn's own request, with ``settings`` for :func:`tpunlearn.unlearn`."""

    def __init__(self, name: str, repair_epochs: int = 0, repair_lr: float = 1e-4, **settings: Any) -> None:
        self.name, self.settings = name, settings
        self.repair_epochs, self.repair_lr = repair_epochs, repair_lr

    def __call__(self, task: Task, forget: Sequence[int], seed: int) -> Outcome:
        assert task.scoring is not None
        t0 = time.perf_counter()
        res = tu.unlearn(task.model, task.scoring(seed), forget, example_inputs=task.example_inputs, progress=False,
                         **{**task.unlearn_kwargs, **self.settings})
        request_s = time.perf_counter() - t0
        info: dict[str, Any] = {"request_s": request_s, "timings_s": res.report["timings_s"],
                                "removed_channels": res.report["removed_channels"], "plan": res.plan}
        seconds = request_s
        if self.repair_epochs:
            info["pre_repair_model"] = copy.deepcopy(res.model)  # the basis a probe reads the features in (untimed)
            t1 = time.perf_counter()
            info["repair"] = repair(res.model, task.batches(forget, "retain", seed), task.loss,
                                    epochs=self.repair_epochs, lr=self.repair_lr, plan=res.plan, seed=seed,
                                    progress=False)
            seconds += time.perf_counter() - t1
        return Outcome(res.model, seconds, info)


def classification_methods(repair_epochs: int = 1) -> list[Any]:
    """The rows of the classification table, in order."""
    return [
        Original(),
        TrainAll(),
        Retrain(),
        FineTune(),
        SSD(),
        Graph("Last layer only (sigma 1)", sigma=1),
        Graph("Graph without balance", balanced=False),
        Graph("Graph(beta), mask (paper's zeroing)", mode="mask"),
        Graph("Graph(beta), physical (ours)"),
        Graph(f"Graph(beta), physical + repair ({repair_epochs} epoch)", repair_epochs=repair_epochs),
    ]
