"""Privacy checks after unlearning: a membership-inference attack and a feature probe.

* :func:`mia_score` is the entropy-based logistic-regression attack of the SSD repository
  (Foster et al., AAAI 2024): the attacker learns, from the entropy of the model's softmax,
  to tell members (retained training samples) from non-members (test samples), and the
  score is the fraction of the forget training samples it calls members. A model that has
  truly forgotten them should score like a model that never saw them (a retrained one).
* :func:`probe_scores` asks whether the forget target is still linearly readable from the
  penultimate features (the paper's Fig. 3 motivation): output metrics alone can hide
  features that are still there.
* :func:`svm_mia` is SalUn's / l1-sparse's "MIA-efficacy" (an RBF SVC on the confidence of the
  true label, ``evaluation/SVC_MIA.py`` in their repositories); :class:`KNNProbe` reads the
  target from neighbourhoods of the features, linear or not; :func:`classifier_checks` runs all
  four on a classifier in one pass per data group.
* :func:`region_checks` are the probes for segmenters and detectors, on a feature map pooled
  over the target's mask pixels or boxes; :func:`invert_target` is the paper's Fig. 7.
Every check returns a :class:`PrivacyResult` (``to_dict()`` for JSON); :mod:`tpunlearn.audit`
puts them side by side for the original, the unlearned model and a retrained reference.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tpunlearn.errors import DataError
from tpunlearn.torchutils import eval_mode, main_tensor, model_device, requires_grad


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
def capture_input(module: nn.Module, keep_graph: bool = False) -> Iterator[list[torch.Tensor]]:
    """``module``'s input of every forward while inside, flattened per sample: detached float CPU
    copies, or (``keep_graph``) the tensors themselves, for a loss to train through."""
    store: list[torch.Tensor] = []

    def keep(_m: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0].flatten(1)
        store.append(x if keep_graph else x.detach().float().cpu())
    handle = module.register_forward_pre_hook(keep)
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
def outputs_and_features(model: nn.Module, batches: Iterable[Any],
                         limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(outputs, features, labels)`` from one pass: the model's output, the head's input
    and the batches' label tensors, per sample (eval mode inside; the flag is restored).
    ``limit`` stops reading after that many samples (the first ``limit`` are returned)."""
    outputs, labels = [], []
    device = model_device(model)
    seen = 0
    with eval_mode(model), capture_input(head_layer(model)) as store:
        for images, target, *_ in batches:
            if limit is not None and seen >= limit:
                break
            outputs.append(main_tensor(model(images.to(device))).float().cpu())
            labels.append(torch.as_tensor(target).float().cpu())
            seen += len(images)
    if not store:
        raise DataError("no samples to read features from")
    stop = limit if limit is not None else seen
    return torch.cat(outputs)[:stop], torch.cat(store)[:stop], torch.cat(labels)[:stop]


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



# ---------------------------------------------------------------------------- one result type
MIA_TOLERANCE = 0.05  # issue 14: an attack within 5 points of the retrained reference
PROBE_TOLERANCE = 0.03  # ... and a probe AUC within 0.03 of it
CAP = 1000  # samples per group an attack or probe reads at most: seconds on CPU, a stable rate
MIN_PER_CLASS = 5  # fewer positives or negatives than this make an AUC or an attack meaningless


@dataclass
class PrivacyResult:
    """One attack's or probe's number on one model, with what it was computed from.

    ``kind`` is ``"mia"`` (a rate in [0, 1]) or ``"probe"`` (a ROC AUC, 0.5 = chance); ``n``
    holds the sample counts and ``detail`` the attack's own diagnostics (per-feature rates, k).
    """

    name: str
    value: float
    kind: str
    n: dict[str, int]
    detail: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "kind": self.kind, "n": dict(self.n),
                "detail": dict(self.detail)}


def tolerance(kind: str) -> float:
    """How far from the reference a result of ``kind`` may lie and still count as matching it."""
    return MIA_TOLERANCE if kind == "mia" else PROBE_TOLERANCE


def _subsample(n: int, cap: int, seed: int) -> torch.Tensor:
    """Seeded indices of at most ``cap`` of ``n`` items (all of them, in order, when ``n <= cap``)."""
    if n <= cap:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:cap].sort().values


def _check_count(what: str, n: int, least: int = MIN_PER_CLASS) -> None:
    if n < least:
        raise DataError(f"too few samples for the privacy checks: {n} {what} (at least {least} needed)")


# ---------------------------------------------------------------------------- confidence SVM attack
def confidence_features(logits: torch.Tensor, labels: torch.Tensor, multilabel: bool) -> dict[str, torch.Tensor]:
    """The SVM attack's features per sample, after SalUn's ``evaluation/SVC_MIA.py``:
    ``confidence`` (probability of the true label), ``entropy`` and ``m_entropy`` (the
    modified entropy of Song & Mittal, which uses the label), each ``(N,)``.

    Multi-class: softmax over the classes, the true class is ``labels.argmax(1)``. Multi-label:
    each class is a binary question (sigmoid), and the per-sample value is the mean over the
    classes (``confidence`` is the geometric mean of the true labels' probabilities), so a
    model that has forgotten a target is unsure exactly where that target's label is 1.
    """
    eps = 1e-30
    logits, labels = logits.float(), labels.float()
    if not multilabel:
        p = torch.softmax(logits, 1)
        y = torch.nn.functional.one_hot(labels.argmax(1), p.shape[1]).bool()
        conf = p[y]
        ent = -(p * p.clamp(min=eps).log()).sum(1)
        m_ent = -torch.where(y, (1 - p) * p.clamp(min=eps).log(), p * (1 - p).clamp(min=eps).log()).sum(1)
        return {"confidence": conf, "entropy": ent, "m_entropy": m_ent}
    p = torch.sigmoid(logits)
    truth = torch.where(labels > 0.5, p, 1 - p)  # probability of the true label, per class
    ent = -(p * p.clamp(min=eps).log() + (1 - p) * (1 - p).clamp(min=eps).log())
    m_ent = -2 * (1 - truth) * truth.clamp(min=eps).log()  # Song & Mittal's formula with two classes
    return {"confidence": truth.clamp(min=eps).log().mean(1).exp(), "entropy": ent.mean(1), "m_entropy": m_ent.mean(1)}


def svm_attack(members: torch.Tensor, nonmembers: torch.Tensor, forget: torch.Tensor,
               seed: int = 0) -> tuple[float, float, float]:
    """SalUn's ``SVC_fit_predict``: an RBF SVC (``C=3, gamma="auto"``) learns members from
    non-members on one feature; returns the member rates of ``forget``, ``members`` and
    ``nonmembers``. The two training groups are balanced to the smaller (seeded)."""
    from sklearn.svm import SVC

    n = min(len(members), len(nonmembers))
    members = members[_subsample(len(members), n, seed)]
    nonmembers = nonmembers[_subsample(len(nonmembers), n, seed + 1)]
    x = torch.cat([members, nonmembers]).reshape(2 * n, -1).double().numpy()
    y = torch.cat([torch.ones(n), torch.zeros(n)]).numpy()
    clf = SVC(C=3, gamma="auto", kernel="rbf", random_state=seed).fit(x, y)

    def rate(v: torch.Tensor) -> float:
        return float(clf.predict(v.reshape(len(v), -1).double().numpy()).mean())

    return rate(forget), rate(members), rate(nonmembers)


def svm_mia(retain: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
            forget: tuple[torch.Tensor, torch.Tensor], multilabel: bool, seed: int = 0) -> PrivacyResult:
    """SalUn's "MIA-efficacy" from ``(logits, labels)`` of retained training samples (members),
    test samples (non-members) and the forget target's training samples: the fraction of the
    forget samples the confidence SVM calls non-members (higher = more forgotten; a retrained
    model's level is the goal). The other features' efficacies go in ``detail``."""
    for what, (logits, _labels) in (("retained training samples", retain), ("test samples", test),
                                    ("forget training samples", forget)):
        _check_count(what, len(logits))
    feats = [confidence_features(logits, labels, multilabel) for logits, labels in (retain, test, forget)]
    detail: dict[str, Any] = {}
    for name in feats[0]:
        f_rate, m_rate, n_rate = svm_attack(feats[0][name], feats[1][name], feats[2][name], seed)
        detail[name] = {"efficacy": 1.0 - f_rate, "retain_member_rate": m_rate, "test_member_rate": n_rate}
    n = {"retain": len(retain[0]), "test": len(test[0]), "forget": len(forget[0])}
    return PrivacyResult("svm_mia_efficacy", detail["confidence"]["efficacy"], "mia", n, detail)


# ---------------------------------------------------------------------------- refitted probes
def knn_k(n_train: int) -> int:
    """k of the k-NN probe: about sqrt(n) (the usual rule), odd, between 5 and 51."""
    k = int(round(n_train ** 0.5)) | 1
    return max(5, min(51, k, n_train - (1 - n_train % 2)))


@dataclass
class KNNProbe:
    """A k-NN probe for "holds target t" on standardised features (sklearn KNeighborsClassifier):
    does any neighbourhood of the feature space still gather the target, linear or not?"""

    classifier: Any
    mean: torch.Tensor
    std: torch.Tensor
    k: int

    @classmethod
    def fit(cls, features: torch.Tensor, holds: torch.Tensor, k: int | None = None) -> KNNProbe:
        from sklearn.neighbors import KNeighborsClassifier

        holds = holds.bool()
        if holds.all() or not holds.any():
            raise DataError("the target is in all or none of the probe's samples; it needs both")
        k = min(k or knn_k(len(features)), len(features))
        mean, std = features.mean(0), features.std(0).clamp(min=1e-6)
        clf = KNeighborsClassifier(n_neighbors=k).fit(((features - mean) / std).numpy(), holds.numpy())
        return cls(classifier=clf, mean=mean, std=std, k=k)

    def auc(self, features: torch.Tensor, holds: torch.Tensor) -> float:
        """ROC AUC of the neighbours' vote for the target on ``features`` (0.5 = chance)."""
        from sklearn.metrics import roc_auc_score

        scores = self.classifier.predict_proba(((features - self.mean) / self.std).numpy())[:, 1]
        return float(roc_auc_score(holds.bool().numpy(), scores))


def probe_aucs(train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
               seed: int = 0, what: str = "samples") -> dict[str, PrivacyResult]:
    """The linear and the k-NN probe, both refitted on ``train`` = ``(features, holds)`` and scored
    on ``test``: ``{"linear_probe_auc": ..., "knn_probe_auc": ...}``. ``holds`` is a bool per row
    (the sample, or region, holds a forget target); each side needs both kinds."""
    for side, (_feats, holds) in (("training", train), ("test", test)):
        holds = holds.bool()
        _check_count(f"{side} {what} with a forget target", int(holds.sum()))
        _check_count(f"{side} {what} without one", int((~holds).sum()))
    n = {"train": len(train[0]), "test": len(test[0]), "train_positive": int(train[1].bool().sum()),
         "test_positive": int(test[1].bool().sum())}
    linear = LinearProbe.fit(train[0], train[1].float()[:, None], target=0, seed=seed)
    knn = KNNProbe.fit(*train)
    return {"linear_probe_auc": PrivacyResult("linear_probe_auc", linear.auc(test[0], test[1].float()[:, None]),
                                              "probe", n, {"features": int(train[0].shape[1])}),
            "knn_probe_auc": PrivacyResult("knn_probe_auc", knn.auc(*test), "probe", n,
                                           {"features": int(train[0].shape[1]), "k": knn.k})}


def holds_any(labels: torch.Tensor, targets: Sequence[int]) -> torch.Tensor:
    """Bool per row of a multi-hot ``labels``: the sample holds at least one of ``targets``."""
    return labels[:, [int(t) for t in targets]].sum(1) > 0.5


# ---------------------------------------------------------------------------- classifier checks
def classifier_checks(model: nn.Module, retain: Iterable[Any], test: Iterable[Any], forget: Iterable[Any],
                      targets: Sequence[int], multilabel: bool, seed: int = 0, cap: int = CAP,
                      not_run: dict[str, str] | None = None) -> dict[str, PrivacyResult]:
    """Every attack and probe of a classifier, from one pass over at most ``cap`` samples of each
    of ``retain`` (training samples without the forget ``targets``: members), ``test``
    (non-members) and ``forget`` (training samples with a forget target):

    ``entropy_mia`` (SSD's attack: the forget samples' member rate), ``svm_mia_efficacy``
    (SalUn's: their non-member rate), and the refitted ``linear_probe_auc`` / ``knn_probe_auc``
    for "holds a forget target" on the penultimate features (fitted on the training samples,
    scored on the test split). A check the data cannot support (too few samples) raises a
    DataError, or, when ``not_run`` is given, is left out and recorded there with the reason.
    """
    (r_out, r_feat, r_lab), (t_out, t_feat, t_lab), (f_out, f_feat, f_lab) = (
        outputs_and_features(model, batches, limit=cap) for batches in (retain, test, forget))

    def entropy_attack() -> dict[str, PrivacyResult]:
        ent = membership_attack(entropy(r_out), entropy(t_out), entropy(f_out), seed)
        return {"entropy_mia": PrivacyResult("entropy_mia", ent.score, "mia",
                                             {"retain": ent.n_retain, "test": ent.n_test, "forget": ent.n_forget},
                                             {"retain_member_rate": ent.retain_member_rate,
                                              "test_member_rate": ent.test_member_rate})}

    def probes() -> dict[str, PrivacyResult]:
        train = (torch.cat([r_feat, f_feat]), holds_any(torch.cat([r_lab, f_lab]), targets))
        return probe_aucs(train, (t_feat, holds_any(t_lab, targets)), seed, "samples")

    parts = ((("entropy_mia",), entropy_attack),
             (("svm_mia_efficacy",), lambda: {"svm_mia_efficacy": svm_mia((r_out, r_lab), (t_out, t_lab),
                                                                          (f_out, f_lab), multilabel, seed)}),
             (("linear_probe_auc", "knn_probe_auc"), probes))
    results: dict[str, PrivacyResult] = {}
    for names, run in parts:
        try:
            results.update(run())
        except DataError as exc:
            if not_run is None:
                raise
            not_run.update({name: str(exc) for name in names})
    return results


# ---------------------------------------------------------------------------- region probes
Region = tuple[int, torch.Tensor]  # (class, a bool mask (h, w) at any resolution, or a box (4,) xyxy in [0, 1])


def _region_weights(region: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The ``(h, w)`` pooling weights of a region on a feature map of ``size`` (sum > 0 unless empty)."""
    h, w = size
    if region.dim() == 1:  # a box: the feature cells it overlaps, weighted by the overlap
        x1, y1, x2, y2 = (float(v) for v in region)
        xs = ((torch.minimum(torch.arange(1, w + 1) / w, torch.tensor(x2))
               - torch.maximum(torch.arange(w) / w, torch.tensor(x1))).clamp(min=0))
        ys = ((torch.minimum(torch.arange(1, h + 1) / h, torch.tensor(y2))
               - torch.maximum(torch.arange(h) / h, torch.tensor(y1))).clamp(min=0))
        return ys[:, None] * xs[None, :]
    return torch.nn.functional.interpolate(region.float()[None, None], size=size, mode="area")[0, 0]


@torch.no_grad()
def region_features(model: nn.Module, layer: str, batches: Iterable[tuple[torch.Tensor, list[list[Region]]]],
                    cap: int = CAP) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(features (R, C), classes (R,), image ids (R,))``: ``layer``'s output feature map averaged
    over each region of each image (mask pixels, or the cells a box covers), for at most ``cap``
    regions. ``batches`` yield ``(images, regions per image)``."""
    modules = dict(model.named_modules())
    if layer not in modules:
        raise DataError(f"the model has no layer {layer!r} to pool region features from")
    store: list[torch.Tensor] = []
    handle = modules[layer].register_forward_hook(lambda _m, _a, out: store.append(main_tensor(out).detach()))
    feats, classes, ids, image = [], [], [], 0
    try:
        with eval_mode(model):
            for images, regions in batches:
                store.clear()
                model(images.to(model_device(model)))
                fmap = store[-1].float().cpu()
                for b, per_image in enumerate(regions):
                    for cls, region in per_image:
                        weight = _region_weights(region, (int(fmap.shape[-2]), int(fmap.shape[-1])))
                        if float(weight.sum()) > 0:
                            feats.append((fmap[b] * weight).sum((1, 2)) / weight.sum())
                            classes.append(int(cls))
                            ids.append(image + b)
                image += len(images)
                if len(feats) >= cap:
                    break
    finally:
        handle.remove()
    if not feats:
        raise DataError("no regions (masks or boxes) to read features from")
    return torch.stack(feats)[:cap], torch.tensor(classes)[:cap], torch.tensor(ids)[:cap]


def region_checks(model: nn.Module, layer: str, batches: Iterable[tuple[torch.Tensor, list[list[Region]]]],
                  targets: Sequence[int], seed: int = 0, cap: int = CAP) -> dict[str, PrivacyResult]:
    """The linear and k-NN probes for "this region is a forget target" against the other targets'
    regions, on ``layer``'s features pooled per region; refitted on half the images (seeded) and
    scored on the other half, so no image lends regions to both sides."""
    feats, classes, ids = region_features(model, layer, batches, cap)
    holds = torch.isin(classes, torch.tensor([int(t) for t in targets]))
    if not holds.any():
        raise DataError(f"no region of the data is of target(s) {list(targets)}: nothing to probe")
    images = ids.unique()
    order = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))]
    train = torch.isin(ids, order[: len(order) // 2])
    results = probe_aucs((feats[train], holds[train]), (feats[~train], holds[~train]), seed, "regions")
    for r in results.values():
        r.detail["layer"] = layer
    return results


# ---------------------------------------------------------------------------- model inversion
def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels (the smoothness prior of the inversion)."""
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


# the zoo classifier's target logit climbs to ~400 under ascent: at tv 0.5 the picture is pixel noise,
# at 300 (measured 100 steps, 64x64, 2.5 s on one CPU thread) strokes and blobs survive
INVERSION_TV = 300.0


def invert_target(model: nn.Module, target: int, input_size: Sequence[int], steps: int = 100, lr: float = 0.05,
                  tv: float = INVERSION_TV, l2: float = 1.0, seed: int = 0,
                  bounds: tuple[float, float] | None = None) -> torch.Tensor:
    """The input that maximises ``target``'s logit (the paper's Fig. 7), ``(C, H, W)``.

    Gradient ascent with Adam from seeded Gaussian noise (the same start for every model given
    the same seed), under a small total-variation and L2 prior (L2 about the middle of
    ``bounds``) so the picture shows shapes, not adversarial noise; ``bounds`` (the data's
    value range) clamps the input after every step. The model is left as it was (eval mode
    inside, no parameter grads).
    """
    gen = torch.Generator().manual_seed(seed)
    device = model_device(model)
    lo, hi = bounds if bounds is not None else (float("-inf"), float("inf"))
    mid, spread = ((lo + hi) / 2, (hi - lo)) if bounds is not None else (0.0, 1.0)
    start = mid + 0.1 * spread * torch.randn(1, *(int(v) for v in input_size), generator=gen)
    x = start.clamp(lo, hi).to(device).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    with eval_mode(model), requires_grad(model.parameters(), False):
        for _ in range(int(steps)):
            opt.zero_grad()
            logit = main_tensor(model(x))[0, int(target)]
            loss = -logit + tv * total_variation(x) + l2 * (x - mid).pow(2).mean()
            loss.backward()
            opt.step()
            with torch.no_grad():
                x.clamp_(lo, hi)
    return x.detach()[0].cpu()
