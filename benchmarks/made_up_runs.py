"""Made-up runs, for the benchmarks and the tests of the code that reads them (export, registry, `mnist serve`): model
cards with made-up figures, runs as export hands them to promotion, run folders holding a given model, promotions
through the registry's own interface. Imports only the project's packages: a benchmark run as a script imports it
as `made_up_runs`, the tests through tests/support/records.py and tests/support/serving.py."""

import shutil
from collections.abc import Callable
from pathlib import Path

from mnist_core.config import RunParams
from mnist_core.errors import PipelineError
from mnist_core.export.runtimes import describe_model_files
from mnist_core.layout import CARD_FILE, ONNX_FILE
from mnist_core.records import DatasetFacts, Exported, Metrics, ModelCard, Promotion, Timings
from mnist_core.registry.rule import ChampionScore, judge
from mnist_core.registry.store import ChampionPointer, RegistryStore, entries

SHA = {"train_images": "a" * 64, "train_labels": "b" * 64, "test_images": "c" * 64, "test_labels": "d" * 64}


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


def make_run(output_root: Path, run_id: str, onnx: Path, accuracy: float = 0.97) -> Exported:
    """A run folder holding a copy of `onnx` and a model card recording its SHA-256 (as export writes it)."""
    run_dir = output_root / run_id
    run_dir.mkdir(parents=True)
    shutil.copyfile(onnx, run_dir / ONNX_FILE)
    card = make_card(run_id, accuracy).model_copy(update={"model_files": describe_model_files(run_dir)})
    (run_dir / CARD_FILE).write_text(card.model_dump_json(indent=2), encoding="utf-8")
    return Exported(run_id=run_id, run_dir=run_dir, model=run_dir / "model.safetensors", report=run_dir / "report.md",
                    model_card=run_dir / CARD_FILE, card=card)  # fmt: skip


def promote(output_root: Path, run: Exported) -> None:
    """Make `run` the champion as a forced promotion does (the registry's interface, not its files)."""
    promotion = record_run(output_root, run, margin=0.0, force=True, champion_accuracy=lambda _: 0.0)
    assert promotion.promoted, promotion


def variant(onnx: Path, folder: Path, note: str) -> Path:
    """The same model in a file with other bytes (its doc string): another SHA-256, the same answers."""
    import onnx as onnx_lib

    proto = onnx_lib.load(str(onnx))
    proto.doc_string = note
    folder.mkdir(parents=True, exist_ok=True)
    onnx_lib.save(proto, str(folder / ONNX_FILE))
    return folder / ONNX_FILE
