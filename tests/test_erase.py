"""The erase stage (tpunlearn.erase): what it may change, what it must keep, and that it moves
the forget target the right way, on a tiny seeded classifier trained on generated scenes."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from helpers import TinyCNN, assert_error, assert_same_state, run, snapshot

import tpunlearn as tu
from tpunlearn.erase import METHODS, EraseSpec, erase
from tpunlearn.errors import UsageError
from tpunlearn.privacy import LinearProbe, outputs_and_features

NUM = 4
FORGET = 0


def scenes(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of 16x16 scenes: each class is a fixed random 5x5 pattern stamped at a random place."""
    patterns = torch.rand(NUM, 3, 5, 5, generator=torch.Generator().manual_seed(99)) * 2 - 1
    gen = torch.Generator().manual_seed(seed)
    images = 0.1 * torch.randn(n, 3, 16, 16, generator=gen)
    labels = (torch.rand(n, NUM, generator=gen) < 0.4).float()
    for i in range(n):
        for c in labels[i].nonzero().flatten().tolist():
            y, x = torch.randint(0, 12, (2,), generator=gen).tolist()
            images[i, :, y:y + 5, x:x + 5] += patterns[c]
    return [(images[k:k + 32], labels[k:k + 32]) for k in range(0, n, 32)]


@pytest.fixture(scope="module")
def trained() -> tuple[torch.nn.Module, list, list]:
    torch.manual_seed(0)
    model = TinyCNN(num_classes=NUM)
    train, test = scenes(512, seed=1), scenes(256, seed=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _epoch in range(8):
        for images, labels in train:
            loss = F.binary_cross_entropy_with_logits(model(images), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval(), train, test


def forget_score(model: torch.nn.Module, batches: list) -> float:
    """Mean sigmoid of the forget logit on the scenes that hold the forget class."""
    logits, _, labels = outputs_and_features(model, batches)
    return float(torch.sigmoid(logits[labels[:, FORGET] > 0.5, FORGET]).mean())


def probe_auc(model: torch.nn.Module, train: list, test: list) -> float:
    _, feats, labels = outputs_and_features(model, train)
    _, feats_test, labels_test = outputs_and_features(model, test)
    return LinearProbe.fit(feats, labels, FORGET).auc(feats_test, labels_test)


def test_the_tiny_model_learned_every_class(trained):
    model, _train, test = trained
    assert forget_score(model, test) > 0.8


@pytest.mark.parametrize("method", sorted(METHODS))
def test_erase_lowers_the_forget_score_and_never_changes_the_original(trained, method):
    model, train, test = trained
    before, labels = snapshot(model), [b[1].clone() for b in train]
    work = copy.deepcopy(model)
    done = erase(work, model, train, [FORGET], spec=EraseSpec(method, steps=60, lr=1e-3, rank=4), seed=0)
    assert_same_state(before, snapshot(model))
    assert not model.training
    assert all(torch.equal(a, b[1]) for a, b in zip(labels, train, strict=True))  # labels never relabelled
    assert done["method"] == method and done["task"] == "multilabel" and done["weights_touched"] > 0
    if method == "project":  # a projection changes the features, not only the head
        assert probe_auc(work, train, test) < probe_auc(model, train, test)
    else:
        assert forget_score(work, test) < forget_score(model, test) - 0.2


def test_the_project_method_lowers_the_refitted_probe(trained):
    model, train, test = trained
    work = copy.deepcopy(model)
    erase(work, model, train, [FORGET], spec=EraseSpec("project", rank=4, layers=3))
    assert probe_auc(work, train, test) < probe_auc(model, train, test) - 0.02


def test_the_features_method_hides_the_target_from_a_refitted_probe_and_blanks_its_row(trained):
    model, train, test = trained
    work, plain = copy.deepcopy(model), copy.deepcopy(model)
    unguarded = {"steps": 120, "lr": 1e-3, "retain_drop": 1.0}
    done = erase(work, model, train, [FORGET], spec=EraseSpec("features", weight=1.0, **unguarded), seed=0)
    erase(plain, model, train, [FORGET], spec=EraseSpec("features", weight=0.0, **unguarded), seed=0)
    hidden, kept_only = probe_auc(work, train, test), probe_auc(plain, train, test)
    assert hidden < kept_only - 0.01 and hidden < probe_auc(model, train, test) - 0.01, (hidden, kept_only)
    assert done["mean_gap_after"] < 0.5 * done["mean_gap_before"], done
    assert done["trained_from"] == "input" and done["samples"] == 410  # no feature_info: the whole body
    assert done["guard"]["samples"] == 102 and done["guard"]["data"] == "held out of the erase data"  # a fifth
    head = work.head
    assert float(head.weight[FORGET].abs().max()) == 0.0  # the forget row reads nothing
    assert 0.4 < float(torch.sigmoid(head.bias[FORGET])) < 0.5  # and says "don't know", below the rule
    kept = [c for c in range(NUM) if c != FORGET]
    logits, _, labels = outputs_and_features(work, test)
    assert float(((logits[:, kept] > 0) == (labels[:, kept] > 0.5)).float().mean()) > 0.85  # the others still read
    assert torch.equal(head.weight[kept], model.head.weight[kept])  # the head's retained rows are the original's


def test_the_features_guard_stops_before_a_retained_class_falls_past_its_budget(trained):
    model, train, test = trained
    kept = [c for c in range(NUM) if c != FORGET]

    def agreement(m: torch.nn.Module) -> float:  # the worst retained class's share of the original's positives
        ours, _, _ = outputs_and_features(m, train)
        theirs, _, _ = outputs_and_features(model, train)
        return min(float(((ours[:, c] > 0) & (theirs[:, c] > 0)).sum() / (theirs[:, c] > 0).sum()) for c in kept)

    harsh = {"steps": 60, "lr": 5e-2, "weight": 50.0}
    guarded, wild = copy.deepcopy(model), copy.deepcopy(model)
    done = erase(guarded, model, train, [FORGET], spec=EraseSpec("features", retain_drop=0.02, **harsh))
    loose = erase(wild, model, train, [FORGET], spec=EraseSpec("features", retain_drop=1.0, **harsh))
    assert loose["guard"]["stopped_at"] is None and agreement(wild) < 0.9, loose["guard"]  # the test has teeth
    assert done["guard"]["stopped_at"] is not None and done["steps"] < 60, done["guard"]
    assert agreement(guarded) >= 0.98 - 1e-6 and done["guard"]["budget"] == 0.02
    given = erase(copy.deepcopy(model), model, train, [FORGET], spec=EraseSpec("features", guard=test, **harsh))
    assert given["guard"]["data"] == "given" and given["guard"]["samples"] == 256 and given["samples"] == 512
    assert given["guard"]["stopped_at"] is not None


class Staged(TinyCNN):
    """TinyCNN that lists its stages as timm's models do."""

    feature_info = [{"module": "conv1"}, {"module": "conv2"}, {"module": "conv3"}]


class Skipped(TinyCNN):
    """TinyCNN with a skip connection around conv3: the tail after conv3's input needs more than it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x))) + x.mean(1, keepdim=True)
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@pytest.mark.parametrize(("cls", "train_from", "frozen", "trained_from"), [
    (Staged, None, ("conv1", "bn1"), "conv2"),  # the second-last listed stage
    (TinyCNN, "conv3", ("conv1", "bn1", "conv2", "bn2"), "conv3"),
    (Skipped, "conv3", (), "input"),  # the cached input does not give the model's output: the whole body
])
def test_the_features_method_trains_only_the_tail_it_can_run_from_cached_inputs(trained, cls, train_from, frozen,
                                                                                 trained_from):
    model, train, _test = trained
    staged = cls(num_classes=NUM)
    staged.load_state_dict(model.state_dict())
    staged.eval()
    work = copy.deepcopy(staged)
    done = erase(work, staged, train, [FORGET], spec=EraseSpec("features", steps=10, lr=1e-2, train_from=train_from,
                                                               retain_drop=1.0))
    assert done["trained_from"] == trained_from
    moved = {n.split(".")[0] for n, p in work.named_parameters() if not torch.equal(p, staged.get_parameter(n))}
    assert moved and not moved & set(frozen), moved
    assert {"conv3", "bn3"} <= moved  # the module it trains from is trained too
    assert all(p.requires_grad for p in work.parameters())  # frozen only while it trains


def test_the_features_method_refuses_a_module_the_model_lacks(trained):
    model, train, _test = trained
    with pytest.raises(UsageError, match="no module 'layer9'"):
        erase(copy.deepcopy(model), model, train, [FORGET], spec=EraseSpec("features", train_from="layer9"))


def test_the_features_method_runs_on_a_multiclass_head(trained):
    model, train, _test = trained
    single = [(x, y.argmax(1)) for x, y in train]
    work = copy.deepcopy(model)
    done = erase(work, model, single, [FORGET], spec=EraseSpec("features", steps=10, retain_drop=1.0), task="multiclass")
    assert done["task"] == "multiclass" and done["weights_touched"] > 0
    assert float(work.head.weight[FORGET].abs().max()) > 0.0  # a softmax head keeps its rows


@pytest.mark.parametrize(("mode", "method"), [("mask", "distill"), ("mask", "salun"), ("mask", "project"),
                                             ("mask", "features"), ("physical", "salun")])
def test_unlearn_erase_keeps_pruned_channels_removed_and_mask_zeros_zero(trained, mode, method):
    model, train, _test = trained
    before = snapshot(model)
    spec = EraseSpec(method, steps=20, lr=1e-2, rank=4, data=train)
    res = tu.unlearn(model, train, [FORGET], sigma=3, delta=0.3, mode=mode, progress=False,
                     ignored_layers=[model.head], erase=spec)
    plain = tu.unlearn(model, train, [FORGET], sigma=3, delta=0.3, mode=mode, progress=False,
                       ignored_layers=[model.head])
    assert_same_state(before, snapshot(model))
    shapes = {k: v.shape for k, v in res.model.state_dict().items()}
    assert shapes == {k: v.shape for k, v in plain.model.state_dict().items()}  # nothing regrows
    report = res.report["erase"]
    assert report["method"] == method and report["weights_touched"] > 0 and report["seconds"] >= 0
    assert res.report["timings_s"]["erase"] == report["seconds"]
    ops = res.plan.zero_ops()
    if mode == "mask":
        assert ops, "the mask-mode plan zeroed nothing: the test checks nothing"
    for layer, idxs in ops.items():
        weight = res.model.get_submodule(layer).weight
        assert float(weight.detach()[idxs].abs().max()) == 0.0


def test_unlearn_erase_refuses_a_one_shot_iterator_and_an_unknown_method(trained):
    model, train, _test = trained
    with pytest.raises(UsageError, match="one-shot"):
        tu.unlearn(model, train, [FORGET], sigma=2, progress=False, ignored_layers=[model.head],
                   erase=EraseSpec("distill", data=iter(train)))
    with pytest.raises(UsageError, match="unknown erase method 'bogus'"):
        erase(copy.deepcopy(model), model, train, [FORGET], spec="bogus")


def test_families_without_an_erase_stage_refuse_it():
    from tpunlearn import adapters
    from tpunlearn.adapters.base import Adapter

    with pytest.raises(UsageError, match="^the deeplabv3 adapter has no erase stage; drop --erase$"):
        Adapter.erase(adapters.get("deeplabv3"), None, None, None, [1], original=None)  # the default refuses


def test_prune_erase_writes_what_it_changed_to_the_report(tmp_path, capsys):
    out = tmp_path / "o"
    code, _text, err = run(capsys, "prune", "--arch", "digitscenes-resnet", "--forget", "3", "--samples", "8",
                           "--data", "digits:300", "--erase", "project", "--out", out)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    erased = report["erase"]
    assert erased["method"] == "project" and erased["forget"] == [3] and erased["weights_touched"] > 0
    assert erased["layers"] and erased["seconds"] > 0
    assert f"erase (project): 0 steps, {erased['weights_touched']:,} weights touched" in _text


def test_prune_erase_runs_the_timm_default_from_the_last_two_stages_guarded_by_the_validation_split(tmp_path,
                                                                                                   capsys):
    out = tmp_path / "o"
    code, text, err = run(capsys, "prune", "--arch", "digitscenes-resnet", "--forget", "3", "--samples", "8",
                          "--data", "digits:200", "--erase", "--out", out)
    assert code == 0, err
    erased = json.loads((out / "report.json").read_text())["erase"]
    assert erased["method"] == "features" and erased["trained_from"] == "layer3" and erased["samples"] == 200
    assert erased["guard"]["data"] == "given" and erased["guard"]["samples"] > 0  # DigitScenes' val split
    guard = erased["guard"]
    assert guard["stopped_at"] is not None or erased["mean_gap_after"] < erased["mean_gap_before"], erased
    assert f"erase (features): {erased['steps']} steps from layer3, " in text
    assert ("stopped at step" in text) == (guard["stopped_at"] is not None)


def test_the_erase_line_says_where_the_features_method_trained_and_why_its_guard_stopped():
    from tpunlearn.cli import _erase_line

    erased = {"method": "features", "steps": 40, "trained_from": "layer3", "weights_touched": 1234, "seconds": 3.25,
              "mean_gap_before": 4.5, "mean_gap_after": 1.25,
              "guard": {"stopped_at": 40, "worst": 1, "worst_fall": 0.031, "budget": 0.02}}
    assert _erase_line(erased, ["star", "hexagon"]) == (
        "erase (features): 40 steps from layer3, 1,234 weights touched, 3.2 s; the forget target's whitened mean "
        "gap 4.50 -> 1.25; stopped at step 40 (the weights of its last passing check kept): retained 'hexagon' fell 3.1 points "
        "below the pruned model's agreement with the original (budget 2)")


def test_prune_erase_with_a_bad_method_is_one_line(tmp_path, capsys):
    assert_error(run(capsys, "prune", "--arch", "digitscenes-resnet", "--forget", "3", "--erase", "bogus",
                     "--out", tmp_path / "o"), 2, "--erase", "bogus", "distill")
    assert not (tmp_path / "o").exists()
