import pandas as pd
import pytest
import torch

from mnist_core.evaluate import CLASS_NAMES, confusion_matrix, per_class_table


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
