from pathlib import Path

import pandas as pd
import pytest
import torch

from mnist_core.data.idx import CLASS_NAMES
from mnist_core.errors import DataError
from mnist_core.evaluation.evaluate import (
    confusion_frame,
    confusion_matrix,
    evaluate_model,
    per_class_table,
    score_model_file,
)
from mnist_core.training.model import MLP, save_weights


def test_confusion_rows_are_true_columns_predicted() -> None:
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    predicted = torch.tensor([0, 1, 1, 2, 2, 0])
    matrix = confusion_matrix(predicted, labels, 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_per_class_precision_recall_f1() -> None:
    matrix = torch.tensor([[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    table = per_class_table(matrix, ["a", "b", "c"])
    assert isinstance(table, pd.DataFrame)
    row = table.set_index("class").loc["a"]
    assert row["precision"] == pytest.approx(0.5)  # predicted a: 2, right: 1
    assert row["recall"] == pytest.approx(0.5)  # true a: 2, found: 1
    assert table.set_index("class").loc["c", "f1"] == pytest.approx(2 * 1.0 * (2 / 3) / (1.0 + 2 / 3))
    assert table["support"].tolist() == [2, 1, 3]


def test_class_with_no_predictions_has_zero_precision_not_nan() -> None:
    table = per_class_table(torch.tensor([[2, 0], [1, 0]]), ["x", "y"])
    assert table.loc[1, "precision"] == 0.0 and not table.isna().any().any()


def test_both_datasets_have_ten_names() -> None:
    assert all(len(names) == 10 for names in CLASS_NAMES.values())


def test_model_file_is_rescored_on_the_given_images(tmp_path: Path) -> None:
    """How a challenger is compared with the champion: the champion's saved model re-evaluated on the same images."""
    torch.manual_seed(0)
    model = MLP([16])
    save_weights(model, tmp_path / "model.safetensors")
    images = torch.randint(0, 256, (500, 28, 28), dtype=torch.uint8)
    labels = torch.randint(0, 10, (500,), dtype=torch.uint8)
    expected = evaluate_model(model, images, labels, CLASS_NAMES["mnist"]).accuracy
    assert score_model_file(tmp_path / "model.safetensors", images, labels) == expected
    with pytest.raises(DataError):
        score_model_file(tmp_path / "missing.safetensors", images, labels)


def test_evaluation_record_matches_its_tables() -> None:
    torch.manual_seed(1)
    model = MLP([16])
    images = torch.randint(0, 256, (300, 28, 28), dtype=torch.uint8)
    labels = torch.randint(0, 10, (300,), dtype=torch.uint8)
    evaluation = evaluate_model(model, images, labels, CLASS_NAMES["mnist"])
    confusion = confusion_frame(evaluation)
    assert confusion.shape == (10, 10) and int(confusion.to_numpy().sum()) == evaluation.size == 300
    correct = int(confusion.to_numpy().trace())
    assert evaluation.accuracy == correct / 300
    assert [row["support"] for row in evaluation.per_class] == confusion.sum(axis=1).tolist()
