"""Stage records with made-up figures, for tests of the code that reads them (export, registry)."""

from collections.abc import Callable
from pathlib import Path

import torch

from mnist_core.config import RunParams
from mnist_core.errors import PipelineError
from mnist_core.layout import REGISTRY_FILE, champion_file
from mnist_core.records import (
    DatasetFacts,
    EpochStats,
    Evaluation,
    Exported,
    Metrics,
    ModelCard,
    Promotion,
    Timings,
)
from mnist_core.registry.rows import CSV_COLUMNS
from mnist_core.registry.rule import ChampionScore, judge
from mnist_core.registry.store import ChampionPointer, RegistryStore, entries, read_registry

SHA = {"train_images": "a" * 64, "train_labels": "b" * 64, "test_images": "c" * 64, "test_labels": "d" * 64}


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


def make_card(
    run_id: str,
    test_accuracy: float = 0.5,
    dataset: str = "mnist",
    epochs: int = 1,
    params_digest: str = "f" * 64,
    best_val_accuracy: float | None = None,
) -> ModelCard:
    return ModelCard(
        run_id=run_id,
        created_at="2026-01-01T00:00:00Z",
        params=RunParams(epochs=epochs).public_dump(),
        training_digest=params_digest,
        dataset=DatasetFacts(name=dataset, sha256=SHA, sources={}, sizes={"test": 2}),
        environment={"torch": "test", "device": "cpu"},
        timings=Timings(train_seconds=1.0, resumed_from_epoch=0, warmup_and_capture_seconds=0.0),
        metrics=Metrics(
            test_accuracy=test_accuracy,
            test_loss=0.25,
            best_epoch=epochs,
            best_val_accuracy=test_accuracy if best_val_accuracy is None else best_val_accuracy,
            best_val_loss=0.3,
            epochs_run=epochs,
        ),
        files=[],
    )


def make_exported(root: Path, run_id: str, accuracy: float, dataset: str = "mnist") -> Exported:
    """A run as export hands it to promotion (its folder is not written: the registry only records paths)."""
    run_dir = root / run_id
    return Exported(
        run_id=run_id,
        run_dir=run_dir,
        model=run_dir / "model.safetensors",
        report=run_dir / "report.md",
        model_card=run_dir / "model_card.json",
        card=make_card(run_id, accuracy, dataset),
    )


def record_run(
    root: Path,
    run: Exported,
    margin: float,
    force: bool,
    champion_accuracy: Callable[[ChampionPointer], float],
    challenger_accuracy: float | None = None,
    measure: str = "test accuracy",
) -> Promotion:
    """A promotion as tasks/promote.py does it (lock, a retry's decision, re-score the champion, the rule, commit),
    with `champion_accuracy` standing in for re-scoring the champion's model; a PipelineError from it makes the
    champion unusable, as a model that cannot be evaluated does."""
    store = RegistryStore(root)
    with store.locked() as registry:
        promotion = store.recover(run, margin)
        if promotion is not None:
            return promotion
        champion = registry.champion(run.card.dataset.name)
        score = None
        if champion is not None:
            try:
                score = ChampionScore(champion.run_id, float(champion_accuracy(champion)))
            except PipelineError as error:
                score = ChampionScore(champion.run_id, None, str(error))
        challenger = run.card.metrics.test_accuracy if challenger_accuracy is None else challenger_accuracy
        promotion = judge(challenger, score, margin, force, measure)
        store.commit(*entries(run, promotion, champion))
    return promotion


def legacy_files(source: Path, target: Path, runs: list[tuple[str, float]], columns: list[str] = CSV_COLUMNS) -> None:
    """`registry.csv` and `champion-<dataset>.json` in `target` as the registry wrote them before it moved into a
    database: `runs` (run id, test accuracy) recorded in a scratch registry at `source`, then written out."""
    for run_id, accuracy in runs:
        record_run(source, make_exported(target, run_id, accuracy), 0.0, False, lambda champion: champion.test_accuracy)
    target.mkdir(parents=True, exist_ok=True)
    read_registry(source)[columns].to_csv(target / REGISTRY_FILE, index=False, lineterminator="\n")
    for pointer in RegistryStore(source).read().champions():
        (target / champion_file(pointer.dataset)).write_text(pointer.model_dump_json(indent=2) + "\n")
