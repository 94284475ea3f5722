"""Live progress bars on a terminal: training (epoch, step, loss, time left) and a real download (bytes).

Only when the run's stderr is a TTY: in CI, in a worker's log or piped to a file, nothing is drawn and the
one-line-per-epoch log stays all there is. MNIST_PROGRESS=0 turns the bars off on a terminal too.
"""

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prefect.logging.handlers import PrefectConsoleHandler
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.theme import Theme

from mnist_core.data.download import OnBytes
from mnist_core.records import EpochStats
from mnist_core.settings import current as current_settings


def interactive() -> bool:
    return sys.stderr.isatty() and current_settings().progress


def _console() -> Console:
    """Prefect's own console, when its log handler has one: log lines printed while a bar is live then go above
    the bar (rich's Live cannot move lines written behind its back, and they would land on the bar's line)."""
    for logger in (logging.getLogger("prefect"), logging.getLogger()):
        for handler in logger.handlers:
            if isinstance(handler, PrefectConsoleHandler):
                return handler.console
    return Console(file=sys.stderr)


@contextmanager
def _bar(*columns: ProgressColumn) -> Iterator[Progress]:
    console = _console()
    # Prefect's console has a theme of its own, without the styles rich's bars are drawn with. Transient: the bar
    # is gone once done, and the log lines around it read as they would without it.
    with console.use_theme(Theme()), Progress(*columns, console=console, transient=True) as bar:
        yield bar


@contextmanager
def download_bar() -> Iterator[OnBytes]:
    """A bar per file actually fetched (a cached file shows none); off a terminal, a feed that draws nothing."""
    if not interactive():
        yield lambda name, copied, total: None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with _bar(*columns) as progress:
        tasks: dict[str, TaskID] = {}

        def on_bytes(name: str, copied: int, total: int | None) -> None:
            if name not in tasks:
                tasks[name] = progress.add_task(f"download {name}", total=total)
            progress.update(tasks[name], completed=copied, total=total)

        yield on_bytes


class TrainingBar:
    """Steps of the current epoch, with the epoch, the last epoch's losses and the time left for the run."""

    def __init__(self, progress: Progress, epochs: int, steps_per_epoch: int) -> None:
        self.progress, self.epochs, self.steps_per_epoch = progress, epochs, steps_per_epoch
        self.task = progress.add_task("", total=epochs * steps_per_epoch, epoch=1, loss="")

    def step(self) -> None:
        self.progress.advance(self.task)

    def epoch_done(self, stats: EpochStats) -> None:
        loss = f"train loss {stats.train_loss:.4f}  val loss {stats.val_loss:.4f}  val acc {stats.val_accuracy:.2%}"
        # Set, not counted: a run resumed from a checkpoint starts its ticks at 0, and is put right here.
        self.progress.update(
            self.task, completed=stats.epoch * self.steps_per_epoch, epoch=min(stats.epoch + 1, self.epochs), loss=loss
        )


@contextmanager
def training_bar(epochs: int, steps_per_epoch: int) -> Iterator[TrainingBar | None]:
    if not interactive():
        yield None
        return
    columns = (
        TextColumn(f"epoch {{task.fields[epoch]}}/{epochs}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("steps"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[loss]}"),
    )
    with _bar(*columns) as progress:
        yield TrainingBar(progress, epochs, steps_per_epoch)


def chain(*callbacks: Callable[[EpochStats], None] | None) -> Callable[[EpochStats], None]:
    def call_each(stats: EpochStats) -> None:
        for callback in callbacks:
            if callback is not None:
                callback(stats)

    return call_each
