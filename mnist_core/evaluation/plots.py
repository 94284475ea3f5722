"""The PNG plots of a training run: learning curves, confusion matrix, most confident mistakes.

Figures are built with the object-oriented API (`Figure` + `FigureCanvasAgg`), never pyplot: pyplot keeps global
state and picks a GUI backend, while Prefect runs tasks in threads on headless machines. No torch either: callers
pass numpy arrays, so the plots can be redrawn from saved results without the training stack.
"""

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mnist_core.files import atomic_write
from mnist_core.records import EpochStats

if TYPE_CHECKING:  # matplotlib is imported by the functions that draw: ~0.4 s a process that draws nothing pays
    # (a run that stops as Unchanged, the registry, the monitor's checks) through modules that import this one.
    from matplotlib.axes import Axes
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

DPI = 100  # with the figure sizes below, every PNG stays well under 200 KB
TRAIN_COLOR = "tab:blue"
VAL_COLOR = "tab:orange"
BEST_COLOR = "tab:red"
_MOSAIC_GAP, _MOSAIC_TITLE = 6, 12  # pixels of the mistakes mosaic between images, and above each for its title


def new_figure(width: float, height: float, layout: str | None = "constrained") -> "Figure":
    """A figure with its own Agg canvas: no global backend, so threads never share a figure manager."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure: "Figure", path: Path) -> None:
    """Write `figure` as a PNG via a temp file in the same folder and `os.replace`, so a crash never leaves a
    half-written PNG where a reader (or a report linking it) expects a whole one."""
    atomic_write(Path(path), lambda stream: figure.savefig(stream, format="png", dpi=DPI))


def plot_curves(history: list[EpochStats], best_epoch: int, path: Path, dataset: str | None = None) -> None:
    """Loss and accuracy per epoch, train against validation, with the kept (best) epoch marked: the picture that
    shows over- or under-fitting at a glance. Markers on every point, so a one-epoch run still shows its values."""
    if not history:
        raise ValueError("plot_curves: the history is empty, there is nothing to plot")
    epochs = [stats.epoch for stats in history]
    if best_epoch not in epochs:
        raise ValueError(f"plot_curves: best epoch {best_epoch} is not among the epochs {epochs}")
    # Margins fixed by hand (in figure fractions, room for tick labels, axis labels and the title): the constrained
    # layout measured every text twice and took half of the plots' time (docs/performance.md, issue 31).
    figure = new_figure(11, 4.5, layout=None)
    top = 0.88 if dataset else 0.95
    loss_axes, accuracy_axes = figure.subplots(
        1, 2, gridspec_kw={"left": 0.065, "right": 0.99, "bottom": 0.12, "top": top, "wspace": 0.2}
    )
    best = epochs.index(best_epoch)
    train_loss = [stats.train_loss for stats in history]
    val_loss = [stats.val_loss for stats in history]
    train_accuracy = [100 * stats.train_accuracy for stats in history]
    val_accuracy = [100 * stats.val_accuracy for stats in history]
    _draw_panel(loss_axes, epochs, train_loss, val_loss, best, "loss")
    _draw_panel(accuracy_axes, epochs, train_accuracy, val_accuracy, best, "accuracy (%)")
    if dataset:
        figure.suptitle(f"{dataset}: training curves")
    save_figure(figure, path)


def _draw_panel(axes: "Axes", epochs: list[int], train: list[float], val: list[float], best: int, ylabel: str) -> None:
    axes.plot(epochs, train, marker="o", markersize=4, color=TRAIN_COLOR, label="train")
    axes.plot(epochs, val, marker="o", markersize=4, color=VAL_COLOR, label="validation")
    axes.axvline(epochs[best], color=BEST_COLOR, linestyle="--", linewidth=1, zorder=1)  # behind the points
    axes.plot(
        epochs[best],
        val[best],
        marker="*",
        markersize=14,
        color=BEST_COLOR,
        linestyle="none",
        label=f"best epoch {epochs[best]}",
    )
    axes.set_xlim(epochs[0] - 0.5, epochs[-1] + 0.5)
    axes.margins(y=0.1)  # room for the best-epoch star at the top or bottom edge
    if len(epochs) <= 20:
        axes.set_xticks(epochs)  # MaxNLocator falls back to fractional ticks when there are only one or two epochs
    else:
        from matplotlib.ticker import MaxNLocator

        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    axes.legend()


def plot_confusion(confusion: list[list[int]], class_names: list[str], path: Path) -> None:
    """The confusion matrix as a heatmap with every count written in. The colour scale is logarithmic (zeros left
    blank), so a dozen errors off the diagonal stand out next to a thousand hits on it."""
    counts = np.asarray(confusion, dtype=np.int64)
    size = len(class_names)
    if counts.shape != (size, size):
        raise ValueError(f"plot_confusion: a {counts.shape} matrix for {size} class names")
    from matplotlib.colors import LogNorm
    from matplotlib.ticker import NullLocator, StrMethodFormatter

    rotation = _label_rotation(class_names)
    # The matrix and its colour bar placed by hand (inches turned into figure fractions), not by the constrained
    # layout, which measured all 100 counts twice: the slowest of the plots. Long class names get wider margins.
    side = 5.6  # the square matrix, inches
    left, bottom = (1.35, 1.25) if rotation else (0.8, 0.75)
    width, height = left + side + 1.5, bottom + side + 0.5  # the colour bar and its label; the title
    figure = new_figure(width, height, layout=None)
    axes = figure.add_axes((left / width, bottom / height, side / width, side / height))
    bar = figure.add_axes(((left + side + 0.25) / width, bottom / height, 0.25 / width, side / height))
    norm = LogNorm(vmin=1, vmax=max(int(counts.max()), 10))
    image = axes.imshow(np.ma.masked_less(counts, 1), cmap="Blues", norm=norm)
    figure.colorbar(image, cax=bar, label="images (log scale)")
    # Plain numbers (1, 10, 100, 1000) and no minor ticks: the default labels of a log scale are mathtext
    # ($10^{2}$, every minor tick too), whose typesetting took ~40 % of this plot's time; the minor ticks, even
    # unlabelled, another ~15 % (issue 31).
    bar.yaxis.set_major_formatter(StrMethodFormatter("{x:.0f}"))
    bar.yaxis.set_minor_locator(NullLocator())
    _write_counts(axes, counts, norm)
    axes.set_xticks(range(size), class_names, rotation=rotation, ha="right" if rotation else "center")
    axes.set_yticks(range(size), class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(f"confusion matrix ({int(counts.sum())} test images)")
    save_figure(figure, path)


def _label_rotation(class_names: list[str]) -> int:
    """Fashion-MNIST's names ("Ankle boot") would overlap side by side; digits fit upright."""
    return 40 if max(len(name) for name in class_names) > 2 else 0


def _write_counts(axes: "Axes", counts: np.ndarray, norm: "LogNorm") -> None:
    fontsize = max(5, min(10, 100 // len(counts)))
    for row, col in np.ndindex(counts.shape):
        count = int(counts[row, col])
        dark = count > 0 and norm(count) > 0.6
        color = "white" if dark else ("black" if count else "0.6")
        axes.text(col, row, str(count), ha="center", va="center", color=color, fontsize=fontsize)


def plot_mistakes(
    images: np.ndarray,
    labels: np.ndarray,
    predicted: np.ndarray,
    confidence: np.ndarray,
    class_names: list[str],
    path: Path,
    limit: int = 36,
) -> int:
    """A grid of the misclassified test images, most confident mistakes first: those show label noise and the
    model's blind spots better than near-ties do. Returns how many were shown."""
    chosen = _worst_mistakes(labels, predicted, confidence, limit)
    if len(chosen) == 0:
        _save_message("no misclassified test images", path)
        return 0
    columns = max(1, math.ceil(math.sqrt(limit)))
    rows = math.ceil(len(chosen) / columns)
    # One mosaic in one axes, titles as text: 36 axes of their own under the constrained layout took ~1 s a run,
    # the slowest part of the plots; this takes ~0.2 s and looks the same.
    height, width = np.squeeze(images[chosen[0]]).shape
    cell_width, cell_height = width + _MOSAIC_GAP, height + _MOSAIC_TITLE
    mosaic = np.ma.masked_array(np.zeros((rows * cell_height, columns * cell_width), np.float32), mask=True)
    figure = new_figure(max(4.0, 1.75 * columns), max(2.5, 1.95 * rows), layout=None)  # one axes, placed by hand
    axes = figure.add_axes((0.01, 0.01, 0.98, 0.98))
    axes.set_axis_off()
    for slot, index in enumerate(chosen):
        row, column = divmod(slot, columns)
        top, left = row * cell_height + _MOSAIC_TITLE, column * cell_width + _MOSAIC_GAP // 2
        mosaic[top : top + height, left : left + width] = np.squeeze(images[index])  # unmasks the cell
        title = _mistake_title(class_names, labels[index], predicted[index], confidence[index])
        axes.text(left + width / 2, top - 1, title, ha="center", va="bottom", fontsize=8)
    axes.imshow(mosaic, cmap="gray", vmin=0, vmax=255, interpolation="nearest")  # masked gaps stay white
    save_figure(figure, path)
    return len(chosen)


def _worst_mistakes(labels: np.ndarray, predicted: np.ndarray, confidence: np.ndarray, limit: int) -> np.ndarray:
    """Indices of the misclassified images, most confident first (ties in index order), at most `limit`."""
    labels, predicted, confidence = np.asarray(labels), np.asarray(predicted), np.asarray(confidence)
    if not len(labels) == len(predicted) == len(confidence):
        raise ValueError(f"{len(labels)} labels, {len(predicted)} predictions, {len(confidence)} confidences")
    wrong = np.flatnonzero(labels != predicted)
    order = np.argsort(-confidence[wrong], kind="stable")
    return wrong[order][: max(0, limit)]


def _mistake_title(class_names: list[str], label: int, predicted: int, confidence: float) -> str:
    """ "true → predicted (confidence%)", on two lines when long class names would run into the next image."""
    true_name, predicted_name = class_names[int(label)], class_names[int(predicted)]
    separator = " →\n" if len(true_name) + len(predicted_name) > 14 else " → "
    return f"{true_name}{separator}{predicted_name} ({100 * float(confidence):.0f}%)"


def _save_message(message: str, path: Path) -> None:
    """A small image with one line of text, so the file always exists and a report linking it never breaks."""
    figure = new_figure(4, 2.5)
    figure.text(0.5, 0.5, message, ha="center", va="center", fontsize=12)
    save_figure(figure, path)
