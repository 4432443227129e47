"""``unlearn``: the whole pipeline behind one call.

samples -> scores -> essential graph per target -> balanced graph -> plan -> pruned copy.
The input model is never modified (nor its training flags): one trained model can serve
many requests.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from tpunlearn.calibrate import Calibration
from tpunlearn.calibrate import calibrate as calibrate_outputs
from tpunlearn.distributed import is_main, resolve_device, world
from tpunlearn.erase import EraseSpec
from tpunlearn.errors import DataError, PlanError, UsageError
from tpunlearn.graph import BalancedGraph, balance, essential_graph, layer_links
from tpunlearn.layers import candidate_layers, names_of, prunable_layers
from tpunlearn.plan import PrunePlan, close_groups, make_plan
from tpunlearn.report import unlearn_report
from tpunlearn.scoring import ChannelScores, score_channels
from tpunlearn.settings import DEFAULTS, UNSET, Coupled, Method, Mode, UnlearnSettings, Unset
from tpunlearn.targets import ClassLogit, TargetFactory
from tpunlearn.torchutils import forward, main_tensor, model_device, to_device
from tpunlearn.tracing import build_dependency_graph, output_layers

Samples = Iterable[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class UnlearnResult:
    """What :func:`unlearn` returns: the new model and everything that explains it."""

    model: nn.Module
    plan: PrunePlan
    graph: BalancedGraph
    scores: ChannelScores
    report: dict[str, Any]
    settings: UnlearnSettings = DEFAULTS  # the settings the request ran with


def unlearn(model: nn.Module, samples: Samples | None, forget: Sequence[int] | int, target: TargetFactory = ClassLogit,
            example_inputs: Any = None, sigma: int | Unset = UNSET, delta: float | Unset = UNSET,
            retain: Sequence[int] | None = None, retain_tolerance: float | Unset = UNSET,
            n_per_target: int | Unset = UNSET, mode: Mode | Unset = UNSET, coupled: Coupled | Unset = UNSET,
            ignored_layers: Sequence[nn.Module | str] | None = None, retain_delta: float | None | Unset = UNSET,
            method: Method | Unset = UNSET, group_closure: bool | Unset = UNSET, balanced: bool | Unset = UNSET,
            align: int | None | Unset = UNSET, scores: ChannelScores | None = None, num_targets: int | None = None,
            output_transform: Callable[[Any], Any] | None = None, progress: bool = True,
            device: str | torch.device | None = None, settings: UnlearnSettings | None = None,
            calibrate: Calibration | None = None, erase: EraseSpec | str | None = None) -> UnlearnResult | None:
    """Forget ``forget`` targets from ``model``; return a new, pruned model.

    Args:
        model: the trained model; it is copied, never changed (its training flags included).
        samples: ``(images, multi_hot)`` batches, ``multi_hot[i, t]`` marking that image ``i`` holds
            target ``t`` (class-index labels work too); may be None when ``scores`` is given.
        forget: the target index, or indices, to forget.
        target: builds ``Y_t`` for a class index (ClassLogit, SegmentationLogit, DetectionScore).
        example_inputs: an input batch to trace the model with (default: the first sample's image).
        retain: the targets to keep (default: every other target; those in no sample are left out).
        ignored_layers: modules or qualified names that never lose output channels (heads).
        scores: cached channel scores (:func:`score_targets`): scoring is skipped.
        num_targets: how many targets there are (default: the labels' width, or the model's output).
        output_transform: the part of the output torch-pruning traces (default: the main tensor).
        progress: show a progress bar while scoring.
        device: ``cpu``, ``cuda`` or ``cuda:N``, where the copy is scored, planned, pruned and
            lives afterwards (default: the model's own); the input model stays where it is.
        settings: the algorithm's settings (default ``UnlearnSettings()``).
        calibrate: refit the retained targets' rows of these output layers toward the original
            after pruning (:mod:`tpunlearn.calibrate`; forward passes over ``samples``, no training).
        erase: after pruning (and calibrating), erase what is left of the forget targets from the
            surviving channels (:mod:`tpunlearn.erase`: a method name, or an :class:`EraseSpec`
            with a budget and its own labelled ``data``; default data: ``samples``, which must then
            be re-iterable). Classifiers (one ``(N, C)`` logit output) and segmenters (per-pixel
            logits, with ``(images, masks)`` batches as ``EraseSpec(data=...)``); a detector's erase
            stage is its family's (``Adapter.erase``). ``report["erase"]`` says what it changed.
        sigma, delta, retain_delta, retain_tolerance, n_per_target, mode, coupled, method,
            group_closure, balanced, align: the :class:`~tpunlearn.settings.UnlearnSettings` field
            of that name. A keyword given here overrides ``settings``; one left out keeps its value.

    Returns:
        The :class:`UnlearnResult`. Inside a torchrun script with a process group initialised,
        every rank passes the same samples and scores its share of them (see ``score_channels``);
        rank 0 alone plans and prunes and gets the result, the other ranks get None.
    """
    chosen = (settings or DEFAULTS).override(
        sigma=sigma, delta=delta, retain_delta=retain_delta, retain_tolerance=retain_tolerance,
        n_per_target=n_per_target, mode=mode, coupled=coupled, method=method, group_closure=group_closure,
        balanced=balanced, align=align)
    forget = _forget_list(forget)
    device = resolve_device(device) if device is not None else model_device(model)
    implicit_retain = retain is None
    samples, example_inputs, retain = _resolve_request(model, samples, forget, retain, example_inputs, scores,
                                                       num_targets)
    if scores is not None and not is_main():
        return None  # nothing to score: the other ranks have no share of the work
    run = _Run(copy.deepcopy(model).to(device), to_device(example_inputs, device), output_transform, chosen)
    run.find_layers(_ignored_names(model, ignored_layers), dependency_graph=True)
    if scores is None:
        scores = run.score(samples, target, forget + retain, retain if implicit_retain else (), progress)
        if not is_main():
            return None
    else:
        scores = _check_cached(scores, run.work, run.layers, forget + ([] if implicit_retain else retain))
    graph, plan, report = run.prune(model, scores, forget, retain, {"device": str(device), "ranks": world()[1]})
    if calibrate is not None:
        report["calibration"] = _calibrated(model, run.work, samples, calibrate, retain, report, forget)
    if erase is not None:
        report["erase"] = _erased(model, run.work, samples, erase, forget, plan, report)
    return UnlearnResult(model=run.work, plan=plan, graph=graph, scores=scores, report=report, settings=chosen)


def score_targets(model: nn.Module, samples: Samples, target: TargetFactory = ClassLogit,
                  targets: Sequence[int] | None = None, example_inputs: Any = None, sigma: int | Unset = UNSET,
                  n_per_target: int | Unset = UNSET, ignored_layers: Sequence[nn.Module | str] | None = None,
                  method: Method | Unset = UNSET, group_closure: bool | Unset = UNSET, num_targets: int | None = None,
                  output_transform: Callable[[Any], Any] | None = None, progress: bool = True,
                  device: str | torch.device | None = None, settings: UnlearnSettings | None = None) -> ChannelScores:
    """Score every target once (default: all of them), for later requests without scoring.

    The result feeds ``unlearn(..., scores=...)``: a forget request then only balances, plans
    and prunes. The model is never changed. Under torch.distributed every rank passes the same
    samples, scores its share, and gets the scores of all of them.

    Args:
        model, samples, target, example_inputs, ignored_layers, num_targets, output_transform,
            progress, settings: as for :func:`unlearn`.
        targets: the targets to score (default: every target, leaving out those in no sample).
        device: where scoring runs (default: the model's own); a model elsewhere is copied
            there, never moved.
        sigma, n_per_target, method, group_closure: the ``UnlearnSettings`` field of that name,
            overriding ``settings`` when given (the other settings do not affect scoring).
    """
    chosen = (settings or DEFAULTS).override(sigma=sigma, n_per_target=n_per_target, method=method,
                                             group_closure=group_closure)
    batches, example_inputs, all_targets = _resolve_request(model, samples, [], None, example_inputs, None,
                                                            num_targets)
    device = resolve_device(device) if device is not None else model_device(model)
    ignored = _ignored_names(model, ignored_layers)
    run = _Run(model if model_device(model) == device else copy.deepcopy(model).to(device),
               to_device(example_inputs, device), output_transform, chosen)
    run.find_layers(ignored, dependency_graph=chosen.group_closure)
    wanted = all_targets if targets is None else [int(t) for t in targets]
    return run.score(batches, target, wanted, wanted if targets is None else (), progress)


@dataclass
class _Run:
    """One request's working model and what its steps share: layers, dependency graph, timings."""

    work: nn.Module
    example_inputs: Any
    output_transform: Callable[[Any], Any] | None
    settings: UnlearnSettings
    layers: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    protected_outputs: list[str] = field(default_factory=list)  # output layers found in the graph, not named
    dependency_graph: Any = None
    timings: dict[str, float] = field(default_factory=dict)

    def find_layers(self, ignored: list[str], dependency_graph: bool) -> None:
        """The last ``sigma`` prunable convs outside the ignored layers and the model's output
        layers (found in the dependency graph), closed over their torch-pruning groups when asked."""
        with _timed(self.timings, "dependency_graph"):
            self.dependency_graph = build_dependency_graph(self.work, self.example_inputs, self.output_transform)
            self.protected_outputs = [n for n in output_layers(self.work, self.dependency_graph)
                                      if not any(n == i or n.startswith(i + ".") for i in ignored)]
            self.ignored = ignored = [*ignored, *self.protected_outputs]
            self.layers = candidate_layers(self.work, self.example_inputs, self.settings.sigma, ignored)
            if dependency_graph and self.settings.group_closure:
                order = prunable_layers(self.work, self.example_inputs, ignored)
                self.layers = close_groups(self.work, self.layers, order, self.dependency_graph)

    def score(self, samples: Samples | None, target: TargetFactory, targets: list[int], optional: Iterable[int],
              progress: bool) -> ChannelScores:
        assert samples is not None  # _resolve_request refuses a request with neither samples nor scores
        with _timed(self.timings, "scoring"):
            return score_channels(self.work, samples, self.layers, {t: target(t) for t in targets},
                                  n_per_target=self.settings.n_per_target, method=self.settings.method,
                                  progress=progress, optional=optional)

    def prune(self, original: nn.Module, scores: ChannelScores, forget: list[int], retain: list[int],
              execution: dict[str, Any]) -> tuple[BalancedGraph, PrunePlan, dict[str, Any]]:
        """Balance, plan and prune the working model, check it against ``original``, and report
        (``execution``: where it ran)."""
        s, work, x, dg = self.settings, self.work, self.example_inputs, self.dependency_graph
        unscored = [t for t in retain if t not in scores.targets]
        retain = [t for t in retain if t in scores.targets]
        with _timed(self.timings, "graph"):
            links = layer_links(work, dg, self.layers)
            graphs = {t: essential_graph(scores, t, s.delta if t in forget else s.resolved_retain_delta, links)
                      for t in forget + retain}
            graph = balance(graphs, forget, retain if s.balanced else [], scores.channels,
                            s.resolved_retain_tolerance(len(retain)))
        with _timed(self.timings, "planning"):
            priority = {layer: cast(torch.Tensor, sum(scores.alpha(t, layer) for t in forget)) for layer in self.layers}
            plan = make_plan(work, graph.flagged(), graph.protected(), x, candidates=self.layers,
                             ignored_layers=self.ignored, coupled=s.coupled, mode=s.mode, priority=priority,
                             output_transform=self.output_transform, dependency_graph=dg, align=s.align)
        with _timed(self.timings, "pruning"):
            plan.apply(work, x, self.output_transform, dependency_graph=dg)
        check = verify(work, original, plan, x, self.output_transform)
        notes = [f"retained target(s) {unscored} appear in no sample: not scored, so not protected"] if unscored else []
        if self.protected_outputs:
            notes.append(f"output layer(s) {', '.join(self.protected_outputs)} found in the dependency graph: "
                         "their output channels are kept")
        report = unlearn_report(original, work, s, forget, retain, self.layers, scores, graph, plan, self.timings,
                                check, notes, execution)
        return graph, plan, report


def _calibrated(original: nn.Module, work: nn.Module, samples: Samples | None, spec: Calibration,
                retain: list[int], report: dict[str, Any], forget: Sequence[int] = ()) -> dict[str, Any]:
    """Run :func:`tpunlearn.calibrate.calibrate` on the pruned model; its time joins the report's timings."""
    if samples is None:
        raise UsageError("calibration runs both models on samples: pass samples as well as cached scores")
    done = calibrate_outputs(original, work, samples, spec, retain, forget=forget)
    report.setdefault("timings_s", {})["calibration"] = done["seconds"]
    return done


def _erased(original: nn.Module, work: nn.Module, samples: Samples | None, spec: EraseSpec | str,
            forget: list[int], plan: PrunePlan, report: dict[str, Any]) -> dict[str, Any]:
    """Run :func:`tpunlearn.erase.erase` on the pruned model; its time joins the report's timings."""
    from tpunlearn.erase import erase as erase_stage

    spec = EraseSpec(method=spec) if isinstance(spec, str) else spec
    data = spec.data if spec.data is not None else samples
    if data is None:
        raise UsageError("the erase stage trains on labelled samples: pass samples (or EraseSpec(data=...)) "
                         "as well as cached scores")
    if iter(data) is data:
        raise UsageError("the erase stage reads its samples more than once: pass a DataLoader or a list, "
                         "not a one-shot iterator")
    done = erase_stage(work, original, data, forget, spec=spec, plan=plan)
    report.setdefault("timings_s", {})["erase"] = done["seconds"]
    return done


def _forget_list(forget: Sequence[int] | int) -> list[int]:
    targets = [int(forget)] if isinstance(forget, int) else [int(t) for t in forget]
    if not targets:
        raise UsageError("forget needs at least one target")
    return targets


def _resolve_request(model: nn.Module, samples: Samples | None, forget: list[int],
                     retain: Sequence[int] | None, example_inputs: Any, scores: ChannelScores | None,
                     num_targets: int | None) -> tuple[Samples | None, Any, list[int]]:
    """Peek at the samples for the target count and an example input; validate the targets."""
    if scores is None:
        if samples is None:
            raise UsageError("samples are needed unless cached scores are given")
        samples, width = _peek(samples)
        num_targets = num_targets or width
    else:
        num_targets = num_targets or (max(scores.targets) + 1)
    if example_inputs is None:
        if samples is None:
            raise UsageError("example_inputs are needed when no samples are given")
        samples, first = _peek_batch(samples)
        example_inputs = first[0][:1]
    if not num_targets:  # class-index labels: the model's output says how many targets there are
        num_targets = int(main_tensor(forward(model, example_inputs)).shape[1])
    retain = [t for t in range(num_targets) if t not in forget] if retain is None else [int(t) for t in retain]
    bad = [t for t in forget + retain if not 0 <= t < num_targets]
    if bad:
        raise UsageError(f"target index {bad[0]} is out of range: the model has {num_targets} targets "
                         f"(0..{num_targets - 1})")
    both = sorted(set(forget) & set(retain))
    if both:
        raise UsageError(f"target(s) {both} are both forgotten and retained")
    return samples, example_inputs, retain


@contextlib.contextmanager
def _timed(timings: dict[str, float], key: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = time.perf_counter() - t0


def verify(pruned: nn.Module, original: nn.Module, plan: PrunePlan, example_inputs: Any,
           output_transform: Callable[[Any], Any] | None = None) -> dict[str, Any]:
    """Run the pruned model and compare it with the mask-mode model where they must agree.

    The mask-mode model is the plan applied as zeroing to a copy of ``original``, made only
    when a physical plan's pruned groups are all ones where the two must agree.

    A model the tracer mis-modelled fails here, loudly, instead of being returned broken.
    """
    transform = output_transform or main_tensor
    try:
        out = transform(forward(pruned, example_inputs)).cpu()
    except Exception as exc:  # noqa: BLE001 - any failure here means a broken model
        raise PlanError(f"the pruned model no longer runs ({type(exc).__name__}: {exc}); this architecture is "
                        "mis-modelled by the tracer, try --coupled protect or a smaller sigma") from None
    ref = transform(forward(original, example_inputs)).cpu()
    if out.shape != ref.shape:
        raise PlanError(f"pruning changed the output shape from {tuple(ref.shape)} to {tuple(out.shape)}")
    if not torch.isfinite(out).all():
        raise PlanError("the pruned model produces non-finite outputs")
    result: dict[str, Any] = {"output_shape": list(out.shape)}
    pruned_decisions = [d for d in plan.decisions if d.action == "prune"]
    if plan.mode == "physical" and pruned_decisions and all(d.exact for d in pruned_decisions):
        mask_model = copy.deepcopy(original)
        replace(plan, mode="mask").apply(mask_model, example_inputs)
        masked = transform(forward(mask_model, example_inputs)).cpu()
        diff = float((out - masked).abs().max())
        scale = float(masked.abs().max()) or 1.0
        result.update(mask_max_abs_diff=diff, mask_rel_diff=diff / scale)
        if diff / scale > 1e-3:
            raise PlanError(f"the pruned model disagrees with the mask-mode model (relative diff {diff / scale:.2e}); "
                            "the tracer mis-modelled this architecture")
    return result


def _peek(samples: Samples) -> tuple[Samples, int]:
    samples, first = _peek_batch(samples)
    multi_hot = torch.as_tensor(first[1])
    return samples, int(multi_hot.shape[1]) if multi_hot.ndim == 2 else 0


def _peek_batch(samples: Samples) -> tuple[Samples, Any]:
    iterator = iter(samples)
    try:
        first = next(iterator)
    except StopIteration:
        raise DataError("no samples: the data is empty") from None
    if not (isinstance(first, (tuple, list)) and len(first) == 2):
        raise DataError("samples must yield (images, multi_hot) batches")
    if iterator is samples:  # a one-shot iterator: put the first batch back
        return itertools.chain([first], iterator), first
    return samples, first


def _ignored_names(model: nn.Module, ignored: Sequence[nn.Module | str] | None) -> list[str]:
    """Qualified names of the ignored layers, given as names or as modules of ``model``."""
    if not ignored:
        return []
    names = [i for i in ignored if isinstance(i, str)]
    modules = [i for i in ignored if isinstance(i, nn.Module)]
    return names + names_of(model, modules)


def _check_cached(scores: ChannelScores, model: nn.Module, layers: list[str], targets: list[int]) -> ChannelScores:
    """Cached scores cut down to ``layers``; they must cover them, and the requested targets."""
    absent = [layer for layer in layers if layer not in scores.channels]
    if absent:
        raise PlanError(f"the cached scores hold no layer {absent[0]!r} (another model, or a smaller sigma); "
                        "rebuild the cache with this model and at least this sigma")
    for layer in layers:
        width = model.get_submodule(layer).out_channels
        if scores.channels[layer] != width:
            raise PlanError(f"the cached scores were made for another model: {layer} has {width} channels, "
                            f"the cache {scores.channels[layer]}")
    missing = [t for t in targets if t not in scores.targets]
    if missing:
        raise PlanError(f"the cached scores hold no target(s) {missing}")
    return scores.subset(layers)


def load(path: str | Path, trust_checkpoint: bool = False) -> tuple[nn.Module, Any]:
    """Load back any model tpunlearn saved (``prune``'s ``model.pt``, of every family, or a zoo file):
    ``model, info = tu.load("out/model.pt")``, the pruned module in eval mode and its
    :class:`~tpunlearn.adapters.base.ModelInfo` (class names, input size, task).

    The checkpoint loads safely (``trust_checkpoint`` as for the CLI); see
    :func:`tpunlearn.models.load`.
    """
    from tpunlearn.models import load as load_saved

    return load_saved(path, trust_checkpoint=trust_checkpoint)
