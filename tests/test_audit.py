"""The audit (tpunlearn.audit, ``prune --audit --reference``), ``eval --mia`` for every family, and the
region probes through the yolov5 adapter.

The fast tests use tiny seeded models and generated data; the runs on the zoo models are slow-marked
(each reads about a thousand scenes per model and group for the attacks).
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import assert_error, build_tiny_cnn, listing, run

from tpunlearn.audit import CHECKS, audit, compare, privacy_checks, summary_line, verdict
from tpunlearn.errors import DataError
from tpunlearn.privacy import PrivacyResult

ZOO = "digitscenes-resnet"


class _ClassifierFamily:
    """A stand-in adapter: ``mia_data`` of generated 16x16 images, target 0 held by the first half."""

    name = "tiny"

    def mia_data(self, model, info, spec, forget):
        gen = torch.Generator().manual_seed(1)

        def batches(n, holds):
            x = torch.rand(n, 3, 16, 16, generator=gen)
            y = torch.zeros(n, 10)
            y[:, 0] = float(holds)
            y[torch.arange(n), 1 + torch.arange(n) % 9] = 1.0
            return [(x[i:i + 20], y[i:i + 20]) for i in range(0, n, 20)]

        test = batches(40, False) + batches(40, True)
        return batches(60, False), test, batches(40, True)

    def probe_layer(self, model, info):
        return None


def _info(task="multilabel"):
    return SimpleNamespace(task=task, class_names=[str(i) for i in range(10)])


def test_audit_compares_each_check_with_the_reference_and_says_which_are_within():
    family, info = _ClassifierFamily(), _info()
    models = {"original": build_tiny_cnn(0), "unlearned": build_tiny_cnn(1), "reference": build_tiny_cnn(0)}
    entry = audit(family, models, info, None, [0])
    assert entry["models"] == ["original", "unlearned", "reference"] and entry["forget"] == ["0"]
    assert set(entry["checks"]) == set(CHECKS) and entry["not_run"] == {}
    for c in entry["checks"].values():
        assert {"label", "kind", "original", "unlearned", "reference", "gap_to_reference", "tolerance",
                "within", "detail"} <= set(c)
        assert c["original"] == c["reference"]  # the same weights, the same seed: the same numbers
        assert c["gap_to_reference"] == pytest.approx(c["unlearned"] - c["reference"])
        gap = c["gap_to_reference"] if c["kind"] == "probe" else abs(c["gap_to_reference"])
        assert c["within"] == (gap <= c["tolerance"] + 1e-12) and c["bound"] == ("upper" if c["kind"] == "probe" else "both")
        assert c["tolerance"] == (0.05 if c["kind"] == "mia" else 0.03)
    assert sorted(entry["within"] + entry["outside"]) == sorted(CHECKS)
    assert entry["line"].startswith("audit: within the reference's tolerance: ")
    json.dumps(entry)  # report.json takes it as is
    alone = audit(family, {"original": models["original"], "unlearned": models["unlearned"]}, info, None, [0])
    assert all(c["reference"] is None and c["within"] is None for c in alone["checks"].values())
    assert "no --reference" in alone["line"]


def test_compare_counts_an_attacks_gap_both_ways_and_a_probes_as_an_upper_bound():
    def result(v):
        return PrivacyResult("entropy_mia", v, "mia", {}, {})

    assert compare("entropy_mia", {"unlearned": result(0.40), "reference": result(0.44)})["within"] is True
    assert compare("entropy_mia", {"unlearned": result(0.30), "reference": result(0.40)})["within"] is False
    assert compare("entropy_mia", {"unlearned": result(0.50), "reference": result(0.40)})["within"] is False
    probe = compare("knn_probe_auc", {"unlearned": PrivacyResult("knn_probe_auc", 0.9, "probe", {}, {}),
                                      "reference": PrivacyResult("knn_probe_auc", 0.8, "probe", {}, {})})
    assert probe["within"] is False and "knn_probe_auc (gap +0.100, tolerance 0.030)" in summary_line(
        {"knn_probe_auc": probe}, True)
    deeper = compare("knn_probe_auc", {"unlearned": PrivacyResult("knn_probe_auc", 0.66, "probe", {}, {}),
                                       "reference": PrivacyResult("knn_probe_auc", 0.81, "probe", {}, {})})
    assert deeper["within"] is True and deeper["below_reference"] is True
    assert verdict(deeper) == "within (below the reference by 0.150: less readable than after retraining)"
    near = compare("knn_probe_auc", {"unlearned": PrivacyResult("knn_probe_auc", 0.79, "probe", {}, {}),
                                     "reference": PrivacyResult("knn_probe_auc", 0.81, "probe", {}, {})})
    assert verdict(near) == "within" and near["below_reference"] is False


def test_segmenters_and_detectors_say_the_attacks_do_not_apply():
    family = SimpleNamespace(name="nolayer", probe_layer=lambda model, info: None)
    results, not_run = privacy_checks(family, build_tiny_cnn(), _info("segmentation"), None, [0])
    assert results == {} and set(not_run) == set(CHECKS)
    assert "classifier" in not_run["entropy_mia"] and "names no feature layer" in not_run["knn_probe_auc"]


def test_report_html_shows_the_audit_table_and_the_inversion(tmp_path):
    from tpunlearn.report import draw_inversion, write_html

    pictures = {w: torch.rand(3, 16, 16) for w in ("original", "unlearned", "reference")}
    drawn = draw_inversion(pictures, tmp_path / "inversion.png", "3", (0.0, 1.0))
    assert (tmp_path / "inversion.png").read_bytes()[:4] == b"\x89PNG" and drawn["models"] == list(pictures)
    check = {"label": "SVM MIA-efficacy", "kind": "mia", "original": 0.1, "unlearned": 0.9, "reference": 0.5,
             "gap_to_reference": 0.4, "tolerance": 0.05, "within": False}
    report = {"arch": "m", "forget": ["3"], "audit": {"checks": {"svm_mia_efficacy": check}, "line": "audit: X",
                                                      "not_run": {"knn_probe_auc": "why"},
                                                      "inversion": {"caption": drawn["caption"]}}}
    page = write_html(report, tmp_path).read_text()
    assert "Audit: attacks and probes" in page and "+40.0 pts" in page and "NOT within" in page
    assert "knn_probe_auc: not run (why)" in page and page.count("data:image/png;base64,") == 1


def test_the_inversion_names_a_panel_whose_target_logit_no_input_moves(tmp_path):
    from tpunlearn.audit import constant_logits, inversions
    from tpunlearn.report import draw_inversion

    model = build_tiny_cnn()
    blank = build_tiny_cnn()
    with torch.no_grad():
        blank.head.weight[0] = 0.0  # what erase(features) leaves of a multi-label forget row
    models = {"original": model, "unlearned": blank}
    pictures = inversions(models, 0, (3, 16, 16), (0.0, 1.0), seed=0)
    assert constant_logits(models, 0, pictures) == ["unlearned"]
    assert constant_logits(models, 1, pictures) == []
    drawn = draw_inversion(pictures, tmp_path / "inversion.png", "3", (0.0, 1.0), constant=["unlearned"])
    assert drawn["constant"] == ["unlearned"] and "unlearned: the prior alone" in drawn["caption"]


def _colour_yolo(root: Path, n: int = 48) -> Path:
    """A YOLO dataset of 64x64 images with two squares each, class c drawn in colour channel c."""
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    for i in range(n):
        image, lines = torch.zeros(64, 64, 3), []
        for k, cls in enumerate(torch.randint(0, 3, (2,), generator=gen).tolist()):
            y = int(torch.randint(0, 40, (1,), generator=gen))
            x = 32 * k + int(torch.randint(0, 8, (1,), generator=gen))
            image[y:y + 20, x:x + 20, cls] = 0.9
            lines.append(f"{cls} {(x + 10) / 64:.6f} {(y + 10) / 64:.6f} {20 / 64:.6f} {20 / 64:.6f}")
        Image.fromarray((image * 255).byte().numpy()).save(root / "images" / "train" / f"{i:03d}.png")
        (root / "labels" / "train" / f"{i:03d}.txt").write_text("\n".join(lines) + "\n")
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/train\nnames: [a, b, c]\n")
    return root / "data.yaml"


def test_region_probes_on_a_tiny_yolov5_read_boxes_of_a_colour_coded_target(tmp_path):
    from tpunlearn import adapters
    from tpunlearn.privacy import region_checks

    adapter = adapters.get("yolov5")
    torch.manual_seed(0)
    model, info = adapter.build("yolov5n.yaml", nc=3, imgsz=64, names=["a", "b", "c"])
    layer = adapter.probe_layer(model, info)
    batches = adapter.region_batches(model, info, str(_colour_yolo(tmp_path)))
    images, regions = next(iter(batches))
    assert layer == "model.17" and images.shape[1:] == (3, 64, 64) and len(regions) == len(images)
    assert all(len(r) == 2 and r[0][1].shape == (4,) for r in regions)
    checks = region_checks(model, layer, batches, [0])
    assert checks["linear_probe_auc"].value > 0.9 and checks["knn_probe_auc"].value > 0.9
    assert checks["linear_probe_auc"].n["train"] + checks["linear_probe_auc"].n["test"] == 96
    with pytest.raises(DataError, match="labelled boxes"):
        adapter.region_batches(model, info, str(tmp_path / "images" / "train"))


def test_reference_that_is_missing_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "o"
    before = listing(tmp_path)
    assert_error(run(capsys, "prune", "--arch", ZOO, "--forget", "3", "--reference", tmp_path / "none.pt",
                     "--out", out), 1, "--reference", "no such checkpoint")
    assert not out.exists() and listing(tmp_path) == before


@pytest.mark.slow
def test_prune_audit_writes_the_audit_and_the_inversion_picture(tmp_path, capsys):
    from tpunlearn import zoo

    out = tmp_path / "o"
    code, text, err = run(capsys, "prune", "--arch", ZOO, "--forget", "3", "--samples", "8", "--data", "digits:300",
                          "--audit", "--reference", zoo.weights_path(ZOO), "--out", out)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    entry = report["audit"]
    assert set(entry["checks"]) == set(CHECKS) and entry["models"] == ["original", "unlearned", "reference"]
    assert entry["reference"]["sha256"] and entry["inversion"]["file"] == "inversion.png"
    for c in entry["checks"].values():
        assert c["original"] == pytest.approx(c["reference"])  # the reference here is the original's file
    assert entry["checks"]["svm_mia_efficacy"]["unlearned"] > entry["checks"]["svm_mia_efficacy"]["original"]
    assert (out / "inversion.png").read_bytes()[:4] == b"\x89PNG"
    page = (out / "report.html").read_text()
    assert "Audit: attacks and probes" in page and entry["line"] in text


@pytest.mark.slow
def test_eval_mia_runs_the_region_probes_for_a_segmenter(tmp_path, capsys):
    out = tmp_path / "m.json"
    code, text, err = run(capsys, "eval", "--arch", "digitscenes-deeplabv3", "--data", "digits:120", "--mia",
                          "--forget", "3", "--json", out)
    assert code == 0, err
    privacy = json.loads(out.read_text())["privacy"]
    assert set(privacy["checks"]) == {"linear_probe_auc", "knn_probe_auc"}
    assert privacy["checks"]["knn_probe_auc"]["detail"]["layer"] == "classifier.0"
    assert set(privacy["not_run"]) == {"entropy_mia", "svm_mia_efficacy"} and "not run:" in text


def test_an_out_folder_holding_the_reference_is_refused(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "ref.pt").write_bytes(b"not read")
    before = listing(out)
    assert_error(run(capsys, "prune", "--arch", ZOO, "--forget", "3", "--reference", out / "ref.pt", "--out", out,
                     "--force"), 2, "holds the reference checkpoint")
    assert listing(out) == before
