"""tpunlearn.evaluate's segmentation metrics, against confusion matrices computed by hand."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tpunlearn.errors import DataError
from tpunlearn.evaluate import confusion_matrix, iou_from_confusion, segmentation_metrics


class LeftHalf(nn.Module):
    """Two classes: predicts 1 on the left half of the image, 0 elsewhere (as a dict, like DeepLab)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.bn = nn.BatchNorm2d(3)
        self.seen_training: list[bool] = []

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.seen_training.append(self.training or self.bn.training)
        self.bn(x)
        out = torch.zeros(x.shape[0], 2, *x.shape[-2:])
        out[:, 1, :, : x.shape[-1] // 2] = 1.0
        return {"out": out + self.w}


class Constant(nn.Module):
    """Predicts ``label`` at every pixel, as a plain tensor at half the input resolution."""

    def __init__(self, num_classes: int, label: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.nn.functional.one_hot(torch.tensor(label), num_classes).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2] // 2, x.shape[-1] // 2
        return self.logits.view(1, -1, 1, 1).expand(x.shape[0], -1, h, w)


def _left_column_mask() -> torch.Tensor:
    """4x4: class 1 in the first column, 0 elsewhere; row 0 is ignored (255)."""
    mask = torch.zeros(4, 4, dtype=torch.uint8)
    mask[:, :1] = 1
    mask[0, :] = 255
    return mask


def test_iou_from_confusion_by_hand():
    cm = torch.tensor([[3, 1, 0], [1, 2, 0], [0, 0, 0]])
    iou = iou_from_confusion(cm)
    assert iou.dtype == torch.float64
    assert iou[0] == pytest.approx(3 / 5) and iou[1] == pytest.approx(2 / 4)
    assert torch.isnan(iou[2])  # neither in the ground truth nor predicted
    # a class only predicted (never in the ground truth) has IoU 0, not NaN
    assert iou_from_confusion(torch.tensor([[2, 1], [0, 0]])).tolist() == [pytest.approx(2 / 3), 0.0]


def test_confusion_matrix_rows_are_truth_and_255_is_ignored():
    cm = confusion_matrix(LeftHalf(), [(torch.zeros(1, 3, 4, 4), [_left_column_mask()])], 2)
    # 12 pixels counted (row 0 ignored): truth 0 at 9 pixels, predicted 1 at 3 of them (column 1);
    # truth 1 at 3 pixels (column 0), all predicted 1
    assert cm.dtype == torch.int64 and cm.tolist() == [[6, 3], [0, 3]]


def test_confusion_matrix_resizes_logits_to_each_mask():
    masks = [torch.full((8, 6), 2, dtype=torch.uint8), torch.zeros(4, 4, dtype=torch.uint8)]
    masks[1][0, 0] = 255
    batches = [(torch.zeros(2, 3, 8, 8), masks)]
    cm = confusion_matrix(Constant(3, 2), batches, 3)  # logits 4x4, masks 8x6 and 4x4
    assert cm.tolist() == [[0, 0, 15], [0, 0, 0], [0, 0, 48]]


def test_confusion_matrix_runs_in_eval_mode_and_restores_every_flag():
    model = LeftHalf().train()
    model.bn.eval()  # a submodule set apart: it must come back as it was
    confusion_matrix(model, [(torch.zeros(1, 3, 4, 4), [_left_column_mask()])], 2)
    assert model.seen_training == [False]
    assert model.training and not model.bn.training


def test_a_mask_class_beyond_the_model_is_a_data_error():
    mask = torch.zeros(4, 4, dtype=torch.uint8)
    mask[1, 1] = 2
    with pytest.raises(DataError, match="class 2, but the model has 2 classes"):
        confusion_matrix(LeftHalf(), [(torch.zeros(1, 3, 4, 4), [mask])], 2)


def test_segmentation_metrics_by_hand():
    metrics = segmentation_metrics(LeftHalf(), [(torch.zeros(1, 3, 4, 4), [_left_column_mask()])], ["bg", "fg"])
    assert metrics["confusion"] == [[6, 3], [0, 3]]
    assert metrics["iou"] == {"bg": pytest.approx(6 / 9), "fg": pytest.approx(3 / 6)}
    assert metrics["mIoU"] == pytest.approx((6 / 9 + 3 / 6) / 2)
    assert metrics["pixel_accuracy"] == pytest.approx(9 / 12)
    # a class that never occurs is NaN and stays out of the mean
    three = segmentation_metrics(LeftHalf(), [(torch.zeros(1, 3, 4, 4), [_left_column_mask()])],
                                 ["bg", "fg", "never"])
    assert math.isnan(three["iou"]["never"]) and three["mIoU"] == pytest.approx(metrics["mIoU"])


def test_segmentation_metrics_of_no_pixels():
    empty = torch.full((4, 4), 255, dtype=torch.uint8)
    metrics = segmentation_metrics(LeftHalf(), [(torch.zeros(1, 3, 4, 4), [empty])], ["bg", "fg"])
    assert math.isnan(metrics["mIoU"]) and metrics["pixel_accuracy"] == 0.0
    assert all(math.isnan(v) for v in metrics["iou"].values())
