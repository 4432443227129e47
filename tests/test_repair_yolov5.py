"""yolov5 repair through ultralytics' own ``DetectionTrainer`` handed the pruned module.

Fast tests repair the zoo detector after a request on a few DigitScenes scenes (one or two
optimizer steps at 64 px): the pruned parameter count and every shape survive, mask-mode channels
stay zero, the forget class's boxes never reach the loss, the caller's original model and cwd are
untouched, and bad data is one line. The slow test runs the CLI end to end (prune, repair one
epoch, --eval, report.json["repair"]) and hands the result back to ultralytics (val, predict, ONNX
export), on DigitScenes and on a user's own dataset YAML.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("YOLO_OFFLINE", "1")

import tpunlearn as tu  # noqa: E402
from tpunlearn.adapters import ultralytics_repair as ur  # noqa: E402
from tpunlearn.errors import PlanError, UsageError  # noqa: E402
from tpunlearn.plan import module_by_name  # noqa: E402

from helpers import family_request, listing_with_times, n_params, run, snapshot  # noqa: E402

NAME = "digitscenes-yolov5"
FORGET = 3


pytestmark = pytest.mark.usefixtures("module_cache")  # DigitScenes is written into a temp cache, not the user's


@pytest.fixture(scope="module")
def built():
    torch.manual_seed(0)
    return tu.models.load_model(NAME)


_REQUESTS: dict[str, object] = {}


def request(built, mode: str):
    """The family's default request forgetting digit 3 (made once per mode; repairs train copies)."""
    return family_request(_REQUESTS, built, mode, "digits:16", [FORGET])


@pytest.mark.parametrize("mode", ["physical", "mask"])
def test_repair_trains_the_pruned_module_and_keeps_its_pruning(built, mode, tmp_path, monkeypatch):
    adapter, model, info = built
    res = request(built, mode)
    original, pruned_before = snapshot(model), snapshot(res.model)
    n_pruned = n_params(res.model)
    assert (n_pruned < n_params(model)) == (mode == "physical")
    zero_ops = res.plan.zero_ops()
    assert bool(zero_ops) == (mode == "mask")
    monkeypatch.chdir(tmp_path)  # ultralytics would leave runs/ here
    summary = tu.models.repair(res.model, info, "digits:16", [FORGET], original=model, epochs=1, lr=1e-3,
                               plan=res.plan, progress=False)
    assert list(tmp_path.iterdir()) == []
    assert summary["params_before"] == summary["params_after"] == n_params(res.model) == n_pruned
    assert summary["steps"] >= 1 and summary["images"] == 16 and summary["objective"] == adapter.repair_objective
    assert "kd_loss" in summary["loss_items_last"] and summary["loss_first"] > 0
    after = snapshot(res.model)
    assert {k: v.shape for k, v in after.items()} == {k: v.shape for k, v in pruned_before.items()}
    assert all(v.dtype == pruned_before[k].dtype for k, v in after.items())  # FP32 back, not ultralytics' half
    moved = [k for k in after if after[k].is_floating_point() and not torch.equal(after[k], pruned_before[k])]
    assert len(moved) > 10  # it trained
    for layer, idxs in zero_ops.items():
        assert float(module_by_name(res.model, layer).weight[idxs].abs().sum()) == 0.0
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())  # the original is untouched
    assert not res.model.training
    head = res.model.model[-1]
    assert summary["silenced"] and all(float(s[-1].bias[FORGET].detach()) == ur.SILENCED_LOGIT for s in head.cv3)
    with torch.no_grad():
        scores = adapter.output_transform(res.model(torch.rand(2, 3, 64, 64)))[:, 4:]
    assert float(scores[:, FORGET].max()) < 1e-6 < float(scores.max())


def test_repair_on_a_users_dataset_leaves_it_as_it_was(built, tmp_path, monkeypatch):
    """ultralytics' trainer saves ``labels/<split>.cache`` beside the labels it scans; the repair keeps
    that cache under tpunlearn's cache folder, so the user's dataset folder is not written."""
    from tpunlearn.data import write_yolo

    adapter, model, info = built
    res = request(built, "physical")
    data = write_yolo(tmp_path / "user", size=64, n_scenes={"train": 8, "val": 2}, splits=("train", "val"))
    before = listing_with_times(tmp_path / "user")
    monkeypatch.chdir(tmp_path)
    summary = tu.models.repair(res.model, info, str(data), [FORGET], original=model, epochs=1, lr=1e-3,
                               plan=res.plan, progress=False)
    assert summary["steps"] >= 1 and summary["images"] == 8
    assert listing_with_times(tmp_path / "user") == before


def test_forget_boxes_never_reach_the_loss():
    batch = {"cls": torch.tensor([[3.0], [1.0], [3.0]]), "bboxes": torch.rand(3, 4),
             "batch_idx": torch.tensor([0.0, 0.0, 1.0]), "img": torch.zeros(2, 3, 8, 8)}
    kept = ur._without(batch, torch.tensor([3]))
    assert kept["cls"].view(-1).tolist() == [1.0] and kept["batch_idx"].tolist() == [0.0]
    assert torch.equal(kept["bboxes"], batch["bboxes"][1:2])
    assert ur._without(batch, torch.tensor([7])) is batch


def test_a_changed_parameter_count_is_an_error(built):
    """What ultralytics' YOLO.train() does (a model rebuilt from its YAML) is refused, never loaded back."""
    _, model, _ = built
    pruned = request(built, "physical").model
    rebuilt = tu.models.load_model("yolov5n.yaml", nc=10)[1]
    with pytest.raises(PlanError, match="changed the pruned model"):
        ur._load_back(pruned, rebuilt, {})


def test_repair_needs_labelled_data(built, tmp_path):
    adapter, model, info = built
    with pytest.raises(UsageError, match="labelled data"):
        adapter.repair(model, info, str(tmp_path), [FORGET])
    with pytest.raises(UsageError, match="unknown repair objective"):
        ur.train_pruned(model, "x.yaml", 64, [FORGET], objective="everything")
    with pytest.raises(UsageError, match="pass original="):
        ur.train_pruned(model, "x.yaml", 64, [FORGET], objective="masked+distil")


@pytest.mark.slow
def test_cli_repair_then_ultralytics_reads_validates_and_exports(tmp_path, capsys, monkeypatch):
    """prune --repair-epochs 1 --eval on DigitScenes and on a user's dataset YAML (GlyphScenes written as
    ultralytics writes datasets, for the glyphs zoo detector); the model.pt loads in ultralytics, keeps the
    pruned parameter count, predicts, validates and exports to ONNX; nothing is left in the cwd."""
    from ultralytics import YOLO

    from tpunlearn.data import yolo as yolo_data

    from test_own_yolov5 import SIZE, generated

    user_data = generated(tmp_path / "ds", {"train": 24, "val": 16})
    monkeypatch.chdir(tmp_path / "ds")
    runs = [(["--arch", NAME, "--forget", "3", "--data", "digits:64"], yolo_data.digits_yaml(64, n_test=64)),
            (["--arch", "glyphscenes-yolov5", "--forget", "circle", "--data", user_data], user_data)]
    for i, (argv, data) in enumerate(runs):
        out = tmp_path / f"out{i}"
        code, _, err = run(capsys, "prune", *argv, "--repair-epochs", "1", "--repair-lr", "1e-3", "--eval",
                           "--out", out)
        assert code == 0, err
        assert "Ultralytics" not in err
        report = json.loads((out / "report.json").read_text())
        rep = report["repair"]
        assert rep["params_before"] == rep["params_after"] == report["params"]["after"] < report["params"]["before"]
        assert rep["epochs"] == 1 and rep["steps"] >= 1 and rep["silenced"]
        yolo = YOLO(str(out / "model.pt"))
        assert n_params(yolo.model) == rep["params_after"]
        yolo.predict(torch.rand(1, 3, SIZE, SIZE), imgsz=SIZE, device="cpu", verbose=False)
        metrics = yolo.val(data=str(data), imgsz=SIZE, device="cpu", workers=0, plots=False, verbose=False,
                           project=str(tmp_path / "val"))
        assert 0.0 <= float(metrics.box.map50) <= 1.0
        assert Path(yolo.export(format="onnx", imgsz=SIZE, device="cpu")).is_file()
        capsys.readouterr()
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == sorted(["data.yaml", "images", "labels"])
