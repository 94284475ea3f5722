"""Test-set metrics: accuracy, loss, per-class precision/recall/F1 and the confusion matrix."""

from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import nn

from mnist_core.train import evaluate_split

CLASS_NAMES: dict[str, list[str]] = {
    "mnist": [str(digit) for digit in range(10)],
    "fashion-mnist": [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ],
}  # fmt: skip


@dataclass
class Evaluation:
    accuracy: float
    loss: float
    per_class: pd.DataFrame
    confusion: pd.DataFrame


def confusion_matrix(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Rows: true class; columns: predicted class."""
    flat = labels.long() * num_classes + predicted.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def confusion_frame(confusion: Any, class_names: list[str]) -> pd.DataFrame:
    """A confusion matrix (array or nested lists) labelled with the class names: rows true, columns predicted."""
    return pd.DataFrame(
        confusion, index=pd.Index(class_names, name="true"), columns=pd.Index(class_names, name="predicted")
    )


def per_class_table(confusion: torch.Tensor, class_names: list[str]) -> pd.DataFrame:
    counts = confusion.double()
    true_positive = counts.diag()
    predicted_total, actual_total = counts.sum(0), counts.sum(1)
    precision = torch.where(predicted_total > 0, true_positive / predicted_total, torch.zeros_like(true_positive))
    recall = torch.where(actual_total > 0, true_positive / actual_total, torch.zeros_like(true_positive))
    denominator = precision + recall
    f1 = torch.where(denominator > 0, 2 * precision * recall / denominator, torch.zeros_like(denominator))
    return pd.DataFrame(
        {
            "class": class_names,
            "precision": precision.tolist(),
            "recall": recall.tolist(),
            "f1": f1.tolist(),
            "support": actual_total.long().tolist(),
        }
    )


def evaluate_model(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, class_names: list[str]) -> Evaluation:
    loss_sum, correct, predicted = evaluate_split(model, images, labels)
    confusion = confusion_matrix(predicted, labels, len(class_names)).cpu()
    return Evaluation(
        accuracy=correct.item() / len(labels),
        loss=loss_sum.item() / len(labels),
        per_class=per_class_table(confusion, class_names),
        confusion=confusion_frame(confusion.numpy(), class_names),
    )
