"""For the drift monitor's tests: a made-up model's logits, a champion whose card holds a reference computed from
them, and prediction-log rows as `mnist serve` writes them."""

from pathlib import Path

import numpy as np

from benchmarks.made_up_runs import make_exported, promote
from mnist_core.evaluation.monitoring import Window, answers, reference_from_logits
from mnist_core.evaluation.novelty import fit_threshold
from mnist_core.layout import CARD_FILE
from mnist_core.records import NotADigitRule
from mnist_core.registry.feedback import FeedbackStore

TEMPERATURE = 1.5


def logits_of(rng: np.random.Generator, n: int, margin: float = 9.0, classes: np.ndarray | None = None) -> np.ndarray:
    """A made-up model's logits: the true class `margin` above noise (smaller margin: inputs it is less sure of)."""
    labels = rng.integers(0, 10, n) if classes is None else classes
    logits = rng.normal(0, 1.5, (n, 10))
    logits[np.arange(n), labels] += margin + rng.normal(0, 2.0, n)
    return logits


def made_up_rule(val_logits: np.ndarray) -> NotADigitRule:
    threshold, share = fit_threshold(val_logits, 0.01)
    return NotADigitRule(threshold=threshold, target_false_refusal=0.01, val_false_refusal=share)


def champion_with_reference(root: Path, run_id: str, reference: bool = True) -> NotADigitRule:
    """A run folder (its card only) in `root`, promoted to champion; its card holds a reference from made-up
    validation logits (none if not `reference`). Returns its not-a-digit rule."""
    val = logits_of(np.random.default_rng(0), 5000)
    rule = made_up_rule(val)
    run = make_exported(root, run_id, 0.97)
    monitoring = reference_from_logits(val, TEMPERATURE, rule) if reference else None
    card = run.card.model_copy(update={"temperature": TEMPERATURE, "not_a_digit": rule, "monitoring": monitoring})
    run.run_dir.mkdir(parents=True)
    (run.run_dir / CARD_FILE).write_text(card.model_dump_json(), encoding="utf-8")
    promote(root, run.model_copy(update={"card": card}))
    return rule


def served(logits: np.ndarray, rule: NotADigitRule) -> Window:
    return answers(logits, TEMPERATURE, rule)


def log_window(root: Path, run_id: str, window: Window, hour: int, dataset: str = "mnist") -> None:
    """`window` written to the prediction log as predictions of `run_id`, one a second from `hour`:00."""
    rows = [
        {
            "id": f"test-{hour}-{i:05d}",
            "at": f"2026-12-07T{hour:02d}:{i // 60:02d}:{i % 60:02d}Z",
            "dataset": dataset,
            "run_id": run_id,
            "model_sha256": "0" * 64,
            "class": int(window.classes[i]),
            "confidence": float(window.confidences[i]),
            "not_a_digit_score": float(window.scores[i]),
            "image_sha256": "0" * 64,
            "image": None,
            "route": "v2",
        }  # fmt: skip
        for i in range(len(window))
    ]
    FeedbackStore(root).log_predictions(rows)
