"""Helpers of the training tests (tests/training/)."""

import torch


def small_split(tensors: dict[str, torch.Tensor], train: int, val: int = 500) -> dict[str, torch.Tensor]:
    return {
        "train_images": tensors["train_images"][:train],
        "train_labels": tensors["train_labels"][:train],
        "val_images": tensors["val_images"][:val],
        "val_labels": tensors["val_labels"][:val],
    }
