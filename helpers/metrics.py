"""Segmentation metrics on integer masks: confusion matrix, per-class IoU and Dice (06_gpu_training).

Everything starts from one confusion matrix, summed over a whole split: IoU and Dice computed per image
and then averaged would over-weight small, empty or easy images.
"""

import torch

from helpers.masks import IGNORE_INDEX


def confusion_matrix(predicted: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int | None = IGNORE_INDEX) -> torch.Tensor:
    """``[num_classes, num_classes]`` int64 counts: row = true class, column = predicted class.

    ``predicted`` and ``target`` are integer masks of the same shape (any device); pixels whose target
    is ``ignore_index`` are left out.
    """
    if predicted.shape != target.shape:
        raise ValueError(f"Predicted mask {tuple(predicted.shape)} and target {tuple(target.shape)} "
                         "differ in shape.")
    if predicted.is_floating_point() or target.is_floating_point():
        raise ValueError(f"Masks of class indices are integers, not {predicted.dtype} and {target.dtype}: "
                         "predicted = logits.argmax(dim=1), and a target read as a mask.")
    keep = target != ignore_index if ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
    target, predicted = target[keep].long(), predicted[keep].long()
    for name, mask in (("Target", target), ("Prediction", predicted)):  # else counted in another cell
        if mask.numel() and (mask.max() >= num_classes or mask.min() < 0):
            value = int(mask.max()) if mask.max() >= num_classes else int(mask.min())
            hint = f": does the model output {num_classes} channels?" if name == "Prediction" else "."
            raise ValueError(f"{name} has class {value}, outside 0..{num_classes - 1}{hint}")
    counts = torch.bincount(target * num_classes + predicted, minlength=num_classes**2)
    return counts.reshape(num_classes, num_classes).cpu()


def iou_per_class(confusion: torch.Tensor) -> torch.Tensor:
    """Intersection over union of each class: TP / (TP + FP + FN); NaN for a class never seen
    nor predicted."""
    true_positive = confusion.diagonal().double()
    union = confusion.sum(0).double() + confusion.sum(1).double() - true_positive
    return true_positive / union  # 0 / 0 = NaN: "no evidence", which nanmean then skips


def dice_per_class(confusion: torch.Tensor) -> torch.Tensor:
    """Dice (F1) of each class: 2 TP / (2 TP + FP + FN); NaN for a class never seen nor predicted."""
    true_positive = confusion.diagonal().double()
    return 2 * true_positive / (confusion.sum(0).double() + confusion.sum(1).double())


def mean_iou(confusion: torch.Tensor, classes: slice = slice(1, None)) -> float:
    """Mean IoU over ``classes`` (default: every class but 0, the background), skipping NaN: NaN itself
    when none of them has a pixel, true or predicted (an image of background alone, predicted so)."""
    return iou_per_class(confusion)[classes].nanmean().item()
