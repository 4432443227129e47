"""Forward-only calibration of a pruned model's output layer toward the original, retained targets only.

Pruning channels that carry the forget target also damps what the surviving channels give the
other targets: on ``digitscenes-yolov5`` the default request takes digit 3 to recall 0 at
confidence 0.25 but leaves most other digits at 0-38 % (benchmarks/results/calibrate.md). The
features that survive still tell the retained targets apart (their AP50 barely moves); the
layer that turns them into scores no longer matches them. So, with no training:

- run the original and the pruned model on the scoring samples, recording the original's output
  layer outputs (one logit per target) and the pruned model's inputs to the same layer;
- refit that layer's rows of the *retained* targets by weighted ridge regression (one closed-form
  solve, the ridge pulling toward the pruned weights) so the pruned model's logits match the
  original's on those targets; the forget targets' rows, and every other layer, stay as pruned.

The output layers are ``nn.Linear`` or 1x1 ``nn.Conv2d`` whose output channel ``i`` is target
``i``'s score (a detector's class branch at every scale, a classifier's head, a segmenter's
final conv); the family names them. ``weighting="sigmoid"`` weighs each row (anchor, pixel,
image) by how high either model scores the target there, for families whose scores are
sigmoids read at a confidence threshold; ``"uniform"`` weighs every row alike (softmax heads).
Pruned channels stay removed and mask-mode channels stay zero: only the named layers' weights
and biases of retained targets change.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tpunlearn.errors import UsageError
from tpunlearn.torchutils import forward

WEIGHTINGS = ("sigmoid", "uniform")


@dataclass(frozen=True)
class Calibration:
    """Which layers to refit and how.

    Attributes:
        layers: qualified names of the output layers (same in the original and the pruned model).
        weighting: ``"sigmoid"`` (rows weighted by the higher of the two models' sigmoid scores) or
            ``"uniform"``.
        ridge: pull toward the pruned weights, relative to the mean feature energy.
        max_rows: rows per layer used in the fit (the highest-weighted first, then a random share of
            the rest, re-weighted), which bounds time and memory on large inputs.
        floor: weight every row gets on top of its score, so the background is fitted too.
        max_images: images run through both models at most (the first batches of the samples).
        silence: when set, the forget targets' rows of the layers get weight 0 and this bias (a
            logit far below any threshold, e.g. -20), so their scores never pass a confidence:
            an output-level edit for families whose pruned model still ranks the forget
            target's detections (the features before it are untouched). None: left as pruned.
    """

    layers: tuple[str, ...]
    weighting: str = "sigmoid"
    ridge: float = 1e-3
    max_rows: int = 20000
    floor: float = 0.01
    max_images: int = 2048
    silence: float | None = None

    def __post_init__(self) -> None:
        if not self.layers:
            raise UsageError("calibration needs at least one output layer")
        if self.weighting not in WEIGHTINGS:
            raise UsageError(f"calibration weighting must be one of {', '.join(WEIGHTINGS)}, got {self.weighting!r}")


def calibrate(original: nn.Module, pruned: nn.Module, samples: Iterable[Any], spec: Calibration,
              retain: Sequence[int], seed: int = 0, forget: Sequence[int] = ()) -> dict[str, Any]:
    """Refit the retained targets' rows of ``spec.layers`` in ``pruned`` (in place) toward ``original``
    (and, with ``spec.silence``, silence the ``forget`` targets' rows).

    ``samples`` yields ``(images, labels)`` batches (the labels are not used). ``original`` is
    never changed. Returns what was done, for the report.
    """
    t0 = time.perf_counter()
    retain = sorted(int(t) for t in retain)
    layers = [_output_layer(pruned, name) for name in spec.layers]
    _output_layer(original, spec.layers[0])
    rows = _collect(original, pruned, samples, spec)
    gen = torch.Generator().manual_seed(seed)
    fitted = []
    for name, layer, (x, y_orig, y_pruned) in zip(spec.layers, layers, rows, strict=True):
        if not len(x):
            continue
        keep = [t for t in retain if t < y_orig.shape[1]]
        weights = _row_weights(y_orig[:, keep], y_pruned[:, keep], spec)
        x, y, weights = _subsample(x, y_orig[:, keep], weights, spec.max_rows, gen)
        _refit(layer, x, y, weights, keep, spec.ridge)
        fitted.append({"layer": name, "rows": int(len(x))})
    done: dict[str, Any] = {"layers": fitted, "targets": retain, "weighting": spec.weighting}
    if spec.silence is not None and forget:
        done["silenced"] = {"targets": sorted(int(t) for t in forget), "logit": float(spec.silence),
                            "layers": silence(pruned, spec.layers, forget, spec.silence)}
    done["seconds"] = round(time.perf_counter() - t0, 3)
    return done


def silence(model: nn.Module, layers: Sequence[str], forget: Sequence[int], logit: float) -> list[str]:
    """Set the ``forget`` targets' rows of the output ``layers`` of ``model`` (in place) to weight 0 and
    bias ``logit``, so their scores never pass a confidence; return the layers edited (one without a
    bias is left as it is). An output-level edit: shapes and every other row are kept."""
    return [name for name in layers if _silence(_output_layer(model, name), forget, logit)]


def _silence(layer: nn.Linear | nn.Conv2d, forget: Sequence[int], logit: float) -> bool:
    """Weight 0 and bias ``logit`` on the forget targets' output rows; False when the layer has no bias."""
    rows = [int(t) for t in forget if int(t) < layer.weight.shape[0]]
    if layer.bias is None or not rows:
        return False
    with torch.no_grad():
        layer.weight[rows] = 0.0
        layer.bias[rows] = float(logit)
    return True


def _output_layer(model: nn.Module, name: str) -> nn.Linear | nn.Conv2d:
    try:
        layer = model.get_submodule(name)
    except AttributeError:
        raise UsageError(f"calibration: the model has no layer {name!r}") from None
    if isinstance(layer, nn.Linear):
        return layer
    if isinstance(layer, nn.Conv2d) and layer.kernel_size == (1, 1) and layer.groups == 1:
        return layer
    raise UsageError(f"calibration refits a Linear or a 1x1 Conv2d output layer; {name} is a {type(layer).__name__}")


def _flat(t: torch.Tensor, conv: bool) -> torch.Tensor:
    """Rows of a layer's input or output: (N, C) from (B, C) / (B, ..., C) linear or (B, C, H, W) conv."""
    t = t.detach().float()
    if conv:
        return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1]).cpu()
    return t.reshape(-1, t.shape[-1]).cpu()


def _collect(original: nn.Module, pruned: nn.Module, samples: Iterable[Any],
             spec: Calibration) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per layer: the pruned model's inputs, the original's outputs, the pruned model's outputs."""
    seen: dict[str, list[list[torch.Tensor]]] = {name: [[], [], []] for name in spec.layers}
    limit = 8 * spec.max_rows  # rows kept per layer before subsampling; later batches are skipped

    def hook(name: str, slot: int) -> Any:
        conv = isinstance(original.get_submodule(name), nn.Conv2d)

        def record(module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
            if slot == 0:
                seen[name][0].append(_flat(inputs[0], conv))
                seen[name][2].append(_flat(output, conv))
            else:
                seen[name][1].append(_flat(output, conv))
        return record

    handles = [original.get_submodule(n).register_forward_hook(hook(n, 1)) for n in spec.layers]
    handles += [pruned.get_submodule(n).register_forward_hook(hook(n, 0)) for n in spec.layers]
    try:
        images = 0
        for batch in samples:
            forward(original, batch[0])
            forward(pruned, batch[0])
            images += len(batch[0])
            if images >= spec.max_images or min(sum(len(r) for r in seen[n][0]) for n in spec.layers) >= limit:
                break
    finally:
        for h in handles:
            h.remove()
    return [(torch.cat(x), torch.cat(yo), torch.cat(yp)) if x else (torch.empty(0), torch.empty(0), torch.empty(0))
            for x, yo, yp in (seen[n] for n in spec.layers)]


def _row_weights(y_orig: torch.Tensor, y_pruned: torch.Tensor, spec: Calibration) -> torch.Tensor:
    """(N, T) weights: the higher sigmoid score of the two models plus the floor, or all ones."""
    if spec.weighting == "uniform":
        return torch.ones_like(y_orig)
    return torch.maximum(torch.sigmoid(y_orig), torch.sigmoid(y_pruned)) + spec.floor


def _subsample(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, max_rows: int,
               gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """At most ``max_rows`` rows: the highest-weighted half, then a random share of the rest,
    whose weights grow by the share left out (the fit stays unbiased for the background)."""
    if len(x) <= max_rows:
        return x, y, w
    order = torch.argsort(w.amax(1), descending=True)
    top, rest = order[: max_rows // 2], order[max_rows // 2:]
    pick = rest[torch.randperm(len(rest), generator=gen)[: max_rows - len(top)]]
    w = w.clone()
    w[pick] *= len(rest) / len(pick)
    idx = torch.cat([top, pick])
    return x[idx], y[idx], w[idx]


def _refit(layer: nn.Linear | nn.Conv2d, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, keep: list[int],
           ridge: float) -> None:
    """Weighted ridge regression of ``y`` (N, T) on ``[x, 1]``, one solve per target, toward the
    layer's own rows; written into the rows ``keep`` of the layer's weight and bias."""
    weight: torch.Tensor = layer.weight
    layer_bias: torch.Tensor | None = layer.bias
    w2d = weight.detach().reshape(weight.shape[0], -1).double()
    bias = layer_bias.detach().double() if layer_bias is not None else None
    x1 = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], 1) if bias is not None else x.double()
    y, w = y.double(), w.double()
    new_rows = []
    for j, t in enumerate(keep):
        a = x1.T @ (x1 * w[:, j:j + 1]) / w[:, j].sum()
        lam = ridge * float(torch.trace(a)) / a.shape[0]
        prior = torch.cat([w2d[t], bias[t:t + 1]]) if bias is not None else w2d[t]
        b = x1.T @ (w[:, j] * y[:, j]) / w[:, j].sum() + lam * prior
        new_rows.append(torch.linalg.solve(a + lam * torch.eye(a.shape[0], dtype=a.dtype), b))
    with torch.no_grad():
        for t, row in zip(keep, new_rows, strict=True):
            if layer_bias is not None:
                weight[t].copy_(row[:-1].reshape(weight[t].shape).to(weight.dtype))
                layer_bias[t] = row[-1].to(weight.dtype)
            else:
                weight[t].copy_(row.reshape(weight[t].shape).to(weight.dtype))
