"""Tests of the confusion matrix and mIoU against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dve_perception.errors import InputError
from dve_perception.evaluation.miou import ConfusionMatrix

# Hand-worked example, K = 3. Valid pairs (target, pred): (1,1) (1,2) (2,2) (2,2) (3,1); the
# last pixel is void and ignored. Rows = target, columns = prediction:
#   [[1, 1, 0],
#    [0, 2, 0],
#    [1, 0, 0]]
# IoU1 = 1 / (1 + 1 + 1) = 1/3, IoU2 = 2 / (2 + 1 + 0) = 2/3, IoU3 = 0 / (0 + 0 + 1) = 0.
TARGET = [1, 1, 2, 2, 3, 0]
PRED = [1, 2, 2, 2, 1, 3]


def test_confusion_matrix_matches_the_hand_computed_one() -> None:
    matrix = ConfusionMatrix(3)
    matrix.update(torch.tensor(PRED), torch.tensor(TARGET))
    assert matrix.counts.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert matrix.valid_pixels == 5


def test_iou_miou_and_accuracy_match_hand_computed_values() -> None:
    matrix = ConfusionMatrix(3)
    matrix.update(np.array(PRED), np.array(TARGET))
    assert torch.allclose(matrix.iou(), torch.tensor([1 / 3, 2 / 3, 0.0], dtype=torch.float64))
    assert matrix.miou() == pytest.approx(1 / 3)
    assert matrix.pixel_accuracy() == pytest.approx(3 / 5)


def test_classes_absent_from_targets_and_predictions_are_excluded_from_the_mean() -> None:
    matrix = ConfusionMatrix(4)
    matrix.update(torch.tensor(PRED), torch.tensor(TARGET))
    iou = matrix.iou()
    assert math.isnan(iou[3]) and matrix.miou() == pytest.approx(1 / 3)


def test_a_class_only_predicted_counts_as_zero() -> None:
    matrix = ConfusionMatrix(2)
    matrix.update(torch.tensor([1, 2]), torch.tensor([1, 1]))
    # Class 2 never occurs in the target but is predicted once: union 1, IoU 0.
    assert matrix.iou().tolist() == [0.5, 0.0] and matrix.miou() == pytest.approx(0.25)


def test_perfect_prediction_gives_one_and_any_shape_is_accepted() -> None:
    target = torch.tensor([[[0, 1], [2, 3]], [[3, 3], [0, 2]]])
    pred = torch.where(target == 0, torch.ones_like(target), target)
    matrix = ConfusionMatrix(3)
    matrix.update(pred, target)
    assert matrix.miou() == 1.0 and matrix.pixel_accuracy() == 1.0


def test_updates_accumulate_and_merge_adds_counts() -> None:
    a, b, both = ConfusionMatrix(3), ConfusionMatrix(3), ConfusionMatrix(3)
    a.update(torch.tensor(PRED[:3]), torch.tensor(TARGET[:3]))
    b.update(torch.tensor(PRED[3:]), torch.tensor(TARGET[3:]))
    both.update(torch.tensor(PRED[:3]), torch.tensor(TARGET[:3]))
    both.update(torch.tensor(PRED[3:]), torch.tensor(TARGET[3:]))
    assert torch.equal((a + b).counts, both.counts)
    assert both.counts.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_empty_matrix_reports_nan() -> None:
    matrix = ConfusionMatrix(2)
    matrix.update(torch.tensor([1, 2]), torch.tensor([0, 0]))
    assert math.isnan(matrix.miou()) and math.isnan(matrix.pixel_accuracy())


def test_bad_inputs_are_rejected_with_clear_messages() -> None:
    matrix = ConfusionMatrix(3)
    with pytest.raises(InputError, match=r"target has label\(s\) 4 outside 0 \(void\)..3"):
        matrix.update(torch.tensor([1]), torch.tensor([4]))
    with pytest.raises(InputError, match=r"pred has class id\(s\) 0 outside 1..3"):
        matrix.update(torch.tensor([0]), torch.tensor([1]))
    with pytest.raises(InputError, match="pred has shape"):
        matrix.update(torch.tensor([1, 1]), torch.tensor([1]))
    with pytest.raises(InputError, match="integer class ids"):
        matrix.update(torch.tensor([1.0]), torch.tensor([1]))
    with pytest.raises(InputError, match="positive integer"):
        ConfusionMatrix(0)
    with pytest.raises(InputError, match="cannot merge"):
        matrix.merge(ConfusionMatrix(2))


def test_predictions_at_void_pixels_are_ignored_even_if_out_of_range() -> None:
    matrix = ConfusionMatrix(2)
    matrix.update(torch.tensor([0, 9, 1]), torch.tensor([0, 0, 1]))
    assert matrix.counts.tolist() == [[1, 0], [0, 0]]
