"""tpunlearn.evaluate's Evaluation and its makers (classification, segmentation, detection), the
retained summary that leaves the forgotten targets out, and pixels_to, on hand-made tensors."""
from __future__ import annotations

import json

import pytest
import torch

from tpunlearn.evaluate import (
    Evaluation,
    classification_evaluation,
    compare,
    detection_evaluation,
    pixels_to,
    retained_summary,
    segmentation_evaluation,
)


def test_multilabel_recall_precision_and_ap_at_logit_zero():
    # 4 samples, 3 classes; class 2 is never labelled (left out), class 1 is predicted once wrongly
    logits = torch.tensor([[2.0, -1.0, 0.5], [1.0, 3.0, -1.0], [-2.0, 0.5, -1.0], [0.1, -3.0, -1.0]])
    labels = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 0, 0], [0, 0, 0]])
    ev = classification_evaluation(logits, labels, ["a", "b", "c"], "multilabel")
    assert ev.task == "multilabel" and ev.primary == "recall" and ev.operating_point == {"rule": "logit > 0"}
    assert set(ev.per_target) == {"a", "b"}
    a, b = ev.per_target["a"], ev.per_target["b"]
    assert a["recall"] == pytest.approx(2 / 3) and a["precision"] == pytest.approx(2 / 3) and a["instances"] == 3
    assert b["recall"] == 1.0 and b["precision"] == 0.5 and b["instances"] == 1
    # AP ranks scores: "a"'s positives rank 1st, 2nd and 4th -> (1 + 1 + 3/4) / 3
    assert a["ap"] == pytest.approx((1 + 1 + 0.75) / 3)
    assert ev.primary_values() == {"a": pytest.approx(2 / 3), "b": 1.0}
    assert ev.metric_keys() == ["recall", "precision", "ap"]
    assert json.loads(json.dumps(ev.to_dict()))["per_target"]["b"]["precision"] == 0.5


def test_multiclass_uses_the_argmax_and_a_class_never_predicted_has_precision_zero():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [2.0, 1.0, 0.0], [1.0, 0.0, 5.0]])
    labels = torch.tensor([0, 1, 1, 0])
    ev = classification_evaluation(logits, labels, ["x", "y", "z"], "multiclass")
    assert ev.operating_point == {"rule": "argmax"}
    assert ev.per_target["x"]["recall"] == 0.5 and ev.per_target["x"]["precision"] == 0.5
    assert ev.per_target["y"]["recall"] == 0.5 and ev.per_target["y"]["precision"] == 1.0
    assert "z" not in ev.per_target and ev.summary["accuracy"] == 0.5
    wrong = classification_evaluation(torch.tensor([[0.0, 1.0]]), torch.tensor([0]), ["p", "q"], "multiclass")
    assert wrong.per_target["p"] == {"recall": 0.0, "precision": 0.0, "instances": 1}


def test_segmentation_evaluation_and_where_the_pixels_go():
    # rows truth, cols prediction: background, "3", "8"
    cm = torch.tensor([[50, 0, 0], [30, 10, 10], [0, 0, 20]])
    ev = segmentation_evaluation(cm, ["background", "3", "8"])
    assert ev.primary == "iou" and ev.extra["confusion"] == cm.tolist()
    assert ev.per_target["3"]["iou"] == pytest.approx(10 / 50) and ev.per_target["3"]["instances"] == 50
    assert ev.per_target["8"]["iou"] == pytest.approx(20 / 30)
    assert ev.summary["pixel_accuracy"] == pytest.approx(80 / 120)
    assert ev.summary["mIoU"] == pytest.approx((50 / 80 + 10 / 50 + 20 / 30) / 3)
    assert pixels_to(cm, ["background", "3", "8"], ["3"]) == {"3": {"background": 0.6, "3": 0.2, "8": 0.2}}
    assert pixels_to(cm, ["background", "3", "8"], ["3"], top=1) == {"3": {"background": 0.6}}
    assert pixels_to(cm, ["background", "3", "8"], ["nope"]) == {}


def test_detection_counts_matches_at_the_operating_point():
    # class 0: 3 labelled boxes, 2 predictions, 1 matched; class 1: 2 boxes, no prediction; class 2: unlabelled
    matched = {"tp50": [True, False, False], "pred_cls": [0, 0, 2], "target_cls": [0, 0, 0, 1, 1]}
    ev = detection_evaluation(["0", "1", "2"], matched, {0: (0.9, 0.6)}, {"mAP50": 0.5}, conf=0.25)
    assert ev.operating_point == {"conf": 0.25, "iou": 0.5} and ev.primary == "recall"
    assert ev.per_target["0"] == {"recall": pytest.approx(1 / 3), "precision": 0.5, "ap50": 0.9, "ap50_95": 0.6,
                                  "instances": 3}
    assert ev.per_target["1"] == {"recall": 0.0, "precision": 0.0, "ap50": 0.0, "ap50_95": 0.0, "instances": 2}
    assert "2" not in ev.per_target  # no labelled box: nothing to recall


def _ev(values: dict[str, float], primary: str = "recall", **more: dict[str, float]) -> Evaluation:
    rows = {n: {primary: v, **{k: m[n] for k, m in more.items()}} for n, v in values.items()}
    return Evaluation(task="multilabel", primary=primary, per_target=rows)


def test_retained_summary_leaves_the_forgotten_out_and_names_the_worst():
    before = {"3": 0.98, "1": 0.9, "7": 0.95, "9": 0.8}
    after = {"3": 0.0, "1": 0.9, "7": 0.85, "9": 0.82}
    got = retained_summary(before, after, ["3"])
    assert got["worst"] == {"target": "7", "before": 0.95, "after": 0.85, "drop": pytest.approx(0.1)}
    assert got["mean_before"] == pytest.approx((0.9 + 0.95 + 0.8) / 3)
    assert got["mean_after"] == pytest.approx((0.9 + 0.85 + 0.82) / 3)
    assert retained_summary({"3": 1.0}, {"3": 0.0}, ["3"])["worst"] is None
    assert retained_summary({0: 1.0, 1: float("nan")}, {0: 0.5, 1: 0.0}, [])["worst"]["target"] == 0


def test_compare_means_of_every_metric_without_the_forgotten():
    before = _ev({"3": 1.0, "1": 0.8, "2": 0.6}, ap50={"3": 1.0, "1": 0.9, "2": 0.7})
    after = _ev({"3": 0.0, "1": 0.8, "2": 0.5}, ap50={"3": 0.0, "1": 0.9, "2": 0.5})
    got = compare(before, after, ["3"])
    assert got["worst"]["target"] == "2" and got["worst"]["drop"] == pytest.approx(0.1)
    assert got["means"]["ap50"] == {"before": pytest.approx(0.8), "after": pytest.approx(0.7)}
    assert got["means"]["recall"] == {"before": pytest.approx(0.7), "after": pytest.approx(0.65)}
