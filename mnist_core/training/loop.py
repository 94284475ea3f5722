"""The training loop: data resident on the device as uint8, shuffled with randperm each epoch and fed to a step
(steps.py) batch by batch; at each epoch boundary, validation, the best weights so far and a checkpoint."""

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import ConfigDict

from mnist_core.config import RunParams
from mnist_core.errors import TrainingError
from mnist_core.records import EpochStats, TrainingSummary
from mnist_core.training.augment import Augment
from mnist_core.training.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from mnist_core.training.device import describe_environment
from mnist_core.training.model import MLP, MNIST_MEAN, MNIST_STD, evaluate_split
from mnist_core.training.optim import build_optimizer, build_scheduler, current_lr, init_optimizer_state, pin_lr
from mnist_core.training.steps import Capture, FixedShapeStep, PlainStep, StepKind, capture_cuda_graph

log = logging.getLogger(__name__)

# Intra-op threads while training on a CPU. This MLP's matrices are so small (a batch of 256 is ~0.1 GFLOP per
# step) that OpenMP's fork/join per operator costs more than a second thread gains; and on a shared machine a
# descheduled worker thread stalls every operator: 1 thread measured 1.4x faster idle and 10x faster under load
# than 2 on the project's 2-core machine.
CPU_TRAIN_THREADS = 1
Logger = logging.Logger | logging.LoggerAdapter[Any]
Gradients = Literal["written_out", "autograd", "fused"]  # fused: the written-out step in Triton kernels (fused.py)


class TrainResult(TrainingSummary):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: MLP  # holds the best-validation weights, in eval mode


def choose_step_kind(params: RunParams, device: torch.device) -> StepKind:
    """The one place the training step is chosen: on CUDA the fixed-shape step, captured as a CUDA graph unless
    `params.cuda_graph` is off; elsewhere the plain step."""
    if device.type == "cuda":
        return "cuda_graph" if params.cuda_graph else "fixed_shape"
    return "plain"


def choose_gradients(bf16: bool) -> Gradients:
    """How gradients are computed: written out (backprop.py: the same gradients in fewer operations), except
    under bf16 autocast, which only autograd handles here."""
    return "autograd" if bf16 else "written_out"


def build_step(
    kind: StepKind,
    training: "_Training",
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    bf16: bool,
    gradients: Gradients,
    capture: Capture | None = None,
    outliers: torch.Tensor | None = None,
) -> PlainStep | FixedShapeStep:
    """The step of `kind`; a fixed-shape step is made replayable by `capture` (default: a CUDA graph for
    "cuda_graph"; the eager `run` for "fixed_shape"). With `outliers` (images that are not digits) and a
    positive `params.outlier_exposure`, each batch carries `params.outlier_batch` of them (outlier exposure)."""
    if kind == "plain" and capture is not None:
        raise TrainingError("only a fixed-shape step can be captured; pass step_kind='fixed_shape' with capture")
    step_class: type[PlainStep] | type[FixedShapeStep] = PlainStep if kind == "plain" else FixedShapeStep
    if gradients == "fused":
        from mnist_core.training.fused import FusedStep  # imports triton: only when it runs

        step_class = FusedStep
    step = step_class(
        training.model,
        training.optimizer,
        images,
        labels,
        batch_size,
        training.params.label_smoothing,
        bf16,
        written_out=gradients != "autograd",
        augment=Augment(training.params.augment) if training.params.augment > 0 else None,
        max_grad_norm=training.params.clip_grad_norm,
        outliers=outliers,
        outlier_batch=training.params.outlier_batch,
        outlier_weight=training.params.outlier_exposure,
    )
    if capture is None and kind == "cuda_graph":
        capture = capture_cuda_graph
    if capture is not None:
        step.replay = capture(step)
    return step


def fused_or_not(
    kind: StepKind,
    training: "_Training",
    images: torch.Tensor,
    outliers: torch.Tensor | None,
    gradients: Gradients,
    logger: Logger,
) -> Gradients:
    """`--fused`: the fused Triton step where it covers the run (a fixed-shape step on CUDA, SGD, fp32, no dropout,
    augmentation or clipping), else `gradients` as chosen, the reason logged."""
    if gradients != "written_out":
        logger.info("fused step not used: bf16 autocast is not fused; autograd runs")
        return gradients
    if kind == "plain":
        logger.info("fused step not used: its kernels run on CUDA only; the plain step runs")
        return "written_out"
    from mnist_core.training.fused import unsupported_reason

    params = training.params
    exposed = outliers if params.outlier_exposure > 0 and outliers is not None and len(outliers) else None
    reason = unsupported_reason(training.model, training.optimizer, images, augment=params.augment > 0 or None,
                                max_grad_norm=params.clip_grad_norm, outliers=exposed)  # fmt: skip
    if reason is not None:
        logger.info("fused step not used: %s; the written-out step runs", reason)
        return "written_out"
    return "fused"


def use_bf16(precision: str, device: torch.device) -> bool:
    """bf16 autocast only when asked for, and only on CUDA GPUs that support it. `auto` is fp32 everywhere: on an
    H200 the fast98 recipe trained as fast in fp32 as in bf16 (0.13 s vs 0.14 s) and 0.09 points more accurately
    (98.28 % vs 98.19 %, seeds 0-2), since this MLP's matrices are too small for bf16 tensor cores to pay for the
    casts; on a CPU bf16 is slower (benchmarks/results/speed-cuda-h200*.md, speed-cpu.md)."""
    if precision != "bf16":
        return False
    if not (device.type == "cuda" and torch.cuda.is_bf16_supported()):
        raise TrainingError(f"precision='bf16' needs a CUDA GPU with bf16 support; device is {device}")
    return True


@contextlib.contextmanager
def training_threads(device: torch.device) -> Iterator[None]:
    """CPU_TRAIN_THREADS intra-op threads for the duration of CPU training, then the caller's setting again."""
    if device.type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(min(CPU_TRAIN_THREADS, previous))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass
class Progress:
    """The epochs done so far and the best weights among them: what a checkpoint carries between attempts."""

    best_state: dict[str, torch.Tensor]
    history: list[EpochStats] = field(default_factory=list)
    best_epoch: int = 0  # 0: none yet

    @classmethod
    def start(cls, model: torch.nn.Module) -> "Progress":
        return cls(best_state=_copy_state(model))

    @property
    def best_key(self) -> tuple[float, float]:
        """What "best" ranks by: (validation accuracy, -validation loss), higher is better."""
        if not self.best_epoch:
            return (-1.0, -math.inf)
        best = self.history[self.best_epoch - 1]
        return (best.val_accuracy, -best.val_loss)

    def record(self, stats: EpochStats, model: torch.nn.Module) -> None:
        if (stats.val_accuracy, -stats.val_loss) > self.best_key:
            self.best_epoch, self.best_state = stats.epoch, _copy_state(model)
        self.history.append(stats)


def _copy_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


@dataclass
class _Training:
    """Everything a checkpoint saves and restores, besides the progress."""

    params: RunParams
    device: torch.device
    model: MLP
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    shuffle: torch.Generator

    def snapshot(self, progress: Progress) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "params": self.params.model_dump(mode="json"),
            "training_digest": self.params.training_digest(),
            "epoch": len(progress.history),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "best_state": progress.best_state,
            "best_epoch": progress.best_epoch,
            "best_key": list(progress.best_key),  # derivable; kept so format-2 readers find it
            "history": [stats.model_dump() for stats in progress.history],
            "rng": rng_state(self.shuffle, self.device),
            "torch_version": str(torch.__version__),
        }

    def restore(self, payload: dict[str, Any]) -> Progress:
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        pin_lr(self.optimizer, self.device)
        if self.scheduler is not None:
            self.scheduler.load_state_dict(payload["scheduler"])
        set_rng_state(payload["rng"], self.shuffle, self.device)
        return Progress(
            best_state={name: tensor.to(self.device) for name, tensor in payload["best_state"].items()},
            history=[EpochStats(**entry) for entry in payload["history"]],
            best_epoch=payload["best_epoch"],
        )


def train_model(
    data: dict[str, torch.Tensor],
    params: RunParams,
    device: torch.device,
    checkpoint_path: Path | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    on_step: Callable[[], None] | None = None,
    normalization: tuple[float, float] | None = None,
    step_kind: StepKind | None = None,
    capture: Capture | None = None,
    gradients: Gradients | None = None,
    logger: Logger = log,
) -> TrainResult:
    """Train the MLP on `data` (uint8 tensors already on `device`); keep the best-validation weights.

    Resumes from `checkpoint_path` when it exists (and `params.resume`), and writes it after every epoch.
    `step_kind`, `capture` and `gradients` override the step `choose_step_kind` picks, how a fixed-shape step is
    captured and how gradients are computed (tests and benchmarks). Each epoch is logged to `logger`, then passed
    to `on_epoch`; `on_step` is called after every step (a progress bar's tick: nothing there waits for the device).
    `normalization` is the (mean, std) of the training pixels the model standardizes its input with (default:
    MNIST's); it travels inside the model.
    """
    kind = step_kind or choose_step_kind(params, device)
    if kind == "cuda_graph" and device.type != "cuda":
        raise TrainingError(f"step_kind='cuda_graph' needs a CUDA device; device is {device}")
    bf16 = use_bf16(params.precision, device)
    gradients = gradients or choose_gradients(bf16)
    if gradients == "written_out" and bf16:
        raise TrainingError("written-out gradients are fp32 only; bf16 autocast needs gradients='autograd'")
    images, labels = data["train_images"], data["train_labels"].long()
    batch_size = min(params.batch_size, len(images))
    with training_threads(device):
        environment = describe_environment(device)  # inside training_threads: what training really uses
        logger.info("environment: %s", environment)
        steps_per_epoch = math.ceil(len(images) / batch_size)
        training = _start(params, device, steps_per_epoch, kind, normalization or (MNIST_MEAN, MNIST_STD))
        progress = Progress.start(training.model)
        if checkpoint_path is not None and params.resume and checkpoint_path.is_file():
            progress = training.restore(load_checkpoint(checkpoint_path, params))
            logger.info("resumed from %s after epoch %d", checkpoint_path, len(progress.history))
        resumed_from = len(progress.history)
        setup_seconds = 0.0
        if resumed_from < params.epochs:  # else resumed after its last epoch: nothing to set up or train
            setup_started = time.perf_counter()  # warm-up and capture are set-up, reported apart from training
            outliers = data.get("outlier_images")
            if params.outlier_exposure > 0 and (outliers is None or len(outliers) == 0):
                logger.info("no outlier images to train against: outlier exposure is off for this run")
            if params.fused:
                gradients = fused_or_not(kind, training, images, outliers, gradients, logger)
            step = build_step(kind, training, images, labels, batch_size, bf16, gradients, capture, outliers)
            setup_seconds = time.perf_counter() - setup_started
            _run_epochs(step, training, progress, data, bf16, checkpoint_path, on_epoch, on_step, logger)
        training.model.load_state_dict(progress.best_state)
        training.model.eval()
    return TrainResult(
        model=training.model,
        history=progress.history,
        best_epoch=progress.best_epoch,
        resumed_from_epoch=resumed_from,
        train_seconds=sum(stats.seconds for stats in progress.history),
        setup_seconds=setup_seconds,
        precision="bf16" if bf16 else "fp32",
        step_kind=kind,
        gradients=gradients,
        environment=environment,
    )


def _start(
    params: RunParams,
    device: torch.device,
    steps_per_epoch: int,
    step_kind: StepKind,
    normalization: tuple[float, float],
) -> _Training:
    """A fresh model, optimizer, schedule and shuffle generator, all seeded by `params.seed`."""
    torch.manual_seed(params.seed)
    model = MLP(params.hidden_sizes, params.dropout, *normalization).to(device)
    optimizer = build_optimizer(model, params, device, step_kind)
    init_optimizer_state(optimizer)
    scheduler = build_scheduler(optimizer, params, steps_per_epoch)
    shuffle = torch.Generator(device=device).manual_seed(params.seed)
    return _Training(params, device, model, optimizer, scheduler, shuffle)


def _run_epochs(
    step: PlainStep | FixedShapeStep,
    training: _Training,
    progress: Progress,
    data: dict[str, torch.Tensor],
    bf16: bool,
    checkpoint_path: Path | None,
    on_epoch: Callable[[EpochStats], None] | None,
    on_step: Callable[[], None] | None,
    logger: Logger,
) -> None:
    """The epochs after those `progress` holds: train, validate, keep the best, checkpoint, report."""
    epochs, num_train = training.params.epochs, len(data["train_images"])
    scheduler_step = training.scheduler.step if training.scheduler is not None else _no_op
    if on_step is not None:
        schedule_only = scheduler_step

        def scheduler_step() -> None:
            schedule_only()
            on_step()

    for epoch in range(len(progress.history) + 1, epochs + 1):
        started = time.perf_counter()
        step.reset_totals()
        step.train_epoch(torch.randperm(num_train, device=training.device, generator=training.shuffle), scheduler_step)
        stats = _end_epoch(epoch, step, training, data, started, bf16)
        progress.record(stats, training.model)
        if checkpoint_path is not None:
            save_checkpoint(checkpoint_path, training.snapshot(progress))
        _log_epoch(logger, stats, epochs)
        if on_epoch is not None:
            on_epoch(stats)


def _no_op() -> None:
    pass


def _end_epoch(
    epoch: int,
    step: PlainStep | FixedShapeStep,
    training: _Training,
    data: dict[str, torch.Tensor],
    started: float,
    bf16: bool,
) -> EpochStats:
    """Validate, and bring the epoch's figures to the host: the epoch boundary is the only host-device sync."""
    val_images = data["val_images"]
    val_loss_sum, val_correct, _ = evaluate_split(training.model, val_images, data["val_labels"], bf16)
    # One transfer of four scalars.
    train_loss_sum, train_correct, val_loss_sum, val_correct = torch.stack(
        [step.loss_sum, step.correct.float(), val_loss_sum, val_correct.float()]
    ).tolist()
    seconds = time.perf_counter() - started
    num_train = len(data["train_images"])
    train_loss = train_loss_sum / num_train
    if not math.isfinite(train_loss) or not math.isfinite(val_loss_sum):
        raise TrainingError(
            f"loss became non-finite in epoch {epoch} (train loss {train_loss}) with lr={training.params.lr}; "
            "training diverged: try a lower learning rate"
        )
    return EpochStats(
        epoch=epoch,
        train_loss=train_loss,
        train_accuracy=train_correct / num_train,
        val_loss=val_loss_sum / len(val_images),
        val_accuracy=val_correct / len(val_images),
        lr=current_lr(training.optimizer),
        seconds=seconds,
        samples_per_s=num_train / seconds,
    )


def _log_epoch(logger: Logger, stats: EpochStats, epochs: int) -> None:
    logger.info(
        "epoch %d/%d: train loss %.4f, val loss %.4f, val acc %.2f%%, %.2f s, %.0f samples/s",
        stats.epoch,
        epochs,
        stats.train_loss,
        stats.val_loss,
        100 * stats.val_accuracy,
        stats.seconds,
        stats.samples_per_s,
    )
