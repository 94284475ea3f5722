"""Scoring: loss and accuracy over a split (used by the training loop for validation), the test-set metrics
(per-class precision/recall/F1 and the confusion matrix), and the champion's model re-scored from its file."""

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from mnist_core.evaluation.novelty import answers
from mnist_core.layout import WEIGHTS_FILE
from mnist_core.records import Evaluation, read_card
from mnist_core.training.model import evaluate_split, load_weights


def confusion_matrix(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Rows: true class; columns: predicted class."""
    flat = labels.long() * num_classes + predicted.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def confusion_frame(evaluation: Evaluation) -> pd.DataFrame:
    """The confusion matrix labelled with the class names: rows true, columns predicted."""
    names = evaluation.class_names
    return pd.DataFrame(
        evaluation.confusion, index=pd.Index(names, name="true"), columns=pd.Index(names, name="predicted")
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


def evaluate_model(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    class_names: list[str],
    extra: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Evaluation:
    """Test-set metrics; `extra` (the test part of the user's own images) is scored apart, accuracy only."""
    loss_sum, correct, predicted = evaluate_split(model, images, labels)
    confusion = confusion_matrix(predicted, labels, len(class_names)).cpu()
    extra_size = len(extra[1]) if extra is not None else 0
    return Evaluation(
        extra_accuracy=evaluate_split(model, *extra)[1].item() / extra_size
        if extra is not None and extra_size
        else None,
        extra_size=extra_size,
        accuracy=correct.item() / len(labels),
        loss=loss_sum.item() / len(labels),
        size=len(labels),
        per_class=per_class_table(confusion, class_names).to_dict(orient="records"),
        confusion=confusion.tolist(),
        class_names=class_names,
    )


def decisive_accuracy(test: float, extra: float | None, test_size: int, extra_size: int, metric: str) -> float:
    """The accuracy a promotion compares (`RunParams.promotion_metric`): the dataset's test set, the user's test
    images, or both pooled (each image counts once). Without extra images every metric is the test set's."""
    if extra is None or extra_size == 0 or metric == "test":
        return test
    if metric == "extra":
        return extra
    return (test * test_size + extra * extra_size) / (test_size + extra_size)


def score_model_file(path: Path, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Test accuracy of the model saved at `path` (e.g. the champion's) on these images, on their device, so that
    two models are compared on the same images rather than on a figure stored when one of them was trained."""
    model = load_weights(path, images.device)
    _, correct, _ = evaluate_split(model, images, labels)
    return correct.item() / len(labels)


def score_answers(run_dir: Path, images: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy of a run folder's model on prepared images whose labels may be REFUSED_CLASS ("not a digit"),
    answered as every path answers: with its card's not-a-digit rule (none on an older card: never refused)."""
    if len(labels) == 0:
        return float("nan")
    model = load_weights(Path(run_dir) / WEIGHTS_FILE)
    rule = read_card(run_dir).not_a_digit
    with torch.no_grad():
        logits = model(torch.from_numpy(np.ascontiguousarray(images))).double().numpy()
    return float((answers(logits, rule, images) == labels).mean())
