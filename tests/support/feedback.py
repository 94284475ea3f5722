"""For the tests of the prediction log and POST /feedback (tests/serving/test_feedback.py): a run folder whose model
card holds a not-a-digit rule, drawings that are not digits, the score the server will compute for an image, and the
rows of the registry's database."""

import io
from pathlib import Path, PurePath
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from sqlalchemy import create_engine, inspect, text

from benchmarks.made_up_runs import make_run
from mnist_core.data.images import load_image
from mnist_core.evaluation.novelty import outlier_scores
from mnist_core.export.runtimes import load_predictor
from mnist_core.layout import CARD_FILE
from mnist_core.records import NotADigitRule


def run_with_rule(root: Path, run_id: str, onnx: Path, threshold: float) -> Path:
    """A run folder holding `onnx`, its card saying: refuse above `threshold`."""
    run = make_run(root, run_id, onnx)
    rule = NotADigitRule(threshold=threshold, target_false_refusal=0.01, val_false_refusal=0.01, outliers="test")
    card = run.card.model_copy(update={"not_a_digit": rule})
    (run.run_dir / CARD_FILE).write_text(card.model_dump_json(indent=2), encoding="utf-8")
    return run.run_dir


def cross_png() -> bytes:
    """An X drawn with a pen on white paper: no digit."""
    image = Image.new("L", (112, 112), 255)
    draw = ImageDraw.Draw(image)
    draw.line((10, 10, 100, 100), fill=0, width=6)
    draw.line((10, 100, 100, 10), fill=0, width=6)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def prepared(content: bytes) -> np.ndarray:
    """The image as the server prepares it (the same function)."""
    loaded = load_image(PurePath("image.png"), content)
    assert loaded.image is not None, loaded.error
    return loaded.image


def scores(onnx: Path, images: np.ndarray) -> np.ndarray:
    """The not-a-digit scores the server computes for these prepared images."""
    return outlier_scores(load_predictor(onnx, onnx_threads=1).logits(images))


def rows(url: str, table: str) -> list[dict[str, Any]]:
    """Every row of a table of the registry's database, in a connection of its own (none before the server made the
    table, at its first write)."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            if not inspect(connection).has_table(table):
                return []
            return [dict(row) for row in connection.execute(text(f"SELECT * FROM {table}")).mappings()]  # noqa: S608
    finally:
        engine.dispose()
