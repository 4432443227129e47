"""The yolov5 erase stage (``YOLOv5Adapter.erase``) on the zoo detector after the family's request, a
few DigitScenes scenes at 64 px: ``project`` changes only the class branch, ``distill`` trains the
pruned module itself in ultralytics' trainer; both keep the parameter count, every shape and the
mask-mode zeros, and leave the original alone. ``BoxMasks`` labels the pixels of each box."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("YOLO_OFFLINE", "1")

from helpers import family_request, n_params, snapshot  # noqa: E402

import tpunlearn as tu  # noqa: E402
from tpunlearn.adapters import ultralytics_repair as ur  # noqa: E402
from tpunlearn.adapters.yolov5 import BoxMasks  # noqa: E402

NAME = "digitscenes-yolov5"
FORGET = 3
DATA = "digits:16"

pytestmark = pytest.mark.usefixtures("module_cache")  # DigitScenes is written into a temp cache, not the user's


@pytest.fixture(scope="module")
def built():
    torch.manual_seed(0)
    return tu.models.load_model(NAME)


_REQUESTS: dict[str, object] = {}


def request(built, mode: str):
    """The family's default request forgetting digit 3, calibrated as prune does (made once per mode)."""
    adapter, model, info = built
    return family_request(_REQUESTS, built, mode, DATA, [FORGET], calibrate=adapter.calibration(model, info))


def check_kept(res, before: dict[str, torch.Tensor], n_pruned: int) -> None:
    """Parameter count, shapes and mask-mode zeros as the request left them."""
    assert n_params(res.model) == n_pruned
    assert {k: v.shape for k, v in res.model.state_dict().items()} == {k: v.shape for k, v in before.items()}
    for layer, idxs in res.plan.zero_ops().items():
        assert float(res.model.get_submodule(layer).weight.detach()[idxs].abs().sum()) == 0.0
    assert not res.model.training


@pytest.mark.parametrize("mode", ["physical", "mask"])
def test_project_changes_only_the_class_branch(built, mode):
    adapter, model, info = built
    res = request(built, mode)
    original, before, n_pruned = snapshot(model), snapshot(res.model), n_params(res.model)
    assert bool(res.plan.zero_ops()) == (mode == "mask")
    done = adapter.erase(res.model, info, DATA, [FORGET], original=model, method="project", plan=res.plan,
                         progress=False)
    check_kept(res, before, n_pruned)
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())
    assert done["method"] == "project" and done["task"] == "detection" and done["steps"] == 0
    assert done["weights_touched"] > 0 and done["seconds"] > 0 and done["weights_total"] == n_pruned
    assert set(done["layers"]) <= set(adapter.erase_layers(res.model)) and done["layers"]
    after = snapshot(res.model)
    moved = {k for k in after if after[k].is_floating_point() and not torch.equal(after[k], before[k])}
    assert moved and all(".cv3." in k and k.endswith(".weight") for k in moved)  # boxes and features untouched
    head = res.model.model[-1]
    assert all(float(s[-1].weight[FORGET].detach().abs().sum()) == 0.0 for s in head.cv3)  # still silenced


@pytest.mark.parametrize("mode", ["physical", "mask"])
def test_distill_trains_the_pruned_module_in_the_family_trainer(built, mode, tmp_path, monkeypatch):
    adapter, model, info = built
    res = request(built, mode)
    original, before, n_pruned = snapshot(model), snapshot(res.model), n_params(res.model)
    monkeypatch.chdir(tmp_path)  # ultralytics would leave runs/ here
    done = adapter.erase(res.model, info, DATA, [FORGET], original=model, method="distill", plan=res.plan,
                         progress=False)
    assert list(tmp_path.iterdir()) == []
    check_kept(res, before, n_pruned)
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())
    assert done["method"] == "distill" and done["objective"] == "negatives+distil" and done["steps"] >= 1
    assert done["params_before"] == done["params_after"] == n_pruned and done["images"] == 16
    assert done["weights_touched"] > 1000 and done["silenced"]
    head = res.model.model[-1]
    assert all(float(s[-1].bias[FORGET].detach()) == ur.SILENCED_LOGIT for s in head.cv3)


def test_box_masks_label_each_box_and_leave_the_rest_out():
    images = torch.zeros(1, 3, 8, 8)
    regions = [[(1, torch.tensor([0.0, 0.0, 1.0, 1.0])), (4, torch.tensor([0.25, 0.5, 0.5, 0.75])),
                (2, torch.tensor([0.75, 0.0, 1.0, 0.25]))]]
    (got_images, masks), = list(BoxMasks([(images, regions)]))
    assert got_images is images and masks.shape == (1, 8, 8)
    m = masks[0]
    assert int(m[0, 0]) == 1 and int(m[4, 2]) == 4 and int(m[5, 3]) == 4 and int(m[0, 7]) == 2  # smaller on top
    assert int((m == 4).sum()) == 4 and int((m == 2).sum()) == 4
    (_, only_small), = list(BoxMasks([(images, [regions[0][1:]])]))
    assert int((only_small[0] == 255).sum()) == 64 - 8


@pytest.mark.slow
@pytest.mark.parametrize("method", ["", "project"])
def test_prune_erase_on_the_detector_writes_the_report(method, tmp_path, capsys, monkeypatch):
    """``prune --arch digitscenes-yolov5 --forget 3 --erase [project]`` end to end (no METHOD: distill)."""
    import json

    from helpers import run

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "o"
    code, _text, err = run(capsys, "prune", "--arch", NAME, "--forget", "3", "--data", DATA, "--erase",
                           *([method] if method else []), "--out", out)
    assert code == 0, err
    erased = json.loads((out / "report.json").read_text())["erase"]
    assert erased["method"] == (method or "distill") and erased["task"] == "detection" and erased["forget"] == [3]
    assert erased["weights_touched"] > 0 and erased["seconds"] > 0 and "steps" in erased
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]
    loaded = tu.models.load(out / "model.pt")[0]
    assert n_params(loaded) == erased["weights_total"]
