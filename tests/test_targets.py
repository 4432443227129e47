"""Targets: ClassLogit per-sample values, selection, probabilities and output shapes."""
from __future__ import annotations

import pytest
import torch

from tpunlearn.targets import ClassLogit


@pytest.fixture
def logits() -> torch.Tensor:
    return torch.randn(5, 4, generator=torch.Generator().manual_seed(1)) * 3


@pytest.mark.parametrize("index", [0, 2, 3])
def test_per_sample_is_the_logit_column(logits, index):
    values = ClassLogit(index).per_sample(logits)
    assert values.shape == (5,)
    assert torch.equal(values, logits[:, index])


def test_call_without_select_sums_every_sample(logits):
    assert torch.allclose(ClassLogit(1)(logits), logits[:, 1].sum())


def test_select_mask_sums_only_selected(logits):
    select = torch.tensor([True, False, True, False, False])
    value = ClassLogit(2)(logits, select)
    assert value.ndim == 0
    assert torch.allclose(value, logits[0, 2] + logits[2, 2])
    assert not torch.allclose(value, logits[:, 2].sum())


def test_select_none_selected_is_zero(logits):
    assert float(ClassLogit(0)(logits, torch.zeros(5, dtype=torch.bool))) == 0.0


def test_probability_multilabel_is_sigmoid(logits):
    values = ClassLogit(3, probability=True, multilabel=True).per_sample(logits)
    assert torch.allclose(values, torch.sigmoid(logits[:, 3]))


def test_probability_multiclass_is_softmax(logits):
    values = ClassLogit(3, probability=True, multilabel=False).per_sample(logits)
    assert torch.allclose(values, torch.softmax(logits, dim=1)[:, 3])
    # softmax couples the classes: differs from the per-column sigmoid
    assert not torch.allclose(values, torch.sigmoid(logits[:, 3]))


def test_multilabel_flag_ignored_without_probability(logits):
    assert torch.equal(ClassLogit(1, multilabel=False).per_sample(logits), logits[:, 1])


@pytest.mark.parametrize("shape", [(5,), (5, 4, 2), (5, 4, 8, 8)])
def test_wrong_output_rank_raises_value_error(shape):
    with pytest.raises(ValueError, match="batch, classes"):
        ClassLogit(0).per_sample(torch.zeros(shape))


def test_dict_output_uses_out(logits):
    output = {"aux": torch.zeros(5, 4), "out": logits}
    assert torch.equal(ClassLogit(2).per_sample(output), logits[:, 2])
    assert torch.allclose(ClassLogit(2)(output, torch.tensor([1, 1, 0, 0, 0], dtype=torch.bool)),
                          logits[:2, 2].sum())


def test_tuple_output_uses_first_element(logits):
    assert torch.equal(ClassLogit(1).per_sample((logits, torch.zeros(5, 4))), logits[:, 1])


def test_unreadable_output_raises_type_error():
    with pytest.raises(TypeError):
        ClassLogit(0).per_sample("not a tensor")


def test_target_is_differentiable(logits):
    x = logits.clone().requires_grad_(True)
    select = torch.tensor([True, True, False, False, True])
    (grad,) = torch.autograd.grad(ClassLogit(1)(x, select), x)
    expected = torch.zeros_like(x)
    expected[select, 1] = 1.0
    assert torch.equal(grad, expected)


def test_repr_names_the_index():
    assert repr(ClassLogit(7)) == "ClassLogit(7)"


def test_segmentation_logit_sums_class_logits_over_its_pixels():
    from tpunlearn.targets import SegmentationLogit

    logits = torch.zeros(2, 3, 4, 4)
    logits[0, 2, :2, :2] = 5.0  # sample 0: class 2 wins on 4 pixels
    logits[1, 1] = 1.0  # sample 1: class 1 wins everywhere, class 2 nowhere
    values = SegmentationLogit(2).per_sample({"out": logits})
    assert values.tolist() == [20.0, 0.0]


def test_segmentation_logit_uses_ground_truth_masks_when_given():
    from tpunlearn.targets import SegmentationLogit

    logits = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    masks = torch.tensor([[[2, 0], [0, 2]], [[0, 0], [0, 0]]])
    target = SegmentationLogit(2).with_masks(masks)
    expected = logits[0, 2, 0, 0] + logits[0, 2, 1, 1]
    assert target.per_sample(logits).tolist() == [float(expected), 0.0]
    with pytest.raises(ValueError):
        SegmentationLogit(0).per_sample(torch.zeros(2, 3))


def test_detection_score_sums_confident_anchors_or_top_k():
    from tpunlearn.targets import DetectionScore

    pred = torch.zeros(2, 4 + 3, 6)
    pred[0, 4 + 1, [0, 2]] = torch.tensor([0.9, 0.5])  # two confident anchors for class 1
    pred[0, 4 + 1, 3] = 0.1  # below the floor: ignored
    pred[1, 4 + 1, :] = torch.tensor([0.01, 0.02, 0.03, 0.04, 0.05, 0.06])  # none confident
    values = DetectionScore(1, conf=0.25, top_k=2).per_sample(pred)
    assert values[0] == pytest.approx(1.4)
    assert values[1] == pytest.approx(0.11)  # the two best anchors
    with pytest.raises(ValueError):
        DetectionScore(0).per_sample(torch.zeros(2, 7))
