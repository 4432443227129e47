"""The erase stage on per-pixel logits (tpunlearn.erase, task "segmentation"): on a tiny seeded
segmenter with a dict output trained on generated scenes, every method keeps the shapes and the
original, lowers the forget class's probability on its pixels and leaves the other pixels close
to the original's; mask-mode zeros stay zero; bad input is one line. The DeepLab CLI run is slow."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_error, assert_same_state, n_params, run, snapshot
from torch import nn

import tpunlearn as tu
from tpunlearn.erase import HEAD_METHODS, METHODS, EraseSpec, erase
from tpunlearn.errors import UsageError
from tpunlearn.targets import SegmentationLogit

NUM = 4  # background + 3 classes
FORGET = 2
SIZE = 16


class TinySegmenter(nn.Module):
    """Conv-BN-ReLU x3, then a 1x1 classifier; returns ``{"out": (B, NUM, H, W)}`` as torchvision does."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(),
            nn.Conv2d(24, 24, 3, padding=1), nn.ReLU())
        self.classifier = nn.Conv2d(24, NUM, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.classifier(self.features(x))}


def scenes(n: int, seed: int, masks_as_list: bool = True) -> list[tuple[torch.Tensor, object]]:
    """16x16 scenes: each class 1..3 a fixed colour pattern on a 4x4 square at a random place (p 0.5),
    masks the class index on its square, 0 elsewhere."""
    patterns = torch.rand(NUM, 3, 4, 4, generator=torch.Generator().manual_seed(7)) * 2 - 1
    gen = torch.Generator().manual_seed(seed)
    images = 0.1 * torch.randn(n, 3, SIZE, SIZE, generator=gen)
    masks = torch.zeros(n, SIZE, SIZE, dtype=torch.uint8)
    for i in range(n):
        for c in range(1, NUM):
            if float(torch.rand(1, generator=gen)) < 0.5:
                y, x = torch.randint(0, SIZE - 4, (2,), generator=gen).tolist()
                images[i, :, y:y + 4, x:x + 4] += patterns[c]
                masks[i, y:y + 4, x:x + 4] = c
    return [(images[k:k + 16], list(masks[k:k + 16]) if masks_as_list else masks[k:k + 16])
            for k in range(0, n, 16)]


def multi_hot(batches: list) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x, torch.stack([F.one_hot(m.long(), NUM).flatten(0, 1).amax(0).float() for m in masks]))
            for x, masks in batches]


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, list, list]:
    torch.manual_seed(0)
    model = TinySegmenter()
    train, test = scenes(256, seed=1), scenes(96, seed=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _epoch in range(6):
        for images, masks in train:
            loss = F.cross_entropy(model(images)["out"], torch.stack(masks).long())
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval(), train, test


@torch.no_grad()
def pixel_stats(model: nn.Module, original: nn.Module, batches: list) -> tuple[float, float, float]:
    """(mean forget-class probability on its pixels, the same under ``original``, share of other pixels
    whose argmax matches the original's)."""
    mine, theirs, agree, others = 0.0, 0.0, 0, 0
    count = 0
    for images, masks in batches:
        m = torch.stack(masks).long()
        p, q = (torch.softmax(net(images)["out"], 1) for net in (model, original))
        hit = m == FORGET
        mine += float(p[:, FORGET][hit].sum())
        theirs += float(q[:, FORGET][hit].sum())
        count += int(hit.sum())
        agree += int((p.argmax(1) == q.argmax(1))[~hit].sum())
        others += int((~hit).sum())
    return mine / count, theirs / count, agree / others


def test_the_tiny_segmenter_learned_the_forget_class(trained):
    model, _train, test = trained
    forget_p, _, _ = pixel_stats(model, model, test)
    assert forget_p > 0.8


@pytest.mark.parametrize("method", sorted(set(METHODS) - set(HEAD_METHODS)))
def test_erase_lowers_the_forget_pixels_and_keeps_the_rest(trained, method):
    model, train, test = trained
    before, masks = snapshot(model), [[m.clone() for m in b[1]] for b in train]
    work = copy.deepcopy(model)
    shapes = {k: v.shape for k, v in work.state_dict().items()}
    done = erase(work, model, train, [FORGET], spec=EraseSpec(method, steps=30, lr=3e-3, rank=4), seed=0)
    assert_same_state(before, snapshot(model))
    assert all(torch.equal(a, b) for got, b_ in zip(masks, train, strict=True) for a, b in zip(got, b_[1], strict=True))
    assert done["method"] == method and done["task"] == "segmentation" and done["weights_touched"] > 0
    assert {k: v.shape for k, v in work.state_dict().items()} == shapes and n_params(work) == n_params(model)
    assert not work.training
    forget_p, forget_p0, agree = pixel_stats(work, model, test)
    if method == "project":  # no training: it takes the forget images' directions out of the last layers
        assert forget_p < forget_p0 - 0.05
    else:
        assert forget_p < 0.5 * forget_p0
    assert agree > 0.9  # the other pixels keep the original's class


def test_distill_moves_the_forget_pixels_to_the_originals_next_class(trained):
    """The target is the original with the forget class removed and renormalised: on the forget pixels the
    erased model picks the class the original ranks second, not the forget class."""
    model, train, test = trained
    work = copy.deepcopy(model)
    erase(work, model, train, [FORGET], spec=EraseSpec("distill", steps=40, lr=3e-3), seed=0)
    with torch.no_grad():
        images, masks = test[0]
        m = torch.stack(masks).long() == FORGET
        q = model(images)["out"]
        q[:, FORGET] = -torch.inf
        got = work(images)["out"].argmax(1)
    assert float((got[m] == q.argmax(1)[m]).float().mean()) > 0.8


@pytest.mark.parametrize("method", ["distill", "salun", "project"])
def test_unlearn_erase_keeps_mask_zeros_zero(trained, method):
    """Through ``tu.unlearn(erase=EraseSpec(data=mask batches))`` in mask mode, the task read from the
    masks (an ``(N, H, W)`` tensor here); the zeroed channels stay zero and nothing regrows."""
    model, train, _test = trained
    before = snapshot(model)
    tensors = scenes(128, seed=1, masks_as_list=False)
    spec = EraseSpec(method, steps=15, lr=1e-2, rank=4, data=tensors)
    res = tu.unlearn(model, multi_hot(train), [FORGET], sigma=3, delta=0.1, mode="mask", progress=False,
                     target=SegmentationLogit, ignored_layers=[model.classifier],
                     output_transform=lambda out: out["out"], erase=spec)
    assert_same_state(before, snapshot(model))
    report = res.report["erase"]
    assert report["method"] == method and report["task"] == "segmentation" and report["weights_touched"] > 0
    ops = res.plan.zero_ops()
    assert ops, "the mask-mode plan zeroed nothing: the test checks nothing"
    for layer, idxs in ops.items():
        assert float(res.model.get_submodule(layer).weight.detach()[idxs].abs().max()) == 0.0
    assert n_params(res.model) == n_params(model)


def test_bad_segmentation_input_is_one_line(trained):
    model, train, _test = trained
    with pytest.raises(UsageError, match="unknown erase method 'bogus'; known: distill"):
        erase(copy.deepcopy(model), model, train, [FORGET], spec="bogus")
    with pytest.raises(UsageError, match=r"reads \(N, C\) logits.*\(1, 4, 16, 16\)"):  # multi-hot data, pixel logits
        erase(copy.deepcopy(model), model, multi_hot(train), [FORGET], spec="distill")
    linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, NUM))
    with pytest.raises(UsageError, match=r"reads per-pixel logits .*\(1, 4\)"):
        erase(linear, linear, train, [FORGET], spec="distill")


def test_every_family_names_the_erase_methods_it_runs():
    from tpunlearn import adapters

    assert adapters.get("timm").erase_methods() == tuple(METHODS)
    assert adapters.get("deeplabv3").erase_methods() == tuple(m for m in METHODS if m not in HEAD_METHODS)
    assert adapters.get("yolov5").erase_methods() == ("distill", "project")
    with pytest.raises(UsageError, match=r"^the yolov5 erase stage runs distill or project, not 'salun' \("):
        adapters.get("yolov5").erase(None, None, None, [1], original=None, method="salun")


def test_prune_erase_salun_on_a_detector_is_one_line(tmp_path, capsys):
    assert_error(run(capsys, "prune", "--arch", "digitscenes-yolov5", "--forget", "3", "--erase", "salun",
                     "--out", tmp_path / "o"), 2, "yolov5", "distill, project", "salun")
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_prune_erase_on_the_deeplab_zoo_model_writes_the_report(tmp_path, capsys):
    """``prune --arch digitscenes-deeplabv3 --forget 3 --erase`` (the default, distill) end to end."""
    out = tmp_path / "o"
    code, _text, err = run(capsys, "prune", "--arch", "digitscenes-deeplabv3", "--forget", "3", "--data",
                           "digits:64", "--erase", "--out", out)
    assert code == 0, err
    erased = json.loads((out / "report.json").read_text())["erase"]
    assert erased["method"] == "distill" and erased["task"] == "segmentation" and erased["forget"] == [4]
    assert erased["steps"] > 0 and erased["weights_touched"] > 0 and erased["seconds"] > 0
    assert erased["scenes"] == 64
