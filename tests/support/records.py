"""Stage records with made-up figures, for tests of the code that reads them (export, registry). The model card, the
run and the promotion are shared with the benchmarks (benchmarks/made_up_runs.py)."""

from pathlib import Path

import torch

from benchmarks.made_up_runs import SHA, make_card, make_exported, record_run  # noqa: F401 - re-exported
from mnist_core.layout import REGISTRY_FILE, champion_file
from mnist_core.records import EpochStats, Evaluation
from mnist_core.registry.rows import CSV_COLUMNS
from mnist_core.registry.store import RegistryStore, read_registry


def make_history(epochs: int, val_accuracy: float = 0.5) -> list[EpochStats]:
    return [
        EpochStats(
            epoch=epoch,
            train_loss=1.0,
            train_accuracy=0.5,
            val_loss=0.3,
            val_accuracy=val_accuracy,
            lr=0.1,
            seconds=1.0,
            samples_per_s=1000.0,
        )  # fmt: skip
        for epoch in range(1, epochs + 1)
    ]


def make_evaluation(accuracy: float = 0.5) -> Evaluation:
    names = [str(digit) for digit in range(10)]
    return Evaluation(
        accuracy=accuracy,
        loss=1.0,
        size=10,
        per_class=[{"class": name, "precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 1} for name in names],
        confusion=[[int(true == predicted) for predicted in range(10)] for true in range(10)],
        class_names=names,
    )


def make_test_split(size: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Blank test images with labels 0 (the plots drawn at export need some)."""
    return torch.zeros(size, 28, 28, dtype=torch.uint8), torch.zeros(size, dtype=torch.uint8)


def legacy_files(source: Path, target: Path, runs: list[tuple[str, float]], columns: list[str] = CSV_COLUMNS) -> None:
    """`registry.csv` and `champion-<dataset>.json` in `target` as the registry wrote them before it moved into a
    database: `runs` (run id, test accuracy) recorded in a scratch registry at `source`, then written out."""
    for run_id, accuracy in runs:
        record_run(source, make_exported(target, run_id, accuracy), 0.0, False, lambda champion: champion.test_accuracy)
    target.mkdir(parents=True, exist_ok=True)
    read_registry(source)[columns].to_csv(target / REGISTRY_FILE, index=False, lineterminator="\n")
    for pointer in RegistryStore(source).read().champions():
        (target / champion_file(pointer.dataset)).write_text(pointer.model_dump_json(indent=2) + "\n")
