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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from tpunlearn import distributed
from tpunlearn.errors import DataError, DistributedError, TargetNotInDataError, UsageError
from tpunlearn.io import JsonFormat
from tpunlearn.layers import module_by_name
from tpunlearn.settings import METHODS, check_choice
from tpunlearn.targets import Target
from tpunlearn.torchutils import eval_mode, model_device
from tpunlearn.torchutils import requires_grad as grad_flags  # scoring_mode's argument has the name

SCORES_FORMAT = JsonFormat("tpunlearn-scores/1", "tpunlearn scores file", DataError)
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

    def subset(self, layers: Sequence[str]) -> ChannelScores:
        """The scores of ``layers`` only (a cache scored over more layers serves a smaller sigma)."""
        missing = [layer for layer in layers if layer not in self.channels]
        if missing:
            raise DataError(f"the scores hold no layer {missing[0]!r}; rebuild them with a larger sigma")
        layers = list(layers)
        targets = {t: TargetScores(alpha={layer: s.alpha[layer] for layer in layers}, count=s.count,
                                   instances={layer: s.instances[layer] for layer in layers if layer in s.instances})
                   for t, s in self.targets.items()}
        return ChannelScores(layers=layers, channels={layer: self.channels[layer] for layer in layers}, targets=targets,
                             method=self.method)

    def to_dict(self, instances: bool = False) -> dict[str, Any]:
        """JSON-able form (per-instance alphas only when asked: they are the bulk)."""
        out: dict[str, Any] = SCORES_FORMAT.stamp({
            "method": self.method,
            "layers": self.layers,
            "channels": self.channels,
            "targets": {},
        })
        for t, s in self.targets.items():
            entry: dict[str, Any] = {"count": s.count,
                                     "alpha": {layer: s.alpha[layer].tolist() for layer in self.layers}}
            if instances:
                entry["instances"] = {layer: s.instances[layer].tolist() for layer in s.instances}
            out["targets"][str(t)] = entry
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChannelScores:
        """Scores from their JSON form; every layer's alpha must have the layer's width."""
        SCORES_FORMAT.check(data)
        try:
            layers = [str(layer) for layer in data["layers"]]
            channels = {str(k): int(v) for k, v in data["channels"].items()}
            targets = {}
            for t, entry in data["targets"].items():
                alpha = {layer: torch.tensor(entry["alpha"][layer], dtype=torch.float32) for layer in layers}
                inst = {layer: torch.tensor(v, dtype=torch.float32) for layer, v in entry.get("instances", {}).items()}
                targets[int(t)] = TargetScores(alpha=alpha, count=int(entry["count"]), instances=inst)
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
            raise DataError(f"not a valid tpunlearn scores file ({type(exc).__name__}: {exc})") from None
        for t, s in targets.items():
            for layer in layers:
                if layer not in channels or tuple(s.alpha[layer].shape) != (channels[layer],):
                    raise DataError(f"not a valid tpunlearn scores file: target {t}, layer {layer} has "
                                    f"{tuple(s.alpha[layer].shape)} scores for {channels.get(layer)} channels")
                if not torch.isfinite(s.alpha[layer]).all():
                    raise DataError(f"not a valid tpunlearn scores file: target {t}, layer {layer} has "
                                    "non-finite scores")
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
                leaf = output.detach().requires_grad_(True)
                store[name] = leaf
                return leaf.clone()  # an in-place op after the layer (VGG's ReLU(inplace)) may not touch a leaf
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
    """Eval mode with every parameter's ``requires_grad`` set inside the block; every module's
    training flag and every parameter's ``requires_grad`` restored on exit.

    Scoring freezes the parameters (no parameter gradient, backward stops at the earliest
    candidate); tracing a dependency graph needs them on.
    """
    with eval_mode(model), grad_flags(model.parameters(), requires_grad):
        yield model


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
    image ``i`` holds target ``t``. Each target uses its first ``n_per_target`` instances,
    and only the images some target uses are forwarded. A target no sample holds raises
    :class:`TargetNotInDataError`, unless it is ``optional`` (then it is left out of the result). Batches go to
    ``device`` (default: the model's).

    Under ``torch.distributed`` every rank passes the same samples. The instances are chosen
    from them as one process would choose them; each batch's chosen images then go, whole,
    to the rank with the fewest images so far, which alone forwards them. Near the end (the
    instances still needed after a batch are fewer than half of those it gives) a batch's
    images are spread over the ranks to even out their loads. The per-target sums and
    per-instance rows are all-reduced, so every rank returns the scores one process computes.

    Memory stays bounded as ``n_per_target`` grows: batches are streamed, a batch's
    activations are dropped before the next one runs, and per target and layer only running
    sums plus the first ``keep_instances`` per-instance rows (for :meth:`TargetScores.stability`)
    are kept.
    """
    check_choice("scoring method", method, METHODS)
    if n_per_target < 1:
        raise UsageError(f"n_per_target must be >= 1, got {n_per_target}")
    if keep_instances < 1:
        raise UsageError(f"keep_instances must be >= 1, got {keep_instances}")
    layers = list(layers)
    if not layers:
        raise UsageError("no candidate layers to score")
    rank, size = distributed.world()
    device = torch.device(device) if device is not None else model_device(model)
    pool = _InstancePool(targets, layers, n_per_target, size, keep_instances)
    bar = tqdm(total=n_per_target * len(targets), desc="scoring", unit="inst", disable=not progress or rank != 0,
               leave=False)
    with scoring_mode(model), capture_outputs(model, layers) as feats:
        for images, multi_hot in samples:
            if pool.full():
                break
            chosen = pool.choose(multi_hot)
            if chosen is None:
                continue
            bar.update(chosen.new_instances)
            if chosen.shares[rank].numel():
                _score_batch(model, images, chosen, chosen.shares[rank], feats, layers, targets, method, device, pool)
            feats.clear()  # this batch's activations go now, before the next forward
    bar.close()
    return pool.result(method, set(optional))


@dataclass
class _Choice:
    """The instances one batch gives each target, as one process chooses them, and which rank forwards which image."""

    wanted: dict[int, torch.Tensor]  # target -> bool mask over the batch
    first: dict[int, int]  # target -> ordinal of its first instance here among all its instances
    shares: list[torch.Tensor]  # rank -> the positions it forwards, ascending (often all, or none)

    @property
    def new_instances(self) -> int:
        return sum(int(mask.sum()) for mask in self.wanted.values())


class _InstancePool:
    """Which instances count for each target, and what this rank found for its share of them.

    The choice depends on the labels only, so it is the same on every rank; the sums and
    per-instance rows cover this rank's share until :meth:`result` all-reduces them.
    """

    def __init__(self, targets: Mapping[int, Any], layers: list[str], n_per_target: int, ranks: int,
                 keep: int = INSTANCE_ROWS) -> None:
        self.targets = list(targets)  # the caller's order, the same on every rank
        self.layers = layers
        self.cap = n_per_target
        self.keep = keep  # per-instance rows kept per target (the first ones by ordinal)
        self.taken = {t: 0 for t in self.targets}
        self.load = [0] * ranks  # images given to each rank so far
        self.batches = 0
        self.labels = 0.0
        self.sums: dict[int, dict[str, torch.Tensor]] = {t: {} for t in self.targets}
        self.rows: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {t: [] for t in self.targets}
        self.widths: dict[str, int] = {}

    def full(self) -> bool:
        return all(n >= self.cap for n in self.taken.values())

    def choose(self, multi_hot: torch.Tensor) -> _Choice | None:
        """Each target's first still-needed instances in this batch (None when it has none)."""
        present = _present(multi_hot, max(self.targets) + 1)
        self.batches += 1
        self.labels += float(present.sum())
        wanted = {t: _first(present[:, t], self.cap - self.taken[t]) for t in self.targets
                  if self.taken[t] < self.cap and present[:, t].any()}
        if not wanted:
            return None
        first = dict(self.taken)
        given = 0
        for t, mask in wanted.items():
            self.taken[t] += int(mask.sum())
            given += int(mask.sum())
        still = sum(self.cap - n for n in self.taken.values() if n > 0)  # targets never seen don't count
        needed = torch.stack(list(wanted.values())).any(0).nonzero().flatten()
        return _Choice(wanted=wanted, first=first, shares=self._deal(needed, spread=2 * still < given))

    def _deal(self, needed: torch.Tensor, spread: bool) -> list[torch.Tensor]:
        """Each rank's part of ``needed``: all to the least-loaded rank, or spread to even the loads out.

        A whole batch costs one forward and one gradient per target on one rank; spreading
        it costs them on every rank, so it is kept for the last batches, where it balances.
        """
        counts = [0] * len(self.load)
        if not spread:
            counts[self.load.index(min(self.load))] = needed.numel()
        else:
            loads = list(self.load)
            for _ in range(needed.numel()):
                r = loads.index(min(loads))
                counts[r] += 1
                loads[r] += 1
        self.load = [n + c for n, c in zip(self.load, counts, strict=True)]
        return list(needed.split(counts))

    def add(self, target: int, per_layer: list[torch.Tensor], ordinals: torch.Tensor) -> None:
        """Record one target's per-instance scores ``(k, C_l)`` for the instances ``ordinals``."""
        sums = self.sums[target]
        for layer, per in zip(self.layers, per_layer, strict=True):
            self.widths[layer] = per.shape[1]
            sums[layer] = sums.get(layer, 0) + per.float().sum(0).detach()
        kept = ordinals < self.keep
        if kept.any():
            self.rows[target].append((ordinals[kept], torch.cat(per_layer, 1)[kept.to(per_layer[0].device)]
                                      .detach().float().cpu()))

    def result(self, method: str, optional: set[int]) -> ChannelScores:
        """The scores over every rank's share (all-reduced when there are several ranks)."""
        widths = self._agree()
        missing = [t for t in self.targets if self.taken[t] == 0 and t not in optional]
        if missing:
            raise TargetNotInDataError(f"no sample holds target(s) {missing}: cannot score them; "
                                       "give samples that hold them", missing,
                                       [t for t in self.targets if self.taken[t] > 0])
        scored = [t for t in self.targets if self.taken[t] > 0]
        if not scored:
            raise DataError("no sample holds any of the targets: nothing to score")
        total = sum(widths)
        packed = distributed.all_reduce(torch.cat([self._pack(t, total) for t in scored]))
        bounds = torch.tensor([0, *widths]).cumsum(0).tolist()
        result, at = {}, 0
        for t in scored:
            n, k = self.taken[t], min(self.taken[t], self.keep)
            block = packed[at:at + (k + 1) * total].view(k + 1, total)
            at += (k + 1) * total
            result[t] = TargetScores(
                alpha={layer: block[0, bounds[i]:bounds[i + 1]] / n for i, layer in enumerate(self.layers)},
                count=n,
                instances={layer: block[1:, bounds[i]:bounds[i + 1]].clone() for i, layer in enumerate(self.layers)})
        return ChannelScores(layers=self.layers, channels=dict(zip(self.layers, widths, strict=True)), targets=result,
                             method=method)

    def _pack(self, target: int, total: int) -> torch.Tensor:
        """One target's sums (first row) and its instance rows at their ordinals, this rank's share filled."""
        block = torch.zeros(min(self.taken[target], self.keep) + 1, total)
        if self.sums[target]:
            block[0] = torch.cat([self.sums[target][layer].detach().float().cpu() for layer in self.layers])
        for ordinals, rows in self.rows[target]:
            block[1 + ordinals] = rows
        return block.flatten()

    def _agree(self) -> list[int]:
        """Layer widths; with several ranks, first check that they all read the same labels."""
        widths = torch.tensor([float(self.widths.get(layer, 0)) for layer in self.layers], dtype=torch.float64)
        if distributed.world()[1] == 1:
            return [int(w) for w in widths]
        seen = torch.tensor([self.batches, self.labels, *(self.taken[t] for t in self.targets)], dtype=torch.float64)
        high = distributed.all_reduce(torch.cat([seen, widths]), op="max")
        low = distributed.all_reduce(seen, op="min")
        if not torch.equal(high[:seen.numel()], low):
            raise DistributedError("the ranks read different samples; pass every rank the same samples "
                                   "(tpunlearn shards them itself)")
        return [int(w) for w in high[seen.numel():]]


def _score_batch(model: nn.Module, images: torch.Tensor, chosen: _Choice, mine: torch.Tensor,
                 feats: Mapping[str, torch.Tensor], layers: list[str], targets: Mapping[int, Target], method: str,
                 device: torch.device, pool: _InstancePool) -> None:
    """One forward over this rank's images of the batch, one gradient per target they hold."""
    whole = mine.numel() == len(images)
    active = []  # (target, its instances among my images, their ordinals among all its instances)
    for t, mask in chosen.wanted.items():
        select = mask if whole else mask[mine]
        if select.any():
            positions = mask.nonzero().flatten()
            index = torch.arange(positions.numel()) if whole else torch.isin(positions, mine).nonzero().flatten()
            active.append((t, select, chosen.first[t] + index))
    passes = _disjoint_passes(active)
    with torch.enable_grad():
        output = model((images if whole else images[mine]).to(device))
        feat_list = [feats[layer] for layer in layers]
        for i, group in enumerate(passes):
            y = torch.stack([targets[t](output, select.to(device)) for t, select, _ in group]).sum()
            grads = torch.autograd.grad(y, feat_list, retain_graph=i < len(passes) - 1, allow_unused=True)
            for t, select, ordinals in group:
                pool.add(t, [_per_instance(g, f, select.to(device), method)
                             for g, f in zip(grads, feat_list, strict=True)], ordinals)
    del output


def _disjoint_passes(active: list[tuple[int, torch.Tensor, torch.Tensor]]) -> list[list[Any]]:
    """Group the targets of a batch so that no image holds two targets of one group.

    Samples do not interact in scoring mode (eval-mode norms), so one backward pass of the sum of
    a group's targets gives every image the gradient of its own target alone: a batch costs as
    many backward passes as the most targets one image holds, not as many as the targets in it
    (a multi-class batch: one; an 80-class detection batch: a few, not 80).
    """
    passes: list[tuple[torch.Tensor, list[Any]]] = []
    for entry in active:
        select = entry[1]
        for taken, group in passes:
            if not (taken & select).any():
                taken |= select
                group.append(entry)
                break
        else:
            passes.append((select.clone(), [entry]))
    return [group for _, group in passes]


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
