"""Channel scoring (paper Alg. 2, Eq. 3), batched and truncated.

For every target ``t`` and candidate layer ``l`` the score of output channel ``k`` is the
Grad-CAM weight ``alpha[l][k] = mean over samples and pixels of dY_t / dF_l^k`` (signed, as
in the paper). One forward per batch and one ``torch.autograd.grad`` per target present in
it serve every layer at once. The earliest candidate layer's output is cut from the graph
and parameters are frozen while scoring, so backward stops there and no parameter gradient
is ever computed. The paper scores from one instance; we average over ``n_per_target``
instances and report how stable the per-instance top-delta sets are.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from tpunlearn.errors import DataError, TargetNotInDataError, UsageError
from tpunlearn.layers import module_by_name
from tpunlearn.targets import Target

METHODS = ("gradcam", "abs", "taylor")
INSTANCE_ROWS = 64  # per-instance alpha rows kept per target and layer (for stability); the mean uses every instance


@dataclass
class TargetScores:
    """Scores of one target: mean alpha per layer plus the per-instance alphas behind it."""

    alpha: dict[str, torch.Tensor]
    count: int
    instances: dict[str, torch.Tensor] = field(default_factory=dict)  # layer -> (count, C)

    def stability(self, delta: float) -> float:
        """Mean Jaccard of each instance's top-delta set against the aggregate's, over layers."""
        values = []
        for layer, per_instance in self.instances.items():
            k = top_count(per_instance.shape[1], delta)
            ref = set(self.alpha[layer].topk(k).indices.tolist())
            for row in per_instance:
                own = set(row.topk(k).indices.tolist())
                values.append(len(own & ref) / len(own | ref))
        return float(sum(values) / len(values)) if values else float("nan")


@dataclass
class ChannelScores:
    """Per-target channel scores over the candidate layers, in execution order."""

    layers: list[str]
    channels: dict[str, int]
    targets: dict[int, TargetScores]
    method: str = "gradcam"

    def alpha(self, target: int, layer: str) -> torch.Tensor:
        return self.targets[target].alpha[layer]

    def stability(self, delta: float) -> dict[int, float]:
        return {t: s.stability(delta) for t, s in self.targets.items()}

    def subset(self, layers: Sequence[str]) -> "ChannelScores":
        """The scores of ``layers`` only (a cache scored over more layers serves a smaller sigma)."""
        missing = [l for l in layers if l not in self.channels]
        if missing:
            raise DataError(f"the scores hold no layer {missing[0]!r}; rebuild them with a larger sigma")
        layers = list(layers)
        targets = {t: TargetScores(alpha={l: s.alpha[l] for l in layers}, count=s.count,
                                   instances={l: s.instances[l] for l in layers if l in s.instances})
                   for t, s in self.targets.items()}
        return ChannelScores(layers=layers, channels={l: self.channels[l] for l in layers}, targets=targets,
                             method=self.method)

    def to_dict(self, instances: bool = False) -> dict[str, Any]:
        """JSON-able form (per-instance alphas only when asked: they are the bulk)."""
        out: dict[str, Any] = {
            "format": "tpunlearn-scores/1",
            "method": self.method,
            "layers": self.layers,
            "channels": self.channels,
            "targets": {},
        }
        for t, s in self.targets.items():
            entry: dict[str, Any] = {"count": s.count, "alpha": {l: s.alpha[l].tolist() for l in self.layers}}
            if instances:
                entry["instances"] = {l: s.instances[l].tolist() for l in s.instances}
            out["targets"][str(t)] = entry
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ChannelScores":
        """Scores from their JSON form; every layer's alpha must have the layer's width."""
        if not isinstance(data, Mapping) or data.get("format") != "tpunlearn-scores/1":
            raise DataError("not a tpunlearn scores file (format tpunlearn-scores/1 expected)")
        try:
            layers = [str(l) for l in data["layers"]]
            channels = {str(k): int(v) for k, v in data["channels"].items()}
            targets = {}
            for t, entry in data["targets"].items():
                alpha = {l: torch.tensor(entry["alpha"][l], dtype=torch.float32) for l in layers}
                inst = {l: torch.tensor(v, dtype=torch.float32) for l, v in entry.get("instances", {}).items()}
                targets[int(t)] = TargetScores(alpha=alpha, count=int(entry["count"]), instances=inst)
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
            raise DataError(f"not a valid tpunlearn scores file ({type(exc).__name__}: {exc})") from None
        for t, s in targets.items():
            for l in layers:
                if l not in channels or tuple(s.alpha[l].shape) != (channels[l],):
                    raise DataError(f"not a valid tpunlearn scores file: target {t}, layer {l} has "
                                    f"{tuple(s.alpha[l].shape)} scores for {channels.get(l)} channels")
                if not torch.isfinite(s.alpha[l]).all():
                    raise DataError(f"not a valid tpunlearn scores file: target {t}, layer {l} has non-finite scores")
        return cls(layers=layers, channels=channels, targets=targets, method=str(data.get("method", "gradcam")))


def top_count(channels: int, delta: float) -> int:
    """How many channels the top-``delta`` fraction of a layer holds (at least one)."""
    if not 0.0 < float(delta) <= 1.0:
        raise UsageError(f"delta must lie in (0, 1], got {delta}")
    return max(1, int(math.ceil(channels * float(delta) - 1e-9)))


@contextlib.contextmanager
def capture_outputs(model: nn.Module, layers: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Record the outputs of ``layers`` during forwards inside the ``with`` block.

    An output that does not already require grad (the earliest candidate layer, or a
    branch parallel to it, when parameters are frozen) becomes a leaf that does, so
    backward stops there. Hooks exist only inside the block.
    """
    store: dict[str, torch.Tensor] = {}
    handles = []

    def hook(name: str) -> Callable[..., Any]:
        def record(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> Any:
            if torch.is_grad_enabled() and not output.requires_grad:
                output = output.detach().requires_grad_(True)
                store[name] = output
                return output
            store[name] = output
            return None
        return record

    try:
        for name in layers:
            handles.append(module_by_name(model, name).register_forward_hook(hook(name)))
        yield store
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def scoring_mode(model: nn.Module, requires_grad: bool = False) -> Iterator[nn.Module]:
    """Eval mode with every parameter's ``requires_grad`` set inside the block; both restored on exit.

    Scoring freezes the parameters (no parameter gradient, backward stops at the earliest
    candidate); tracing a dependency graph needs them on.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(requires_grad)
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def score_channels(
    model: nn.Module,
    samples: Iterable[tuple[torch.Tensor, torch.Tensor]],
    layers: Sequence[str],
    targets: Mapping[int, Target],
    n_per_target: int = 32,
    method: str = "gradcam",
    device: str | torch.device | None = None,
    progress: bool = True,
    optional: Iterable[int] = (),
    keep_instances: int = INSTANCE_ROWS,
) -> ChannelScores:
    """Score every channel of ``layers`` for every target in ``targets``.

    ``samples`` yields ``(images, multi_hot)`` batches; ``multi_hot[i, t] > 0.5`` marks that
    image ``i`` holds target ``t``. Each target uses its first ``n_per_target`` instances.
    A target no sample holds raises :class:`TargetNotInDataError`, unless it is ``optional``
    (then it is left out of the result).

    Memory stays bounded as ``n_per_target`` grows: batches are streamed, a batch's
    activations are dropped before the next one runs, and per target and layer only running
    sums plus the first ``keep_instances`` per-instance rows (for :meth:`TargetScores.stability`)
    are kept.
    """
    optional = set(optional)
    if method not in METHODS:
        raise UsageError(f"unknown scoring method {method!r}; choose one of {', '.join(METHODS)}")
    if n_per_target < 1:
        raise UsageError(f"n_per_target must be >= 1, got {n_per_target}")
    if keep_instances < 1:
        raise UsageError(f"keep_instances must be >= 1, got {keep_instances}")
    layers = list(layers)
    if not layers:
        raise UsageError("no candidate layers to score")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    acc = _Accumulator(list(targets), layers, keep_instances)
    bar = tqdm(total=n_per_target * len(targets), desc="scoring", unit="inst", disable=not progress, leave=False)
    with scoring_mode(model), capture_outputs(model, layers) as feats:
        for images, multi_hot in samples:
            need = {t: n_per_target - acc.counts[t] for t in targets if acc.counts[t] < n_per_target}
            if not need:
                break
            present = _present(multi_hot, max(targets) + 1)
            wanted = {t: _first(present[:, t], need[t]) for t in need if present[:, t].any()}
            if wanted:
                bar.update(_score_batch(model, images.to(device), feats, layers, wanted, targets, method, acc))
            feats.clear()  # this batch's activations go now, before the next forward
    bar.close()
    missing = [t for t, c in acc.counts.items() if c == 0 and t not in optional]
    if missing:
        raise TargetNotInDataError(f"no sample holds target(s) {missing}: cannot score them; "
                                   "give samples that hold them", missing)
    return acc.result(method)


def _score_batch(model: nn.Module, images: torch.Tensor, feats: dict[str, torch.Tensor], layers: list[str],
                 wanted: Mapping[int, torch.Tensor], targets: Mapping[int, Target], method: str,
                 acc: "_Accumulator") -> int:
    """One forward and one backward per wanted target; returns the instances scored.

    Everything that holds this batch's activations is local, so it is freed on return.
    """
    scored = 0
    with torch.enable_grad():
        output = model(images)
        feat_list = [feats[l] for l in layers]
        for i, (t, select) in enumerate(wanted.items()):
            select = select.to(images.device)
            y = targets[t](output, select)
            grads = torch.autograd.grad(y, feat_list, retain_graph=i < len(wanted) - 1, allow_unused=True)
            acc.add(t, [_per_instance(g, f, select, method).detach() for f, g in zip(feat_list, grads)])
            scored += int(select.sum())
    return scored


class _Accumulator:
    """Running alpha sums and counts per target, plus the first ``keep`` per-instance rows."""

    def __init__(self, targets: list[int], layers: list[str], keep: int) -> None:
        self.layers, self.keep = layers, keep
        self.sums: dict[int, list[torch.Tensor | None]] = {t: [None] * len(layers) for t in targets}
        self.rows: dict[int, list[list[torch.Tensor]]] = {t: [[] for _ in layers] for t in targets}
        self.counts = {t: 0 for t in targets}
        self.kept = {t: 0 for t in targets}

    def add(self, target: int, per_layer: list[torch.Tensor]) -> None:
        """Per-instance scores ``(n, C)`` of one target, one tensor per layer."""
        room = self.keep - self.kept[target]
        for i, per in enumerate(per_layer):
            total = self.sums[target][i]
            self.sums[target][i] = per.sum(0) if total is None else total + per.sum(0)
            if room > 0:
                self.rows[target][i].append(per[:room].cpu().clone())
        n = int(per_layer[0].shape[0])
        self.kept[target] += min(max(room, 0), n)
        self.counts[target] += n

    def result(self, method: str) -> ChannelScores:
        scored = [t for t, c in self.counts.items() if c > 0]
        channels = {l: int(self.rows[scored[0]][i][0].shape[1]) for i, l in enumerate(self.layers)} if scored else {}
        targets = {
            t: TargetScores(
                alpha={l: (self.sums[t][i] / self.counts[t]).cpu().float() for i, l in enumerate(self.layers)},
                count=self.counts[t],
                instances={l: torch.cat(self.rows[t][i]).float() for i, l in enumerate(self.layers)},
            )
            for t in scored
        }
        return ChannelScores(layers=list(self.layers), channels=channels, targets=targets, method=method)


def _per_instance(grad: torch.Tensor | None, feat: torch.Tensor, select: torch.Tensor, method: str) -> torch.Tensor:
    """Per-selected-sample channel scores ``(n, C)`` from a layer's gradient."""
    if grad is None:  # the target does not depend on this layer
        return feat.new_zeros(int(select.sum()), feat.shape[1])
    g = grad[select]
    dims = tuple(range(2, g.ndim))
    if method == "gradcam":
        return g.mean(dim=dims)
    if method == "abs":
        return g.mean(dim=dims).abs()
    return (g * feat.detach()[select]).mean(dim=dims)  # taylor


def _present(multi_hot: torch.Tensor, n_targets: int) -> torch.Tensor:
    multi_hot = torch.as_tensor(multi_hot)
    if multi_hot.ndim == 1:  # class indices (multi-class data): make it one-hot
        multi_hot = torch.nn.functional.one_hot(multi_hot.long(), max(n_targets, int(multi_hot.max()) + 1))
    return multi_hot > 0.5


def _first(mask: torch.Tensor, n: int) -> torch.Tensor:
    """``mask`` with only its first ``n`` True entries kept."""
    keep = mask.clone()
    idx = mask.nonzero().flatten()
    keep[idx[n:]] = False
    return keep
