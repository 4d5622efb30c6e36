import math

import pytest
import torch

from helpers.metrics import confusion_matrix, dice_per_class, iou_per_class, mean_iou

# A 2x4 mask with three classes, and a prediction that gets some pixels wrong.
TARGET = torch.tensor([[0, 0, 1, 1],
                       [0, 2, 2, 255]])
PREDICTED = torch.tensor([[0, 1, 1, 1],
                          [0, 2, 0, 2]])


def test_confusion_counts_true_rows_predicted_columns_and_skips_ignored_pixels():
    confusion = confusion_matrix(PREDICTED, TARGET, num_classes=3)
    assert confusion.tolist() == [[2, 1, 0],   # true 0: two right, one called 1
                                  [0, 2, 0],   # true 1: both right
                                  [1, 0, 1]]  # true 2: one called 0, one right
    assert confusion.sum() == 7  # the ignored pixel is not counted


def test_iou_and_dice_match_hand_computed_values():
    confusion = confusion_matrix(PREDICTED, TARGET, num_classes=3)
    # class 0: TP 2, FP 1 (a 2 called 0), FN 1 -> IoU 2/4, Dice 4/6
    # class 1: TP 2, FP 1, FN 0                -> IoU 2/3, Dice 4/5
    # class 2: TP 1, FP 0, FN 1                -> IoU 1/2, Dice 2/3
    assert iou_per_class(confusion).tolist() == pytest.approx([2 / 4, 2 / 3, 1 / 2])
    assert dice_per_class(confusion).tolist() == pytest.approx([4 / 6, 4 / 5, 2 / 3])
    assert mean_iou(confusion) == pytest.approx((2 / 3 + 1 / 2) / 2)  # background left out
    assert mean_iou(confusion, classes=slice(None)) == pytest.approx((2 / 4 + 2 / 3 + 1 / 2) / 3)


def test_perfect_prediction_scores_one_and_absent_classes_are_skipped():
    target = torch.tensor([[0, 1], [1, 0]])
    confusion = confusion_matrix(target.clone(), target, num_classes=4)
    iou = iou_per_class(confusion)
    assert iou[:2].tolist() == [1.0, 1.0]
    assert math.isnan(iou[2]) and math.isnan(iou[3])  # never present, never predicted: no evidence
    assert mean_iou(confusion) == 1.0


def test_a_class_predicted_but_absent_scores_zero():
    target = torch.zeros(2, 2, dtype=torch.long)
    predicted = torch.tensor([[0, 3], [0, 0]])
    assert iou_per_class(confusion_matrix(predicted, target, num_classes=4))[3] == 0.0


def test_metrics_work_on_batches_and_refuse_bad_input():
    batch = torch.randint(0, 4, (3, 5, 5))
    assert confusion_matrix(batch, batch, num_classes=4).trace() == 75
    with pytest.raises(ValueError, match=r"^Predicted mask \(3, 4, 5\) and target \(3, 5, 5\) differ in "
                                         r"shape\.$"):
        confusion_matrix(batch[:, :4], batch, num_classes=4)
    with pytest.raises(ValueError, match=r"^Target has class 4, outside 0..3\.$"):
        confusion_matrix(batch, torch.full_like(batch, 4), num_classes=4)


def test_without_an_ignore_index_every_pixel_counts():
    confusion = confusion_matrix(PREDICTED, TARGET.clamp(max=2), num_classes=3, ignore_index=None)
    assert confusion.sum() == 8 and confusion[2, 2] == 2  # the last pixel, 2 now, counts
    with pytest.raises(ValueError, match="class 255"):
        confusion_matrix(PREDICTED, TARGET, num_classes=3, ignore_index=None)


def test_predictions_outside_the_classes_float_masks_and_nothing_to_score_are_refused():
    """A prediction of class 3 with 3 classes was counted in another cell (true 1, predicted 0)."""
    target = torch.tensor([[0, 0], [1, 2]])
    with pytest.raises(ValueError, match=r"^Prediction has class 3, outside 0\.\.2: does the model output 3"):
        confusion_matrix(torch.tensor([[3, 0], [1, 2]]), target, 3)
    with pytest.raises(ValueError, match=r"^Prediction has class -1, outside 0\.\.2"):
        confusion_matrix(torch.tensor([[-1, 0], [1, 2]]), target, 3)
    with pytest.raises(ValueError, match=r"^Masks of class indices are integers, not torch\.int64 and "
                                         r"torch\.float32"):
        confusion_matrix(target, target.float() + 0.6, 3)  # 0.6 would count as class 0
