"""Privacy checks after unlearning: a membership-inference attack and a feature probe.

* :func:`mia_score` is the entropy-based logistic-regression attack of the SSD repository
  (Foster et al., AAAI 2024): the attacker learns, from the entropy of the model's softmax,
  to tell members (retained training samples) from non-members (test samples), and the
  score is the fraction of the forget training samples it calls members. A model that has
  truly forgotten them should score like a model that never saw them (a retrained one).
* :func:`probe_scores` asks whether the forget target is still linearly readable from the
  penultimate features (the paper's Fig. 3 motivation): output metrics alone can hide
  features that are still there.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tpunlearn.errors import DataError
from tpunlearn.torchutils import eval_mode, main_tensor, model_device


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of ``softmax(logits)`` per row (the attack's one feature), shape ``(N,)``."""
    logp = torch.log_softmax(logits.float(), dim=1)
    return -(logp.exp() * logp).sum(1)


@torch.no_grad()
def logits_of(model: nn.Module, batches: Iterable[Any], device: str | torch.device | None = None) -> torch.Tensor:
    """The model's ``(N, C)`` outputs over ``batches`` of ``(images, ...)``, in eval mode (restored after)."""
    device = device or model_device(model)
    out = []
    with eval_mode(model):
        for batch in batches:
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            out.append(main_tensor(model(images.to(device))).float().cpu())
    if not out:
        raise DataError("no samples to score")
    return torch.cat(out)


@dataclass
class MIAResult:
    """``score``: fraction of forget samples the attack calls members; the rest for context."""

    score: float
    retain_member_rate: float  # on the attack's own training members (sanity: well above 0.5)
    test_member_rate: float  # on its non-members
    n_forget: int
    n_retain: int
    n_test: int

    def to_dict(self) -> dict[str, float | int]:
        return dict(self.__dict__)


def mia_score(model: nn.Module, retain: Iterable[Any], test: Iterable[Any], forget: Iterable[Any],
              seed: int = 0) -> MIAResult:
    """Entropy-based logistic-regression membership attack (SSD's), on the forget samples.

    ``retain`` are training samples the model should still remember (members), ``test``
    samples it never saw (non-members), ``forget`` the training samples of the forget
    target. Classes are balanced in the attack's fit, as in the SSD code.
    """
    e_retain, e_test, e_forget = (entropy(logits_of(model, b)) for b in (retain, test, forget))
    return membership_attack(e_retain, e_test, e_forget, seed)


def membership_attack(e_retain: torch.Tensor, e_test: torch.Tensor, e_forget: torch.Tensor,
                      seed: int = 0) -> MIAResult:
    """The attack of :func:`mia_score` on entropies already computed (members, non-members, forget)."""
    from sklearn.linear_model import LogisticRegression

    x = torch.cat([e_retain, e_test])[:, None].numpy()
    y = torch.cat([torch.ones(len(e_retain)), torch.zeros(len(e_test))]).numpy()
    clf = LogisticRegression(class_weight="balanced", random_state=seed).fit(x, y)

    def member_rate(e: torch.Tensor) -> float:
        return float(clf.predict(e[:, None].numpy()).mean())

    return MIAResult(score=member_rate(e_forget), retain_member_rate=member_rate(e_retain),
                     test_member_rate=member_rate(e_test), n_forget=len(e_forget), n_retain=len(e_retain),
                     n_test=len(e_test))


# ---------------------------------------------------------------------------- feature probe
def head_layer(model: nn.Module) -> nn.Module:
    """The classifier head whose input is the penultimate feature vector (the last Linear)."""
    get_classifier = getattr(model, "get_classifier", None)  # timm's models say which module is the head
    head = get_classifier() if callable(get_classifier) else None
    if not isinstance(head, nn.Module) or not any(True for _ in head.parameters()):
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise DataError("the model has no Linear head to read penultimate features from")
        head = linears[-1]
    return head


@contextlib.contextmanager
def _capture_input(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    store: list[torch.Tensor] = []
    handle = module.register_forward_pre_hook(lambda _m, args: store.append(args[0].detach().flatten(1).float().cpu()))
    try:
        yield store
    finally:
        handle.remove()


@torch.no_grad()
def penultimate_features(model: nn.Module, batches: Iterable[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features, labels)``: the head's input per sample, and the batches' label tensors."""
    _logits, features, labels = outputs_and_features(model, batches)
    return features, labels


@torch.no_grad()
def outputs_and_features(model: nn.Module, batches: Iterable[Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(outputs, features, labels)`` from one pass: the model's output, the head's input
    and the batches' label tensors, per sample (eval mode inside; the flag is restored)."""
    outputs, labels = [], []
    device = model_device(model)
    with eval_mode(model), _capture_input(head_layer(model)) as store:
        for images, target, *_ in batches:
            outputs.append(main_tensor(model(images.to(device))).float().cpu())
            labels.append(torch.as_tensor(target).float().cpu())
    if not store:
        raise DataError("no samples to read features from")
    return torch.cat(outputs), torch.cat(store), torch.cat(labels)


@dataclass
class LinearProbe:
    """A logistic-regression probe for "the image holds target t" on penultimate features."""

    target: int
    classifier: Any
    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def fit(cls, features: torch.Tensor, labels: torch.Tensor, target: int, seed: int = 0) -> LinearProbe:
        from sklearn.linear_model import LogisticRegression

        y = (labels[:, target] > 0.5).numpy()
        if y.all() or not y.any():
            raise DataError(f"target {target} is in all or none of the probe's samples; it needs both")
        mean, std = features.mean(0), features.std(0).clamp(min=1e-6)
        clf = LogisticRegression(max_iter=2000, class_weight="balanced", random_state=seed)
        clf.fit(((features - mean) / std).numpy(), y)
        return cls(target=target, classifier=clf, mean=mean, std=std)

    def auc(self, features: torch.Tensor, labels: torch.Tensor) -> float:
        """ROC AUC of the probe's scores for the target on ``features`` (0.5 = chance)."""
        from sklearn.metrics import roc_auc_score

        y = (labels[:, self.target] > 0.5).numpy()
        scores = self.classifier.decision_function(((features - self.mean) / self.std).numpy())
        return float(roc_auc_score(y, scores))


def probe_scores(original: tuple[torch.Tensor, torch.Tensor], unlearned_train: tuple[torch.Tensor, torch.Tensor],
                 unlearned_test: tuple[torch.Tensor, torch.Tensor], original_test: tuple[torch.Tensor, torch.Tensor],
                 target: int, seed: int = 0) -> dict[str, float]:
    """Probe AUCs for ``target``: the original's probe on the original and on the unlearned
    model's features (``fixed``), and a probe refitted on the unlearned model (``refit``).

    ``fixed`` needs the unlearned features in the original's basis (see
    :func:`expand_features` for physically pruned models); ``refit`` asks whether the target
    is still linearly readable at all, whatever the basis (a retrained model's features are
    in a basis of their own, so only ``refit`` means something there).
    """
    probe = LinearProbe.fit(*original, target=target, seed=seed)
    out = {"original": probe.auc(*original_test)}
    if unlearned_test[0].shape[1] == original_test[0].shape[1]:
        out["fixed"] = probe.auc(*unlearned_test)
    out["refit"] = LinearProbe.fit(*unlearned_train, target=target, seed=seed).auc(*unlearned_test)
    return out


def expand_features(features: torch.Tensor, width: int, removed: Iterable[int]) -> torch.Tensor:
    """Put a physically pruned model's features back at their original indices (zeros where
    channels were removed), so a probe fitted on the original reads them."""
    removed = sorted(set(int(i) for i in removed))
    kept = [i for i in range(width) if i not in set(removed)]
    if len(kept) != features.shape[1]:
        raise DataError(f"{features.shape[1]} features, but {width} - {len(removed)} removed = {len(kept)}")
    out = torch.zeros(features.shape[0], width, dtype=features.dtype)
    out[:, kept] = features
    return out

