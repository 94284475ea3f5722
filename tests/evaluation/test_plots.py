"""The run's PNG plots: each is a real, non-blank PNG; edge cases (one epoch, no mistakes) still draw; writes are
atomic and thread-safe; the module stays free of torch and pyplot. Synthetic numbers only, no training."""

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from mnist_core import layout
from mnist_core.data.idx import CLASS_NAMES
from mnist_core.evaluation import plots
from mnist_core.records import EpochStats
from tests.support import PROJECT_ROOT


def assert_png(path: Path) -> None:
    """A decodable PNG of a useful size with more than a handful of colours (not blank, not one flat fill)."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width > 200 and image.height > 200
        colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
    assert colours is not None and len(colours) > 8
    assert path.stat().st_size < 200_000


def history(epochs: int) -> list[EpochStats]:
    return [
        EpochStats(epoch=epoch, train_loss=0.4 / epoch, train_accuracy=1 - 0.1 / epoch,
                   val_loss=0.1 + 0.01 * abs(epoch - 3), val_accuracy=0.99 - 0.002 * abs(epoch - 3),
                   lr=1e-3, seconds=1.0, samples_per_s=1000.0)
        for epoch in range(1, epochs + 1)
    ]  # fmt: skip


def confusion(rng: np.random.Generator) -> list[list[int]]:
    counts = rng.integers(0, 15, size=(10, 10))
    np.fill_diagonal(counts, rng.integers(900, 1150, size=10))
    return counts.tolist()


def mistakes(rng: np.random.Generator, size: int = 200, wrong: int = 50) -> dict[str, np.ndarray]:
    labels = rng.integers(0, 10, size)
    predicted = labels.copy()
    predicted[:wrong] = (labels[:wrong] + 1) % 10
    return {"images": rng.integers(0, 256, size=(size, 28, 28), dtype=np.uint8), "labels": labels,
            "predicted": predicted, "confidence": rng.uniform(0.2, 1.0, size)}  # fmt: skip


@pytest.mark.parametrize("epochs", [1, 10])
def test_curves(tmp_path: Path, epochs: int) -> None:
    path = tmp_path / layout.CURVES_PNG
    plots.plot_curves(history(epochs), best_epoch=min(3, epochs), path=path, dataset="mnist")
    assert_png(path)


def test_curves_refuse_an_unknown_best_epoch(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="best epoch 7"):
        plots.plot_curves(history(3), best_epoch=7, path=tmp_path / layout.CURVES_PNG)


@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist"])
def test_confusion(tmp_path: Path, dataset: str) -> None:
    path = tmp_path / layout.CONFUSION_PNG
    plots.plot_confusion(confusion(np.random.default_rng(0)), CLASS_NAMES[dataset], path)
    assert_png(path)


def test_confusion_refuses_a_matrix_of_the_wrong_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="class names"):
        plots.plot_confusion([[1, 0], [0, 1]], CLASS_NAMES["mnist"], tmp_path / layout.CONFUSION_PNG)


@pytest.mark.parametrize(("wrong", "limit"), [(50, 36), (5, 36), (50, 4)])
def test_mistakes_shows_at_most_limit(tmp_path: Path, wrong: int, limit: int) -> None:
    path = tmp_path / layout.MISTAKES_PNG
    shown = plots.plot_mistakes(**mistakes(np.random.default_rng(1), wrong=wrong), class_names=CLASS_NAMES["mnist"],
                                path=path, limit=limit)  # fmt: skip
    assert shown == min(limit, wrong)
    assert_png(path)


def test_mistakes_with_long_class_names(tmp_path: Path) -> None:
    path = tmp_path / layout.MISTAKES_PNG
    assert plots.plot_mistakes(**mistakes(np.random.default_rng(2)), class_names=CLASS_NAMES["fashion-mnist"],
                               path=path, limit=12) == 12  # fmt: skip
    assert_png(path)


def test_no_mistakes_writes_a_message(tmp_path: Path) -> None:
    path = tmp_path / layout.MISTAKES_PNG
    data = mistakes(np.random.default_rng(3), wrong=0)
    assert plots.plot_mistakes(**data, class_names=CLASS_NAMES["mnist"], path=path) == 0
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 200 and image.height > 200
        assert len(image.convert("RGB").getcolors(maxcolors=1_000_000)) > 2  # the text, anti-aliased


def test_worst_mistakes_come_first() -> None:
    labels = np.array([0, 1, 2, 3, 4, 5])
    predicted = np.array([0, 2, 2, 4, 5, 6])  # indices 1, 3, 4, 5 are wrong
    confidence = np.array([0.99, 0.6, 0.99, 0.9, 0.6, 0.7])
    assert plots._worst_mistakes(labels, predicted, confidence, limit=10).tolist() == [3, 5, 1, 4]
    assert plots._worst_mistakes(labels, predicted, confidence, limit=2).tolist() == [3, 5]
    assert plots._worst_mistakes(labels, labels, confidence, limit=10).tolist() == []


def small_figure(colour: str) -> Figure:
    figure = plots.new_figure(3, 3)
    figure.subplots().fill_between([0, 1], [0, 1], color=colour)
    return figure


def test_save_figure_replaces_the_whole_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "figure.png"
    path.write_bytes(b"x" * 1_000_000)  # an old file far bigger than the new PNG: nothing of it may remain
    plots.save_figure(small_figure("tab:blue"), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size < 100_000
    with Image.open(path) as image:
        image.verify()
    assert [entry.name for entry in tmp_path.iterdir()] == ["figure.png"]


def test_two_threads_plot_at_once(tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def plot(index: int) -> None:
        try:
            rng = np.random.default_rng(index)
            plots.plot_curves(history(5), 3, tmp_path / f"{index}-{layout.CURVES_PNG}")
            plots.plot_confusion(confusion(rng), CLASS_NAMES["fashion-mnist"], tmp_path / f"{index}-confusion.png")
            plots.plot_mistakes(**mistakes(rng), class_names=CLASS_NAMES["mnist"], path=tmp_path / f"{index}-m.png",
                                limit=4)  # fmt: skip
        except BaseException as error:  # surfaced below: an exception in a thread would otherwise pass silently
            errors.append(error)

    threads = [threading.Thread(target=plot, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    written = sorted(tmp_path.iterdir())
    assert len(written) == 6
    for path in written:
        assert_png(path)


def test_import_pulls_in_neither_torch_nor_pyplot() -> None:
    code = (
        "import mnist_core.evaluation.plots, sys; "
        "assert 'torch' not in sys.modules and 'matplotlib.pyplot' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, check=True, timeout=60)
