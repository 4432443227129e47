"""``unlearn``: the whole pipeline behind one call.

samples -> scores -> essential graph per target -> balanced graph -> plan -> pruned copy.
The input model is never modified: one trained model can serve many requests.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from tpunlearn import __version__
from tpunlearn.distributed import is_main, resolve_device, world
from tpunlearn.errors import DataError, PlanError, UsageError
from tpunlearn.graph import BalancedGraph, balance, essential_graph, layer_links
from tpunlearn.layers import candidate_layers, names_of, prunable_layers
from tpunlearn.plan import COUPLED, MODES, PrunePlan, build_dependency_graph, close_groups, make_plan
from tpunlearn.scoring import ChannelScores, score_channels
from tpunlearn.targets import ClassLogit, Target
from tpunlearn.torchutils import count_params, forward, main_tensor, model_device, to_device


@dataclass
class UnlearnResult:
    """What :func:`unlearn` returns: the new model and everything that explains it."""

    model: nn.Module
    plan: PrunePlan
    graph: BalancedGraph
    scores: ChannelScores
    report: dict[str, Any]


def unlearn(
    model: nn.Module,
    samples: Iterable[tuple[torch.Tensor, torch.Tensor]] | None,
    forget: Sequence[int] | int,
    target: Callable[[int], Target] = ClassLogit,
    example_inputs: Any = None,
    sigma: int = 4,
    delta: float = 0.05,
    retain: Sequence[int] | None = None,
    retain_tolerance: int = 0,
    n_per_target: int = 32,
    mode: str = "physical",
    coupled: str = "protect",
    ignored_layers: Sequence[nn.Module | str] | None = None,
    retain_delta: float | None = None,
    method: str = "gradcam",
    group_closure: bool = True,
    balanced: bool = True,
    align: int | None = 8,
    scores: ChannelScores | None = None,
    num_targets: int | None = None,
    output_transform: Callable[[Any], Any] | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> UnlearnResult | None:
    """Forget ``forget`` targets from ``model``; return a new, pruned model.

    ``samples`` yields ``(images, multi_hot)`` batches (``multi_hot[i, t]`` marks that image
    ``i`` holds target ``t``). ``target`` builds ``Y_t`` for a class index. ``retain=None``
    retains every other target. ``retain_delta`` (default ``delta``) is the top fraction of
    channels each retained target protects. ``group_closure`` adds to the last ``sigma``
    convolutions every layer coupled to them in a torch-pruning group (a residual stream),
    so that each group is decided on the scores of all its members; ``coupled`` then only
    matters for groups that reach ignored or non-prunable layers, or with closure off.
    ``balanced=False`` is the paper's "without balance" ablation: every node a forget target
    selects is flagged, whatever the retained targets need. ``align`` keeps pruned widths at
    multiples of ``align`` (default 8; None or 1 turns it off) where they were multiples
    before: ONNX Runtime's CPU convolutions slow down at odd widths, so without it a pruned
    model can run slower than the original (see ``make_plan``). ``scores`` reuses cached channel scores and
    skips scoring (``samples`` may then be None).

    ``device`` (``cpu``, ``cuda`` or ``cuda:N``; default: the model's own) is where the new
    model is scored, planned and pruned, and where it lives afterwards; the input model
    stays where it is. Inside a torchrun script with a process group initialised, every
    rank passes the same samples and scores its share of them (see ``score_channels``);
    rank 0 alone plans and prunes and gets the result, the other ranks get None.
    """
    forget = [int(forget)] if isinstance(forget, int) else [int(t) for t in forget]
    _check_args(forget, delta, retain_delta, sigma, mode, coupled, retain_tolerance)
    device = resolve_device(device) if device is not None else model_device(model)
    implicit_retain = retain is None
    samples, example_inputs, retain = _resolve_request(model, samples, forget, retain, example_inputs,
                                                       scores, num_targets)
    if scores is not None and not is_main():
        return None  # nothing to score: the other ranks have no share of the work
    example_inputs = to_device(example_inputs, device)
    timings: dict[str, float] = {}
    work = copy.deepcopy(model).to(device)
    ignored = _ignored_names(work, model, ignored_layers)
    layers = candidate_layers(work, example_inputs, sigma, ignored)
    with _timed(timings, "dependency_graph"):
        dg = build_dependency_graph(work, example_inputs, output_transform)
        if group_closure:
            layers = close_groups(work, layers, prunable_layers(work, example_inputs, ignored), dg)
    if scores is None:
        with _timed(timings, "scoring"):
            scores = score_channels(work, samples, layers, {t: target(t) for t in forget + retain},
                                    n_per_target=n_per_target, method=method, progress=progress,
                                    optional=retain if implicit_retain else ())
        if not is_main():
            return None
    else:
        scores = _check_cached(scores, work, layers, forget + ([] if implicit_retain else retain))
    unscored = [t for t in retain if t not in scores.targets]
    retain = [t for t in retain if t in scores.targets]

    with _timed(timings, "graph"):
        links = layer_links(work, dg, layers)
        graphs = {t: essential_graph(scores, t, delta if t in forget else (retain_delta or delta), links)
                  for t in forget + retain}
        graph = balance(graphs, forget, retain if balanced else [], scores.channels, retain_tolerance)
    with _timed(timings, "planning"):
        priority = {l: sum(scores.alpha(t, l) for t in forget) for l in layers}
        plan = make_plan(work, graph.flagged(), graph.protected(), example_inputs, candidates=layers,
                         ignored_layers=ignored, coupled=coupled, mode=mode, priority=priority,
                         output_transform=output_transform, dependency_graph=dg, align=align)
    with _timed(timings, "pruning"):
        plan.apply(work, example_inputs, output_transform, dependency_graph=dg)
    check = verify(work, model, plan, example_inputs, output_transform)

    settings = {"forget": forget, "retain": retain, "sigma": sigma, "group_closure": group_closure,
                "balanced": balanced, "align": align, "delta": delta, "retain_delta": retain_delta or delta,
                "retain_tolerance": retain_tolerance, "n_per_target": n_per_target, "mode": mode,
                "coupled": coupled, "method": method}
    notes = [f"retained target(s) {unscored} appear in no sample: not scored, so not protected"] if unscored else []
    report = _report(model, work, settings, layers, scores, graph, plan, timings, check, notes)
    report["execution"] = {"device": str(device), "ranks": world()[1]}  # where it ran; the result does not depend on it
    return UnlearnResult(model=work, plan=plan, graph=graph, scores=scores, report=report)


def score_targets(
    model: nn.Module,
    samples: Iterable[tuple[torch.Tensor, torch.Tensor]],
    target: Callable[[int], Target] = ClassLogit,
    targets: Sequence[int] | None = None,
    example_inputs: Any = None,
    sigma: int = 4,
    n_per_target: int = 32,
    ignored_layers: Sequence[nn.Module | str] | None = None,
    method: str = "gradcam",
    group_closure: bool = True,
    num_targets: int | None = None,
    output_transform: Callable[[Any], Any] | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> ChannelScores:
    """Score every target once (default: all of them), for later requests without scoring.

    The result feeds ``unlearn(..., scores=...)``: a forget request then only balances,
    plans and prunes. Targets absent from the samples are left out when ``targets`` is None.
    ``device`` (default: the model's own) is where scoring runs; a model elsewhere is
    copied there, never moved. Under torch.distributed every rank passes the same samples,
    scores its share, and gets the scores of all of them.
    """
    samples, example_inputs, all_targets = _resolve_request(model, samples, [], None, example_inputs, None,
                                                            num_targets)
    device = resolve_device(device) if device is not None else model_device(model)
    if model_device(model) != device:
        model = copy.deepcopy(model).to(device)
    example_inputs = to_device(example_inputs, device)
    wanted = all_targets if targets is None else [int(t) for t in targets]
    ignored = _ignored_names(model, model, ignored_layers)
    layers = candidate_layers(model, example_inputs, sigma, ignored)
    if group_closure:
        dg = build_dependency_graph(model, example_inputs, output_transform)
        layers = close_groups(model, layers, prunable_layers(model, example_inputs, ignored), dg)
    return score_channels(model, samples, layers, {t: target(t) for t in wanted}, n_per_target=n_per_target,
                          method=method, progress=progress, optional=wanted if targets is None else ())


def _resolve_request(model: nn.Module, samples: Iterable[Any] | None, forget: list[int],
                     retain: Sequence[int] | None, example_inputs: Any, scores: ChannelScores | None,
                     num_targets: int | None) -> tuple[Iterable[Any] | None, Any, list[int]]:
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
        raise UsageError(f"target index {bad[0]} is out of range: the model has {num_targets} targets (0..{num_targets - 1})")
    both = sorted(set(forget) & set(retain))
    if both:
        raise UsageError(f"target(s) {both} are both forgotten and retained")
    return samples, example_inputs, retain


def _report(model: nn.Module, pruned: nn.Module, settings: dict[str, Any], layers: list[str],
            scores: ChannelScores, graph: BalancedGraph, plan: PrunePlan, timings: dict[str, float],
            check: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    """The JSON-able record of one request: what ran, on what, with what result."""
    targets = settings["forget"] + settings["retain"]
    return {
        "tpunlearn": __version__,
        "algorithm": "balanced essential graph (Xu et al., Alg. 1-4, Eq. 3-4) with torch-pruning groups",
        "settings": settings,
        "layers": layers,
        "n_targets": graph.n_targets,
        "instances": {str(t): scores.targets[t].count for t in targets},
        "stability": {str(t): round(v, 4) for t, v in scores.stability(settings["delta"]).items()
                      if scores.targets[t].instances},
        "graph": graph.summary(),
        "removed_channels": plan.removed_channels,
        "removed": plan.removed,
        "params": {"before": count_params(model), "after": count_params(pruned)},
        "timings_s": {k: round(v, 4) for k, v in timings.items()},
        "check": check,
        "notes": plan.notes + notes,
    }


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
        raise PlanError(f"the pruned model no longer runs ({type(exc).__name__}: {exc}); "
                        "this architecture is mis-modelled by the tracer, try --coupled protect or a smaller sigma") from None
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


def _check_args(forget: list[int], delta: float, retain_delta: float | None, sigma: int, mode: str,
                coupled: str, retain_tolerance: int) -> None:
    if not forget:
        raise UsageError("forget needs at least one target")
    for name, value in (("delta", delta), ("retain_delta", retain_delta)):
        if value is not None and not 0.0 < float(value) <= 1.0:
            raise UsageError(f"{name} must lie in (0, 1], got {value}")
    if int(sigma) < 1:
        raise UsageError(f"sigma must be >= 1, got {sigma}")
    if mode not in MODES:
        raise UsageError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if coupled not in COUPLED:
        raise UsageError(f"unknown coupled policy {coupled!r}; choose one of {', '.join(COUPLED)}")
    if int(retain_tolerance) < 0:
        raise UsageError(f"retain_tolerance must be >= 0, got {retain_tolerance}")


def _peek(samples: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[Iterable[Any], int]:
    samples, first = _peek_batch(samples)
    multi_hot = torch.as_tensor(first[1])
    return samples, int(multi_hot.shape[1]) if multi_hot.ndim == 2 else 0


def _peek_batch(samples: Iterable[Any]) -> tuple[Iterable[Any], Any]:
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


def _ignored_names(work: nn.Module, original: nn.Module, ignored: Sequence[nn.Module | str] | None) -> list[str]:
    if not ignored:
        return []
    names = [i for i in ignored if isinstance(i, str)]
    modules = [i for i in ignored if isinstance(i, nn.Module)]
    return names + names_of(original, modules)


def _check_cached(scores: ChannelScores, model: nn.Module, layers: list[str], targets: list[int]) -> ChannelScores:
    """Cached scores cut down to ``layers``; they must cover them, and the requested targets."""
    absent = [l for l in layers if l not in scores.channels]
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

